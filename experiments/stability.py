r"""Long-run stability of every method (issue: reliability, item 7).

  python -m experiments.main --config=experiments/configs/stability.py --workdir=runs/stability

Trains each method of config.methods for config.train.num_steps steps in WORKDIR/METHOD
(resuming what is there), then reads each run's metrics.jsonl and writes
WORKDIR/stability.{md,csv} and WORKDIR/stability.png (loss, gradient norm and embedding
spread against the step). A run that produces a non-finite loss stops with the step
(train raises); the report then shows it as failed instead of aborting.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from gje_jax import methods
from gje_jax.train import records

from .configs.common import with_method
from .runs import train_timed

# Method diagnostics worth a column, when the method logs them.
DIAGNOSTICS = ("bank_ess", "gng_nodes", "em_reseeds", "components_used", "effective_rank")


def _read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # A resumed run re-logs from its last checkpoint: keep the last record of each step.
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def insertion_spikes(steps, loss, inserted, window: int = 50, after: int = 5) -> dict:
    """How far the loss jumps when GMJE-GNG inserts a node, against how far it jumps anyway.

    At each step i with a full window before it, excess(i) = max(loss[i : i + after]) -
    mean(loss[i - window : i]), relative to |mean(loss[i - window : i])| (so a spike to
    twice a positive running loss is 1.0).

    Args:
      steps, loss, inserted: [T] per-step records (consecutive steps: log_every = 1);
        inserted: the nodes inserted at each step (GNG's gng_inserted), > 0 at insertions.

    Returns:
      {'insertions': count, 'insert_excess': max relative excess at insertions,
       'other_excess': max relative excess at the other steps (those whose look-ahead
       holds no step within `after` after an insertion)}; NaN where the records are not
       consecutive or too short.

    Example:
      >>> loss = np.full(200, 2.0); loss[120] = 5.0                 # 2.5x the running loss
      >>> inserted = np.zeros(200); inserted[120] = 1               # a node at step 120
      >>> out = insertion_spikes(np.arange(200), loss, inserted)
      >>> out["insertions"], out["insert_excess"], out["other_excess"]
      (1, 1.5, 0.0)
    """
    steps, loss = (np.asarray(x, np.float64) for x in (steps, loss))
    inserted = np.asarray(inserted) > 0
    nan = {"insertions": int(inserted.sum()), "insert_excess": np.nan, "other_excess": np.nan}
    if len(steps) <= window + after or np.any(np.diff(steps) != 1) or not np.all(np.isfinite(loss)):
        return nan
    csum = np.r_[0.0, np.cumsum(loss)]
    idx = np.arange(window, len(loss) - after + 1)
    running = (csum[idx] - csum[idx - window]) / window
    ahead = np.lib.stride_tricks.sliding_window_view(loss, after)[idx]
    excess = (ahead.max(axis=1) - running) / np.maximum(np.abs(running), 1e-12)
    near = np.zeros(len(loss), bool)
    for i in np.flatnonzero(inserted):  # look-ahead windows that hold an insertion's steps
        near[max(i - after + 1, 0) : i + after] = True
    at = inserted[idx]
    other = ~near[idx]
    return {
        "insertions": int(inserted.sum()),
        "insert_excess": float(excess[at].max()) if at.any() else np.nan,
        "other_excess": float(excess[other].max()) if other.any() else np.nan,
    }


def summarize(method: str, rows: list[dict], seconds: float, error: str, diverged_at: int | None = None) -> dict:
    """diverged_at: the step whose update was non-finite; the run's steps end there."""

    def col(k):
        return np.asarray([r.get(k, np.nan) for r in rows], np.float64)

    loss = col("loss")
    finite = np.isfinite(loss)
    out = {
        "method": method,
        "steps": diverged_at if diverged_at is not None else (int(rows[-1]["step"]) if rows else 0),
        "records": len(rows),
        "non_finite": max(int((~finite).sum()), int(bool(error))),
        "loss_first": float(loss[0]) if rows else np.nan,
        "loss_last": float(loss[-1]) if rows else np.nan,
        "loss_max_late": float(np.nanmax(loss[len(loss) // 2 :])) if rows else np.nan,
        "grad_norm_max": float(np.nanmax(col("grad_norm"))) if rows else np.nan,
        "emb_std_min": float(np.nanmin(col("embedding_std"))) if rows else np.nan,
        "emb_std_last": float(col("embedding_std")[-1]) if rows else np.nan,
        "seconds": round(seconds, 1),
        "error": error,
    }
    last = rows[-1] if rows else {}
    inserted_keys = [k for k in last if k.endswith("gng_inserted")]
    if inserted_keys:
        out.update(insertion_spikes(col("step"), loss, col(inserted_keys[0])))
    for k in [k for k in last if k.endswith("bank_ess_fraction")]:
        out[f"{k}_min"] = float(np.nanmin(col(k)))
    for k in DIAGNOSTICS:
        for name in rows[-1] if rows else ():
            if name.endswith(k):
                out[f"{name} (last)"] = float(rows[-1][name])
    return out


def _figure(runs: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, rows in runs.items():
        if not rows:
            continue
        step = [r["step"] for r in rows]
        for ax, key in zip(axes, ("loss", "grad_norm", "embedding_std")):
            ax.plot(step, [r.get(key, np.nan) for r in rows], label=method, lw=1)
    for ax, key in zip(axes, ("loss", "gradient norm", "embedding std (mean over dims)")):
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[0].set_yscale("symlog")
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config, workdir: str, *, command: str = "") -> list[dict]:
    os.makedirs(workdir, exist_ok=True)
    results, runs = [], {}
    for method in config.methods or methods.names():
        t = with_method(config.train, method, config.method_tuning)
        mdir = os.path.join(workdir, method)
        _, seconds, error, diverged_at = train_timed(t, mdir)  # a non-finite update: reported, not fatal to the others
        runs[method] = _read_metrics(os.path.join(mdir, "metrics.jsonl"))
        results.append(summarize(method, runs[method], seconds, error, diverged_at))
        r = results[-1]
        print(
            f"{method:10s} steps {r['steps']:6d}  non-finite {r['non_finite']}  loss {r['loss_first']:.4g} -> "
            f"{r['loss_last']:.4g}  max |grad| {r['grad_norm_max']:.3g}  emb std min {r['emb_std_min']:.3g}"
            + (f"  ERROR {error}" if error else "")
        )
    _write(results, workdir, command)
    _figure(runs, os.path.join(workdir, "stability.png"))
    return results


def _fmt(v):
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _write(results: list[dict], workdir: str, command: str) -> None:
    keys = []
    for r in results:
        keys += [k for k in r if k not in keys]
    with open(os.path.join(workdir, "stability.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(results)
    main = [k for k in keys if k != "error" and "(last)" not in k]
    lines = [
        f"Long-run stability, produced by `{command}`. {records.provenance()}",
        "",
        "| " + " | ".join(main + ["diagnostics (last)", "error"]) + " |",
        "|" + "---|" * (len(main) + 2),
    ]
    for r in results:
        diag = ", ".join(f"{k[:-7]}={_fmt(v)}" for k, v in r.items() if k.endswith("(last)"))
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in main) + f" | {diag} | {r['error']} |")
    with open(os.path.join(workdir, "stability.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
