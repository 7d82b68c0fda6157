r"""Train-step throughput per method, and each loss's overhead relative to SimCLR.

  python -m experiments.benchmarks.train_step [--encoder=convnet_small] [--batch=128] [--embed=128]

Same encoder, batch and embedding size for every method, measured in one run. On a GPU
the default is ResNet-18 (CIFAR stem) at batch 512, embedding 128 (the target: GJE/GMJE
add at most 10% to the step). Views are two noisy copies of random 32x32x3 images, so
the number measures the model and the loss, not a data pipeline.
"""

from __future__ import annotations

from .. import threads

# As the entry points run (see experiments/threads.py); run with OPENBLAS_NUM_THREADS set to
# measure another setting.
OPENBLAS_THREADS = threads.default_openblas_threads()

import argparse  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402

from gje_jax import methods  # noqa: E402
from gje_jax.models import build_network, model_config  # noqa: E402
from gje_jax.train.optim import make_optimizer  # noqa: E402
from gje_jax.train.state import create_state  # noqa: E402
from gje_jax.train.step import train_step  # noqa: E402

from ..configs.common import base_config  # noqa: E402
from . import common  # noqa: E402

# Method settings for every registered method that reads them.
TUNING = {"num_components": 16}


def views(batch, key):
    ka, kb = jax.random.split(key)
    x = batch["x"]
    return x + 0.1 * jax.random.normal(ka, x.shape), x + 0.1 * jax.random.normal(kb, x.shape)


def reference_method() -> str:
    """The registry's first method without a density or state updates: what the other
    methods' costs are set against."""
    return next(n for n in methods.names() if not methods.build(methods.default_settings(n)).probabilistic)


def step_time_ms(net, method, tx, data) -> float:
    """Median ms of one jitted, state-donating train step on `data` (after warm-up)."""
    state = jax.jit(functools.partial(create_state, network=net, method=method, tx=tx))(
        jax.random.key(1), example_input=data["x"][:2]
    )
    step = jax.jit(functools.partial(train_step, method=method, views_fn=views), donate_argnums=0)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data, jax.random.key(2))
        return metrics["loss"]

    return common.time_call(run, min_time=2.0, max_reps=30)


def measure(encoder: str, batch: int, embed: int, dtype: str, only=()):
    """Step time of every registered method (or those in `only`) on one encoder; the
    overhead is against the first registered method without a density (the contrastive
    baseline in registry order)."""
    cfg = base_config()
    cfg.model = model_config(encoder, projector="bn", projector_hidden=(512,), embed_dim=embed, dtype=dtype)
    net = build_network(cfg.model)
    tx = make_optimizer(cfg.optim, 1000)
    data = {"x": jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))}
    rows, base_name = [], None
    for name in only or methods.names():
        m = methods.tuned(name, TUNING)
        method = methods.build(m)
        if base_name is None and not method.probabilistic:
            base_name = name
        tuned = {k: m[k] for k in TUNING if k in m}
        label = name + ("" if not tuned else "(" + ",".join(f"{k}={v}" for k, v in tuned.items()) + ")")
        rows.append((name, label, step_time_ms(net, method, tx, data)))
    base = next((ms for name, _, ms in rows if name == base_name), rows[0][2])
    table = [
        [label, f"{ms:.1f}", f"{1e3 / ms:.2f}", f"{batch * 1e3 / ms:.0f}", f"{100 * (ms / base - 1):+.1f}%"]
        for _, label, ms in rows
    ]
    return common.markdown_table(["method", "step ms", "steps/s", "images/s", f"overhead vs {base_name}"], table)


def main():
    gpu = jax.default_backend() != "cpu"
    p = argparse.ArgumentParser(description="Train-step benchmark")
    p.add_argument("--encoder", default="resnet18" if gpu else "convnet_small")
    p.add_argument("--batch", type=int, default=512 if gpu else 128)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--methods", default="", help="comma-separated registered methods (default: all)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    head = (
        f"# Train-step benchmark\n\njax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}; encoder {a.encoder}, batch {a.batch} (x2 views), embedding {a.embed}, "
        f"{a.dtype}, OPENBLAS_NUM_THREADS={OPENBLAS_THREADS}\n"
    )
    text = head + "\n" + measure(a.encoder, a.batch, a.embed, a.dtype, tuple(filter(None, a.methods.split(",")))) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(
                text + f"\nCommand: python -m experiments.benchmarks.train_step --encoder={a.encoder} "
                f"--batch={a.batch} --embed={a.embed} --dtype={a.dtype}{' --methods=' + a.methods if a.methods else ''}\n"
            )


if __name__ == "__main__":
    main()
