"""Synthetic multi-modal alignment: when a context has several valid targets, a
deterministic predictor lands between them while GMJE recovers each one.

The context encoder f_c is a learned MLP; the target encoder is the identity, so the
truth p(t | c) is known in data space. Every registered density method is trained on
the same data and budget and scored on held-out pairs:

- conditional NLL  -log p(t | c)  (the truth's own NLL is printed alongside);
- mode precision: fraction of samples of p(t | c) within 3 noise std of a true branch;
- mode recall: fraction of true branches reached by some precise sample;
- RMSE of E[t | c] against the true conditional mean.

  python -m experiments.main                                         # two_branch, ~2 min
  python -m experiments.main --config=experiments/configs/alignment.py:full --workdir=runs/alignment
"""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gje_jax import calibration, fit_gaussian, methods
from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture
from gje_jax.data import synthetic
from gje_jax.train import records

from .configs.common import with_method
from .runs import train_timed


def task_train_config(config, task_name: str, settings: dict):
    """The train config of one row: config.train on task_name's pairs, the method
    settings['name'] with the experiment's tuning, then the row's settings."""
    t = ml_collections.ConfigDict(config.train.to_dict())
    t.data.update(task=task_name, **config.tasks[task_name].to_dict())
    settings = dict(settings)
    return with_method(t, settings.pop("name"), config.method_tuning, **settings)


def conditional_fn(train_config, state, c_train, t_train):
    """The trained model's prediction for contexts c [n, d_c]: ('density', c -> p(t | c) as a
    ConditionalMixture), or ('point', c -> [n, d_t]) for a method without a density."""
    method = methods.build(train_config.method, train_config)
    params, mstate = state.params["method"], state.method_state
    embed = jax.jit(state.encode)
    # Jitted: evaluated eagerly, op by op, the conditionals cost more than the training.
    if method.conditional is not None:
        return "density", jax.jit(lambda x: method.conditional(params, mstate, embed(x)))
    if method.batch_density:  # the Gaussian of all training embeddings
        z = jnp.concatenate([embed(c_train), jnp.asarray(t_train)], axis=1)
        density = fit_gaussian(z, train_config.method.eps_rel, train_config.method.eps_abs)
    elif method.density is not None:
        density = method.density(params, mstate)
    elif method.predict is not None:
        return "point", jax.jit(lambda x: method.predict(params, mstate, embed(x)))
    else:
        raise ValueError(f"method {train_config.method.name!r} predicts nothing a target can be scored against.")
    split = density.dim - t_train.shape[1]
    return "density", jax.jit(lambda x: density.condition(embed(x), split=split))


@jax.jit(static_argnames="num_samples")
def _summaries(cond: ConditionalMixture, t, key, num_samples: int):
    """(samples [n, S, d_t], E[t | c] [n, d_t], log p(t | c) [n], predictive std [n, d_t])."""
    std = jnp.sqrt(jnp.diagonal(cond.covariance(), axis1=1, axis2=2))
    return cond.sample(key, num_samples), cond.mean(), cond.log_prob(t), std


@jax.jit(static_argnames="num_samples")
def _pits(cond, t, key, num_samples: int):
    """(HPD PIT [n], central PIT [n] or None for d_t > 1): see gje_jax.calibration."""
    central = calibration.central_pit(cond, t, key, num_samples) if cond.dim == 1 else None
    return calibration.hpd_pit(cond, t, key, num_samples), central


def calibration_columns(cond, t, key, num_samples) -> tuple[dict, dict]:
    """The table's coverage columns (HPD regions at calibration.LEVELS, and their ECE) and the
    PITs behind them, for the calibration figure."""
    u_hpd, u_central = jax.device_get(_pits(cond, jnp.asarray(t), key, num_samples))
    cover = np.asarray(calibration.hpd_coverage(u_hpd))
    row = {f"cover{round(100 * a)}": float(x) for a, x in zip(calibration.LEVELS, cover)}
    row["ece"] = float(calibration.ece(cover))
    return row, {"hpd": u_hpd, "central": u_central}


def evaluate(task, cond: ConditionalMixture, c, t, key, num_samples) -> dict:
    samples, mean, log_prob, std = jax.device_get(_summaries(cond, jnp.asarray(t), key, num_samples))
    return {
        "nll": -float(np.mean(log_prob)),
        "precision": float(np.mean(task.on_branch(c, samples))),
        "recall": float(np.mean(task.branch_hits(c, samples))),
        "mean_rmse": float(np.sqrt(np.mean(np.sum((mean - task.true_mean(c)) ** 2, axis=-1)))),
        "cond_std": float(np.mean(std)),
    }


def residual_gaussian(predict, c_train, t_train, c) -> DiagonalConditionalMixture:
    """A point prediction as a one-component diagonal Gaussian with the training residual
    variance: what the point predictor's NLL and calibration are scored with."""
    var = np.mean((np.asarray(predict(jnp.asarray(c_train))) - t_train) ** 2, axis=0)
    pred = jnp.asarray(predict(jnp.asarray(c)))
    n, d = pred.shape
    return DiagonalConditionalMixture(jnp.zeros((n, 1)), pred[:, None, :], jnp.broadcast_to(jnp.sqrt(var), (n, 1, d)))


def evaluate_point(task, gauss: DiagonalConditionalMixture, c, t, num_samples) -> dict:
    """A point prediction (the mean of `gauss`, its `residual_gaussian`), scored by that
    Gaussian in the NLL column only; its samples are the point itself."""
    pred = np.asarray(gauss.means[:, 0])
    point = np.repeat(pred[:, None, :], num_samples, axis=1)
    return {
        "nll": -float(np.mean(np.asarray(gauss.log_prob(jnp.asarray(t))))),
        "precision": float(np.mean(task.on_branch(c, point))),
        "recall": float(np.mean(task.branch_hits(c, point))),
        "mean_rmse": float(np.sqrt(np.mean(np.sum((pred - task.true_mean(c)) ** 2, -1)))),
        "cond_std": 0.0,
    }


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower()).strip("_")


def run_task(config, task_name: str, workdir: str, progress=True) -> list[dict]:
    task = synthetic.make_task(task_name, **config.tasks[task_name].to_dict())
    c_te, t_te = task.sample(np.random.default_rng(config.train.seed + 1), config.num_test)
    truth_nll = -float(np.mean(task.true_log_prob(c_te, t_te)))
    results, conditionals, pits = [], {}, {}
    key = jax.random.key(config.train.seed + 2)
    for label, settings in config.rows:
        if config.methods and settings["name"] not in config.methods and label not in config.methods:
            continue
        tc = task_train_config(config, task_name, settings)
        data = synthetic.load(tc.data, tc.seed)
        c, t = data["c"], data["t"]
        row = {"task": task_name, "method": label}
        state, seconds, error, _ = train_timed(tc, os.path.join(workdir, task_name, _slug(label)), progress=progress)
        if error:  # a non-finite update: reported in the table, not hidden
            row.update(nll=float("nan"), precision=float("nan"), recall=float("nan"), mean_rmse=float("nan"))
            row["note"] = error
        else:
            kind, fn = conditional_fn(tc, state, c, t)
            if kind == "density":
                cond = fn(jnp.asarray(c_te))
                row.update(evaluate(task, cond, c_te, t_te, key, config.num_samples))
            else:
                cond = residual_gaussian(fn, c, t, c_te)
                row.update(evaluate_point(task, cond, c_te, t_te, config.num_samples))
            columns, pits[label] = calibration_columns(cond, t_te, key, config.num_calibration_samples)
            row.update(columns)
            conditionals[label] = (kind, fn)
        row["truth_nll"] = truth_nll
        row["seconds"] = seconds
        results.append(row)
        if progress:
            print(
                f"  {task_name:10s} {label:26s} nll {row['nll']:7.3f} (truth {truth_nll:6.3f})  "
                f"precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                f"E[t|c] rmse {row['mean_rmse']:.3f}  ({row['seconds']:.0f} s)"
            )
    if conditionals:
        path = os.path.join(workdir, f"alignment_{task_name}.png")
        plot_task(task, c, t, conditionals, path, config.train.seed)
        calibration_path = os.path.join(workdir, f"alignment_{task_name}_calibration.png")
        plot_calibration(task.name, pits, calibration_path)
        for r in results:
            r["figure"], r["calibration_figure"] = path, calibration_path
    return results


def plot_task(task, c, t, conditionals, path, seed):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(conditionals)
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    key = jax.random.key(seed)
    ring = task.target_dim == 2 and task.name == "ring"
    if ring:
        radii = np.array([1.2, 1.8], np.float32)
        grid = np.zeros((2, task.context_dim), np.float32)
        grid[:, 0] = radii
    else:
        lo, hi = float(np.min(c[:, 0])), float(np.max(c[:, 0]))
        grid = np.zeros((120, task.context_dim), np.float32)
        grid[:, 0] = np.linspace(lo, hi, 120)
    centres, _ = task.branches(grid.astype(np.float64))
    for ax, label in zip(axes.ravel(), labels):
        kind, fn = conditionals[label]
        if ring:
            a = np.linspace(0, 2 * np.pi, 200)
            for r in radii:
                ax.plot(r * np.cos(a), r * np.sin(a), "k--", lw=1)
            if kind == "density":
                s = np.asarray(fn(jnp.asarray(grid)).sample(key, 300))
                for i in range(len(grid)):
                    ax.scatter(s[i, :, 0], s[i, :, 1], s=2, alpha=0.4)
            else:
                p = np.asarray(fn(jnp.asarray(grid)))
                ax.scatter(p[:, 0], p[:, 1], c="r", marker="x", s=60, label="prediction")
            ax.set_aspect("equal")
            ax.set_xlabel("t_1")
            ax.set_ylabel("t_2")
        else:
            ax.scatter(c[:800, 0], t[:800, 0], s=2, c="0.8")
            for b in range(centres.shape[1]):
                ax.plot(grid[:, 0], centres[:, b, 0], "k--", lw=1)
            if kind == "density":
                cond = fn(jnp.asarray(grid))
                s = np.asarray(cond.sample(key, 20))[..., 0]
                ax.scatter(np.repeat(grid[:, 0], 20), s.ravel(), s=1, c="tab:blue", alpha=0.35)
                ax.plot(grid[:, 0], np.asarray(cond.mean())[:, 0], "tab:orange", lw=1.5, label="E[t|c]")
            else:
                ax.plot(grid[:, 0], np.asarray(fn(jnp.asarray(grid)))[:, 0], "r", lw=2, label="prediction")
            ax.set_xlabel("context c_1")
            ax.set_ylabel("target t_1")
        ax.set_title(label, fontsize=9)
    for ax in axes.ravel()[len(labels) :]:
        ax.axis("off")
    fig.suptitle(f"{task.name}: samples of p(t | c) (blue), true branches (dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_calibration(task_name: str, pits: dict, path: str) -> None:
    """Coverage of the HPD regions against their nominal level, one line per method, and the
    PIT histogram (central PIT for 1-D targets, HPD PIT otherwise): flat at 1 when calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = np.linspace(0.05, 0.95, 19)
    fig, (ax_cov, ax_pit) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    ax_cov.plot([0, 1], [0, 1], "k--", lw=1)
    central = all(u["central"] is not None for u in pits.values())
    for label, u in pits.items():
        ax_cov.plot(levels, np.asarray(calibration.hpd_coverage(u["hpd"], levels)), marker=".", label=label)
        hist = np.asarray(calibration.pit_histogram(u["central"] if central else u["hpd"], 10))
        ax_pit.step(np.linspace(0, 1, 11), np.append(hist, hist[-1]), where="post", label=label)
    ax_pit.axhline(1.0, color="k", ls="--", lw=1)
    ax_cov.set(xlabel="nominal level", ylabel="coverage of the HPD region", title=f"{task_name}: coverage")
    ax_pit.set(xlabel="central PIT" if central else "HPD PIT", ylabel="density", title=f"{task_name}: PIT histogram")
    ax_cov.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


COLUMNS = (
    ("task", "method", "nll", "truth_nll", "precision", "recall", "mean_rmse", "cond_std")
    + tuple(f"cover{round(100 * a)}" for a in calibration.LEVELS)
    + ("ece", "seconds")
)


def write_tables(results: list[dict], workdir: str, command: str) -> tuple[str, str]:
    csv_path = os.path.join(workdir, "alignment_results.csv")
    md_path = os.path.join(workdir, "alignment_results.md")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + ("note",), extrasaction="ignore")
        w.writeheader()
        w.writerows(results)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    with open(md_path, "w") as f:
        f.write(f"Produced by `{command}`. {records.provenance()}\n\n")
        f.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in results:
            f.write("| " + " | ".join(fmt(r.get(k, "")) for k in COLUMNS) + " |\n")
        f.write(
            "\nnll: held-out -log p(t|c) (truth_nll: the true conditional's). precision: fraction of "
            "samples within 3 noise std of a true branch; recall: fraction of true branches reached; "
            "mean_rmse: E[t|c] against the true conditional mean; cond_std: mean predictive std. "
            "coverN: fraction of held-out targets inside the N% highest-density region of p(t|c) (from "
            "num_calibration_samples draws per context; N/100 when calibrated); ece: mean |coverage - "
            "level| over the four levels. The predictor's NLL and coverage use a Gaussian with its "
            "training residual variance; its samples (precision, recall) are its point prediction.\n"
        )
    return md_path, csv_path


def run(config, workdir: str, progress: bool = True, command: str | None = None) -> list[dict]:
    """Every task of config.run_tasks, every row of config.rows (or those config.methods
    selects): one training
    run each in workdir/TASK/ROW (resumed where it is already there), then the table in
    workdir/alignment_results.md and .csv and a figure per task."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    results = []
    for task_name in config.run_tasks:
        if progress:
            print(f"task {task_name}:")
        results.extend(run_task(config, task_name, workdir, progress))
    md, csv_path = write_tables(results, workdir, command or "python -m experiments.main")
    figures = sorted({r[k] for r in results for k in ("figure", "calibration_figure") if k in r})
    print(f"figures: {', '.join(figures)}\ntable: {md} (and {csv_path})")
    return results
