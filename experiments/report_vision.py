r"""Vision benchmark: pretrain (or collect) every method, evaluate frozen features, write one table.

  python -m experiments.report_vision --config=experiments/configs/cifar10_small.py --workdir=runs/c10 \
      --out=docs/results/vision_cifar10_small
  python -m experiments.report_vision --config=experiments/configs/cifar10_small.py --size=runlocal \
      --methods=simclr,gmje --workdir=/tmp/c10
  python -m experiments.report_vision --config=experiments/configs/cifar10_small.py:gmje_em \
      --methods=gmje_em,gmje_gng --config.method.pooled_eps_rel=2 --workdir=runs/c10_pooled2

Overrides are ml_collections ones (`--config.PATH=VALUE`), parsed against the config string's
method (`FILE:METHOD`, default gmje) and applied to every method of --methods: a
`--config.method.X` override needs every one of them to have the setting X.

Each method trains in WORKDIR/METHOD (resuming or reusing a finished run) and is evaluated on
the backbone's features of the un-augmented train and test images: weighted kNN (cosine, both
k of config.eval.knn_k, T = config.eval.knn_temperature) and the offline linear probe (final
epoch, no selection on the test set). A random-init encoder row is evaluated the same way.
Writes OUT.md and OUT.csv (default WORKDIR/vision) and WORKDIR/METHOD/eval.json.
"""

from __future__ import annotations

from . import threads

threads.default_openblas_threads()  # before numpy, scipy and jax load

import csv  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gje_jax import evaluation, methods  # noqa: E402
from gje_jax.data import augment, images  # noqa: E402
from gje_jax.train import loop, records  # noqa: E402

_FLAGS = {}


def _define_flags(flag_values=flags.FLAGS, argv=None) -> None:
    """Defined only when run as a script, so importing the helpers below defines no flags
    (experiments.main has its own --config). argv: the command line the --config overrides
    are read from (default sys.argv)."""
    kw = dict(flag_values=flag_values)
    _FLAGS.update(
        config=config_flags.DEFINE_config_file(
            "config",
            "experiments/configs/cifar10_small.py",
            "Image config file (argument: the method overrides are parsed against).",
            lock_config=True,
            sys_argv=argv,
            **kw,
        ),
        size=flags.DEFINE_string("size", "", "Size argument appended to the method (e.g. runlocal).", **kw),
        methods=flags.DEFINE_list("methods", [], "Methods to run (default: every registered method).", **kw),
        workdir=flags.DEFINE_string(
            "workdir", None, "Parent directory of the per-method workdirs.", required=True, **kw
        ),
        out=flags.DEFINE_string("out", "", "Path prefix of the table (.md and .csv); default WORKDIR/vision.", **kw),
    )
    # An empty --workdir= would train into the current directory (and reuse whatever run is there).
    flags.register_validator(
        "workdir", lambda v: bool(v and v.strip()), message="--workdir must name a directory, got an empty value.", **kw
    )


def load_config_module(path: str):
    """The config module at a file path (its get_config and the vision helpers it shares)."""
    spec = importlib.util.spec_from_file_location("_vision_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def method_config(module, method: str, size: str, overrides=None):
    """The config of one method with `overrides` ({'PATH': value}, as ml_collections'
    get_override_values returns them) applied; a PATH the method's config does not hold fails
    naming it and the method."""
    c = module.get_config(f"{method},{size}" if size else method)
    for path, value in dict(overrides or {}).items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            node = node[p] if p in node else None
            if node is None:
                break
        if node is None or leaf not in node:
            raise ValueError(f"--config.{path}: the config of {method!r} has no such field.")
        node[leaf] = value
    return c


def feature_fn(config, state):
    """uint8 images [b, H, W, C] -> backbone features [b, F] (eval mode, no augmentation)."""
    d = config.data
    transform = augment.make_eval_transform(augment.get_recipe(d.augment).size, d.mean, d.std)
    return lambda x: state.encode(transform(x), features=True)


def evaluate(config, state, train, test) -> dict:
    """kNN for each k and the linear probe on frozen features -> a dict of accuracies."""
    fn = feature_fn(config, state)
    e = config.eval
    t0 = time.perf_counter()
    f_train = evaluation.embed(fn, train["image"], e.embed_batch, progress=True)
    f_test = evaluation.embed(fn, test["image"], e.embed_batch, progress=True)
    if not (np.all(np.isfinite(f_train)) and np.all(np.isfinite(f_test))):
        raise FloatingPointError("non-finite features; the encoder diverged")
    out = {"embed_s": time.perf_counter() - t0}
    nc = config.data.num_classes
    for k in e.knn_k:
        out[f"knn_k{k}"] = evaluation.knn_accuracy(
            f_train, train["label"], f_test, test["label"], nc, k=k, temperature=e.knn_temperature
        )
    probe = evaluation.linear_probe(
        f_train,
        train["label"],
        f_test,
        test["label"],
        nc,
        epochs=e.probe_epochs,
        lr=e.probe_lr,
        weight_decay=e.probe_weight_decay,
        seed=config.seed,
    )
    out["linear"] = probe["test_accuracy"]
    out["linear_train"] = probe["train_accuracy"]
    return out


def _timing(workdir: str, seconds: float, step_reached: int) -> dict:
    """Accumulates training wall time over resumed sessions in WORKDIR/timing.json
    ({'seconds', 'steps'}: the step reached and the time it took in all)."""
    path = os.path.join(workdir, "timing.json")
    t = {"seconds": 0.0, "steps": 0}
    if os.path.exists(path):
        with open(path) as f:
            t = json.load(f)
    if step_reached > t["steps"]:
        t = {"seconds": t["seconds"] + seconds, "steps": step_reached}
        with open(path, "w") as f:
            json.dump(t, f)
    return t


def run_method(config, workdir: str, train, test) -> dict:
    os.makedirs(workdir, exist_ok=True)
    eval_path = os.path.join(workdir, "eval.json")
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            row = json.load(f)
        if row.get("num_steps") == config.num_steps:
            print(f"{config.method.name}: collected {eval_path}")
            return row
    t0 = time.perf_counter()
    state, last = loop.train(config, workdir)
    seconds = time.perf_counter() - t0
    timing = _timing(workdir, seconds, int(jax.device_get(state.step)))
    # Evaluates what the workdir holds (its latest checkpoint), as a later reader would.
    row = evaluate(config, records.load_run(workdir).state, train, test)
    row.update(
        method=config.method.name,
        num_steps=config.num_steps,
        online_probe=last.get("probe_accuracy", float("nan")),
        train_s=timing["seconds"],
        images_per_s=timing["steps"] * config.batch_size / max(timing["seconds"], 1e-9),
    )
    with open(eval_path, "w") as f:
        json.dump(row, f, indent=1)
    return row


def random_row(config, train, test, workdir: str = "") -> dict:
    """The random-init encoder's row; cached in WORKDIR/random_init/eval.json when given
    (reused only for the same seed, model and evaluation settings)."""
    path = os.path.join(workdir, "random_init", "eval.json") if workdir else ""
    key = json.dumps([config.seed, config.model.to_dict(), config.eval.to_dict()], sort_keys=True, default=str)
    if path and os.path.exists(path):
        with open(path) as f:
            row = json.load(f)
        if row.get("settings") == key:
            return row
    state, *_ = loop.setup(config)
    row = evaluate(config, state, train, test)
    row.update(method="random init", num_steps=0, online_probe=float("nan"), train_s=0.0, images_per_s=float("nan"))
    row["settings"] = key
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(row, f, indent=1)
    return row


def write_table(rows, config, out: str, command: str) -> str:
    ks = list(config.eval.knn_k)
    n_train = rows[0].get("n_train", 0)
    header = ["method", "backbone", "epochs", "batch"] + [f"kNN top-1 k={k}" for k in ks]
    header += ["linear top-1", "online probe", "wall time (min)", "images/s"]
    lines = [
        f"Frozen-feature evaluation on {config.data.name} (train {n_train} / test {rows[0].get('n_test', 0)} "
        f"images; kNN T={config.eval.knn_temperature}, linear probe {config.eval.probe_epochs} epochs, final epoch).",
        "",
        f"Command: `{command}`. {records.provenance()}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    table = []
    for r in rows:
        epochs = r["num_steps"] * config.batch_size / max(n_train, 1)
        vals = [r["method"], config.model.encoder, f"{epochs:.2f}", str(config.batch_size)]
        vals += [f"{100 * r[f'knn_k{k}']:.1f}" for k in ks]
        vals += [
            f"{100 * r['linear']:.1f}",
            "-" if np.isnan(r["online_probe"]) else f"{100 * r['online_probe']:.1f}",
            f"{r['train_s'] / 60:.1f}",
            "-" if np.isnan(r["images_per_s"]) else f"{r['images_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(vals) + " |")
        table.append(dict(zip(header, vals)))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(table)
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config_flag = flags.FLAGS["config"]
    module = load_config_module(config_flags.get_config_filename(config_flag))
    names = _FLAGS["methods"].value or list(methods.names())
    size, overrides = _FLAGS["size"].value, config_flags.get_override_values(config_flag)
    base = method_config(module, names[0], size, overrides)
    d = base.data
    train = images.load_split(d, d.train_split, progress=True)
    test = images.load_split(d, d.test_split, progress=True)
    rows = [random_row(base, train, test, _FLAGS["workdir"].value)]
    for method in names:
        config = method_config(module, method, size, overrides)
        row = run_method(config, os.path.join(_FLAGS["workdir"].value, method), train, test)
        print(
            f"{method:10s} kNN "
            + " ".join(f"k={k}: {100 * row[f'knn_k{k}']:.1f}" for k in config.eval.knn_k)
            + f"  linear {100 * row['linear']:.1f}  ({row['train_s'] / 60:.1f} min)"
        )
        rows.append(row)
    for r in rows:
        r.update(n_train=len(train["label"]), n_test=len(test["label"]))
    # Quoted for a POSIX shell: override values may hold parentheses.
    command = "python -m experiments.report_vision " + shlex.join(sys.argv[1:])
    out = _FLAGS["out"].value or os.path.join(_FLAGS["workdir"].value, "vision")
    print(write_table(rows, base, out, command))
    print(f"Table: {out}.md, {out}.csv")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
