r"""Train-step throughput per method, and each loss's overhead relative to SimCLR.

  python -m experiments.benchmarks.train_step [--encoder=convnet_small] [--batch=128] [--embed=128]

Same encoder, batch and embedding size for every method, measured in one run. On a GPU
the default is ResNet-18 (CIFAR stem) at batch 512, embedding 128 (the target: GJE/GMJE
add at most 10% to the step). Views are two noisy copies of random 32x32x3 images, so
the number measures the model and the loss, not a data pipeline.
"""

from __future__ import annotations

from experiments import threads

# As the entry points run (see experiments/threads.py); run with OPENBLAS_NUM_THREADS set to
# measure another setting.
OPENBLAS_THREADS = threads.default_openblas_threads()

import argparse  # noqa: E402
import functools  # noqa: E402

import jax  # noqa: E402

from experiments.benchmarks import common  # noqa: E402
from experiments.configs.common import base_config  # noqa: E402
from gje_jax.models import build_network  # noqa: E402
from gje_jax.train.methods import get_method  # noqa: E402
from gje_jax.train.state import create_state, make_optimizer, train_step  # noqa: E402

METHOD_ROWS = [
    ("simclr", {}),
    ("vicreg", {}),
    ("predictor", {}),
    ("gje", {"estimator": "batch"}),
    ("gje", {"estimator": "ema"}),
    ("gmje", {"num_components": 16}),
]
# The remedies of the trace trap (--remedies): online-EM prototypes, the MDN head, GNG, the SMC bank.
REMEDY_ROWS = [
    ("gmje_em", {"num_components": 16}),
    ("gmje_mdn", {"num_components": 16}),
    ("gmje_gng", {}),
    ("gmje_smc", {}),
]


def views(batch, key):
    ka, kb = jax.random.split(key)
    x = batch["x"]
    return x + 0.1 * jax.random.normal(ka, x.shape), x + 0.1 * jax.random.normal(kb, x.shape)


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


def measure(encoder: str, batch: int, embed: int, dtype: str, remedies: bool = False):
    cfg = base_config()
    cfg.model.encoder, cfg.model.projector, cfg.model.embed_dim, cfg.model.dtype = encoder, "bn", embed, dtype
    cfg.model.projector_hidden = (512,)
    net = build_network(cfg.model)
    tx = make_optimizer(cfg.optim, 1000)
    data = {"x": jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))}
    rows = []
    for name, extra in METHOD_ROWS + (REMEDY_ROWS if remedies else []):
        m = cfg.method.copy_and_resolve_references()
        m.name = name
        for k, v in extra.items():
            m[k] = v
        ms = step_time_ms(net, get_method(m), tx, data)
        label = name + ("" if not extra else "(" + ",".join(f"{k}={v}" for k, v in extra.items()) + ")")
        rows.append((label, ms))
    base = rows[0][1]
    table = [
        [label, f"{ms:.1f}", f"{1e3 / ms:.2f}", f"{batch * 1e3 / ms:.0f}", f"{100 * (ms / base - 1):+.1f}%"]
        for label, ms in rows
    ]
    return common.markdown_table(["method", "step ms", "steps/s", "images/s", "overhead vs simclr"], table)


def main():
    gpu = jax.default_backend() != "cpu"
    p = argparse.ArgumentParser(description="Train-step benchmark")
    p.add_argument("--encoder", default="resnet18" if gpu else "convnet_small")
    p.add_argument("--batch", type=int, default=512 if gpu else 128)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remedies", action="store_true", help="also time gmje_em, gmje_mdn, gmje_gng, gmje_smc")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    head = (
        f"# Train-step benchmark\n\njax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}; encoder {a.encoder}, batch {a.batch} (x2 views), embedding {a.embed}, "
        f"{a.dtype}, OPENBLAS_NUM_THREADS={OPENBLAS_THREADS}\n"
    )
    text = head + "\n" + measure(a.encoder, a.batch, a.embed, a.dtype, a.remedies) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(
                text + f"\nCommand: python -m experiments.benchmarks.train_step --encoder={a.encoder} "
                f"--batch={a.batch} --embed={a.embed} --dtype={a.dtype}{' --remedies' if a.remedies else ''}\n"
            )


if __name__ == "__main__":
    main()
