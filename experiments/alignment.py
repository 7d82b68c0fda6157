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
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gje_jax import fit_gaussian, methods
from gje_jax.data import synthetic
from gje_jax.methods import Embeddings
from gje_jax.mixture import ConditionalMixture
from gje_jax.models import MLP
from gje_jax.train import records

# (row label, registry name, method settings): the experiment's choice of variants. A name
# of None is the deterministic MSE baseline trained here; every other row trains its
# registered method (an unknown name or setting fails).
# The mixture methods fit p(t | c) by its conditional NLL: with the identity target
# there is nothing to collapse on the target side, so no geometry term is needed there.
_COND = {"objective": "conditional", "lambda_geo": 0.0}
ROWS = (
    ("predictor (MSE)", None, {}),
    ("GJE batch, lambda_geo=1", "gje", {"estimator": "batch", "lambda_geo": 1.0}),
    ("GJE ema", "gje", {"estimator": "ema"}),
    ("GJE param", "gje", {"estimator": "param"}),
    ("GMJE prototypes (SGD)", "gmje", _COND),
    ("GMJE online EM", "gmje_em", _COND),
    ("GMJE-MDN", "gmje_mdn", {"lambda_geo": 0.0}),
    ("GMJE-GNG", "gmje_gng", _COND),
    ("GMJE SMC bank", "gmje_smc", {"lambda_geo": 0.0}),
)


def _batches(rng, n, batch, steps):
    for _ in range(steps):
        yield rng.integers(0, n, batch)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_predictor(config, c, t, seed, progress=True):
    """The deterministic baseline: MLP c -> t by MSE. Returns predict(c) -> [n, d_t] and
    the residual variance on the training data (for a post-hoc Gaussian NLL)."""
    net = MLP(hidden=tuple(config.hidden) + (config.embed_dim,), out_dim=t.shape[1], norm="ln")
    params = net.init(jax.random.key(seed), c[:2])
    opt = optax.adam(config.lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, c, t):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.sum((net.apply(p, c) - t) ** 2, -1)))(params)
        upd, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, upd), opt_state, loss

    bar = _progress(config.steps, "predictor", progress)
    rng = np.random.default_rng(seed)
    for idx in _batches(rng, len(c), config.batch_size, config.steps):
        params, opt_state, loss = step(params, opt_state, c[idx], t[idx])
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    predict = jax.jit(lambda x: net.apply(params, x))
    resid = np.asarray(predict(c)) - t
    return predict, np.mean(resid**2, axis=0)


def train_density_method(config, method_config, c, t, seed, progress=True, label=""):
    """Trains f_c and a registered density method on pairs (c, t) with t as the target
    embedding. Returns conditional(c) -> ConditionalMixture."""
    method = methods.build(method_config)
    enc = MLP(hidden=tuple(config.hidden), out_dim=config.embed_dim, norm="ln")
    k_enc, k_method = jax.random.split(jax.random.key(seed))
    params = {"encoder": enc.init(k_enc, c[:2]), "method": None}
    params["method"], mstate = method.init(k_method, config.embed_dim, t.shape[1])
    opt = optax.adam(config.lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, mstate, c, t, key):
        def objective(p):
            emb = Embeddings(enc.apply(p["encoder"], c), t)
            loss, metrics = method.loss(p["method"], mstate, emb)
            return loss, emb

        (loss, emb), grads = jax.value_and_grad(objective, has_aux=True)(params)
        upd, opt_state = opt.update(grads, opt_state)
        params = optax.apply_updates(params, upd)
        mstate, _ = method.update(mstate, jax.tree.map(jax.lax.stop_gradient, emb), params, key)
        return params, opt_state, mstate, loss

    bar = _progress(config.steps, label or method_config.name, progress)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed + 1)
    for i, idx in enumerate(_batches(rng, len(c), config.batch_size, config.steps)):
        params, opt_state, mstate, loss = step(params, opt_state, mstate, c[idx], t[idx], jax.random.fold_in(key, i))
        if bar:
            bar.update(1)
            if i % 100 == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar:
        bar.close()
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"{label}: loss is {float(loss)} after {config.steps} steps.")
    embed = jax.jit(lambda x: enc.apply(params["encoder"], x))
    if method.conditional is not None:
        return lambda x: method.conditional(params["method"], mstate, embed(x))
    if method.batch_density:  # the Gaussian of all training embeddings
        z = jnp.concatenate([embed(c), jnp.asarray(t)], axis=1)
        density = fit_gaussian(z, method_config.eps_rel, method_config.eps_abs)
    else:
        density = method.density(params["method"], mstate)
    return lambda x: density.condition(embed(x), split=density.dim - t.shape[1])


def evaluate(task, cond: ConditionalMixture, c, t, key, num_samples) -> dict:
    samples = np.asarray(cond.sample(key, num_samples))
    mean = np.asarray(cond.mean())
    return {
        "nll": -float(np.mean(np.asarray(cond.log_prob(jnp.asarray(t))))),
        "precision": float(np.mean(task.on_branch(c, samples))),
        "recall": float(np.mean(task.branch_hits(c, samples))),
        "mean_rmse": float(np.sqrt(np.mean(np.sum((mean - task.true_mean(c)) ** 2, axis=-1)))),
        "cond_std": float(np.mean(np.sqrt(np.diagonal(np.asarray(cond.covariance()), axis1=1, axis2=2)))),
    }


def _predictor_conditional(pred, var):
    """A point prediction as a one-component ConditionalMixture with the training
    residual variance (only for the NLL column; its samples are the point itself)."""
    n, d = pred.shape
    return ConditionalMixture(
        jnp.zeros((n, 1)), jnp.asarray(pred)[:, None, :], jnp.broadcast_to(jnp.sqrt(var), (n, 1, d)), diagonal=True
    )


def run_task(config, task_name: str, workdir: str, progress=True) -> list[dict]:
    task = synthetic.make_task(task_name, **config.tasks[task_name].to_dict())
    rng = np.random.default_rng(config.seed)
    c, t = task.sample(rng, config.num_train)
    c_te, t_te = task.sample(np.random.default_rng(config.seed + 1), config.num_test)
    truth_nll = -float(np.mean(task.true_log_prob(c_te, t_te)))
    results, conditionals = [], {}
    key = jax.random.key(config.seed + 2)
    for label, name, overrides in ROWS:
        if config.methods and name not in config.methods and label not in config.methods:
            continue
        start = time.perf_counter()
        row = {"task": task_name, "method": label}
        try:
            if name is None:
                predict, var = train_predictor(config, c, t, config.seed, progress)
                pred = np.asarray(predict(c_te))
                point = np.repeat(pred[:, None, :], config.num_samples, axis=1)
                nll = -float(np.mean(np.asarray(_predictor_conditional(pred, var).log_prob(jnp.asarray(t_te)))))
                row.update(
                    nll=nll,
                    precision=float(np.mean(task.on_branch(c_te, point))),
                    recall=float(np.mean(task.branch_hits(c_te, point))),
                    mean_rmse=float(np.sqrt(np.mean(np.sum((pred - task.true_mean(c_te)) ** 2, -1)))),
                    cond_std=0.0,
                )
                conditionals[label] = ("point", predict)
            else:
                mc = methods.tuned(name, config.method_tuning, **overrides)
                conditional = train_density_method(config, mc, c, t, config.seed, progress, label)
                row.update(evaluate(task, conditional(jnp.asarray(c_te)), c_te, t_te, key, config.num_samples))
                conditionals[label] = ("density", conditional)
        except FloatingPointError as err:  # reported in the table, not hidden
            row.update(nll=float("nan"), precision=float("nan"), recall=float("nan"), mean_rmse=float("nan"))
            row["note"] = str(err)
        row["truth_nll"] = truth_nll
        row["seconds"] = time.perf_counter() - start
        results.append(row)
        if progress:
            print(
                f"  {task_name:10s} {label:26s} nll {row['nll']:7.3f} (truth {truth_nll:6.3f})  "
                f"precision {row['precision']:.3f}  recall {row['recall']:.3f}  "
                f"E[t|c] rmse {row['mean_rmse']:.3f}  ({row['seconds']:.0f} s)"
            )
    path = os.path.join(workdir, f"alignment_{task_name}.png")
    plot_task(task, c, t, conditionals, path, config.seed)
    for r in results:
        r["figure"] = path
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


COLUMNS = ("task", "method", "nll", "truth_nll", "precision", "recall", "mean_rmse", "cond_std", "seconds")


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
            "The predictor's NLL uses a Gaussian with its training residual variance; its samples are "
            "its point prediction.\n"
        )
    return md_path, csv_path


def run(config, workdir: str, progress: bool = True, command: str | None = None) -> list[dict]:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    results = []
    for task_name in config.run_tasks:
        if progress:
            print(f"task {task_name}:")
        results.extend(run_task(config, task_name, workdir, progress))
    md, csv_path = write_tables(results, workdir, command or "python -m experiments.main")
    figures = sorted({r["figure"] for r in results})
    print(f"figures: {', '.join(figures)}\ntable: {md} (and {csv_path})")
    return results
