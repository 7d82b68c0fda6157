"""The Mahalanobis Trace Trap, demonstrated: both views encoded by a learned MLP.

With the `batch` estimator and no geometry term (lambda_geo = 0) the mean Mahalanobis
term of the joint NLL is the constant sum_j s_j / (s_j + eps) ~ D, so the loss only
rewards shrinking log|S|: the embeddings collapse. The run trains that naive loss next
to lambda_geo = 1 and the remedies (each through the production train step) and tracks,
on a fixed held-out batch, the effective rank and per-dimension std of the embeddings
and the Mahalanobis average (`trace_trap_report`).

  python -m experiments.main --config=experiments/configs/trap.py --workdir=runs/trap
"""

from __future__ import annotations

import csv
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from gje_jax import effective_rank, empirical_moments, methods, trace_trap_report
from gje_jax.data import synthetic
from gje_jax.train import loop, records

from .configs.common import with_method


def _row_config(config, overrides: dict) -> ml_collections.ConfigDict:
    overrides = dict(overrides)
    return with_method(config.train, overrides.pop("name"), config.method_tuning, **overrides)


def _geometry_weight(m) -> float:
    """The geometry term's weight in effect (0 where the method does not read lambda_geo)."""
    spec = methods.module(m.name).SETTINGS.get("lambda_geo")
    if spec is None or (spec.when is not None and not spec.when[0](m)):
        return 0.0
    return m.lambda_geo


def run_one(train_config, eval_every: int, num_eval: int, progress: bool, label: str, eps=(1e-4, 1e-6)) -> list[dict]:
    """Trains one method; returns the diagnostics every `eval_every` steps."""
    state, step_fn, source, sharding = loop.setup(train_config)
    views = synthetic.views_for(train_config.data)
    data = synthetic.load(train_config.data, train_config.seed)
    x_eval = {k: jnp.asarray(v[:num_eval]) for k, v in data.items()}
    a_in, b_in = views(x_eval, jax.random.key(10_000))

    @jax.jit
    def diagnose(state):
        a, b = state.encode(a_in), state.encode(b_in)
        rep = trace_trap_report(a, b, eps_rel=eps[0], eps_abs=eps[1])
        _, cov_a = empirical_moments(a)
        return {
            "effective_rank": effective_rank(cov_a),
            "effective_rank_joint": rep["effective_rank"],
            "std_mean": jnp.mean(jnp.std(a, axis=0)),
            "std_min": jnp.min(jnp.std(a, axis=0)),
            "mahalanobis_mean": rep["mahalanobis_mean"],
            "dim": rep["dim"],
        }

    key = jax.random.key(train_config.seed)
    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_config.num_steps, desc=label, leave=False, dynamic_ncols=True)
    for step in range(train_config.num_steps + 1):
        if step % eval_every == 0 or step == train_config.num_steps:
            d = {k: float(v) for k, v in jax.device_get(diagnose(state)).items()}
            rows.append({"step": step, **d})
        if step == train_config.num_steps:
            break
        state, metrics = loop.run_step(
            train_config, step_fn, state, loop.global_batch(source, train_config, step, sharding), key
        )
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return rows


def run(config, workdir: str, progress: bool = True, command: str | None = None) -> list[dict]:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    curves, summary = {}, []
    for label, overrides in config.rows:
        row_config = _row_config(config, overrides)
        start = time.perf_counter()
        rows = run_one(
            row_config, config.eval_every, config.num_eval, progress, label, (config.eps_rel, config.eps_abs)
        )
        curves[label] = rows
        first, last = rows[0], rows[-1]
        embed_dim = int(last["dim"]) // 2  # the joint embedding is [c ; t]
        fall = first["std_mean"] / max(last["std_mean"], 1e-30)
        res = {
            "method": label,
            "lambda_geo": _geometry_weight(row_config.method),
            "effective_rank_start": first["effective_rank"],
            "effective_rank_end": last["effective_rank"],
            "std_start": first["std_mean"],
            "std_end": last["std_mean"],
            "std_fall": fall,
            "mahalanobis_end": last["mahalanobis_mean"],
            "dim": last["dim"],
            "collapsed": bool(last["effective_rank"] <= 1.5 or fall >= 100.0),
            "kept_rank": bool(last["effective_rank"] > embed_dim / 2),
            "seconds": time.perf_counter() - start,
        }
        summary.append(res)
        if progress:
            print(
                f"  {label:34s} eff. rank {res['effective_rank_start']:5.2f} -> {res['effective_rank_end']:5.2f} "
                f"(of {embed_dim})  std {res['std_start']:.3g} -> {res['std_end']:.3g} ({fall:.3g}x fall)  "
                f"Mahalanobis {res['mahalanobis_end']:.2f} (D = {res['dim']:.0f})"
            )
    fig = os.path.join(workdir, "trap_curves.png")
    plot_curves(curves, embed_dim, fig)
    md, csv_path = write_tables(
        summary, workdir, command or "python -m experiments.main --config=experiments/configs/trap.py"
    )
    with open(os.path.join(workdir, "trap_curves.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "step", "effective_rank", "effective_rank_joint", "std_mean", "std_min", "mahalanobis_mean"]
        )
        for label, rows in curves.items():
            for r in rows:
                w.writerow(
                    [
                        label,
                        r["step"],
                        r["effective_rank"],
                        r["effective_rank_joint"],
                        r["std_mean"],
                        r["std_min"],
                        r["mahalanobis_mean"],
                    ]
                )
    print(f"figure: {fig}\ntable: {md} (and {csv_path})")
    return summary


def plot_curves(curves: dict, embed_dim: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, rows in curves.items():
        steps = [r["step"] for r in rows]
        style = "--" if "naive" in label or "lambda_geo=0" in label else "-"
        axes[0].plot(steps, [r["effective_rank"] for r in rows], style, label=label)
        axes[1].semilogy(steps, [r["std_mean"] for r in rows], style, label=label)
        axes[2].plot(steps, [r["mahalanobis_mean"] for r in rows], style, label=label)
    axes[0].axhline(embed_dim / 2, c="0.6", lw=0.8)
    axes[0].set_title(f"effective rank of the embeddings (of {embed_dim})")
    axes[1].set_title("mean per-dimension std")
    d = next(iter(curves.values()))[0]["dim"]
    axes[2].axhline(d, c="0.6", lw=0.8)
    axes[2].set_title(f"batch Mahalanobis average (D = {d:.0f})")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COLUMNS = (
    "method",
    "lambda_geo",
    "effective_rank_start",
    "effective_rank_end",
    "std_start",
    "std_end",
    "std_fall",
    "mahalanobis_end",
    "dim",
    "collapsed",
    "kept_rank",
    "seconds",
)


def write_tables(summary: list[dict], workdir: str, command: str) -> tuple[str, str]:
    csv_path = os.path.join(workdir, "trap_results.csv")
    md_path = os.path.join(workdir, "trap_results.md")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(summary)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    with open(md_path, "w") as f:
        f.write(f"Produced by `{command}`. {records.provenance()}\n\n")
        f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in summary:
            f.write("| " + " | ".join(fmt(r[k]) for k in COLUMNS) + " |\n")
        f.write(
            "\neffective rank: exp(entropy of the normalised eigenvalues) of one view's embedding covariance on a "
            "fixed held-out batch; std: mean per-dimension std; std_fall = std_start / std_end; collapsed: "
            "effective rank <= 1.5 or std fall >= 100x; kept_rank: effective rank > half the embedding's width "
            "(dim / 4: dim is the joint [c ; t]'s); "
            "mahalanobis_end: the batch Mahalanobis average of the joint embedding (the trap keeps it at ~D).\n"
        )
    return md_path, csv_path
