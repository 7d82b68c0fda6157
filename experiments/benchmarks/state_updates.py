r"""Cost of each remedy's state update against the train step it sits in.

  python -m experiments.benchmarks.state_updates [--out=FILE]

Reference: one SimCLR train step of the same encoder, batch and embedding (small ConvNet,
batch 128 x 2 views, embedding 128 on CPU; ResNet-18, batch 512 on GPU), measured in the
same run. Updates, on a joint embedding of D = 2 x embedding: online-EM statistics
(K = 16), one GNG scan over the batch (capacity 64), and the SMC bank's reweight +
resample + insert (M = 65536). Target: each adds at most 30% to the step.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from gje_jax import methods
from gje_jax.models import build_network, model_config
from gje_jax.remedies import em, gng, smc
from gje_jax.train.optim import make_optimizer

from ..configs.common import base_config
from . import common
from .train_step import reference_method, step_time_ms


def step_ms(encoder: str, batch: int, embed: int) -> float:
    cfg = base_config()
    cfg.model = model_config(encoder, projector="bn", projector_hidden=(512,), embed_dim=embed)
    net = build_network(cfg.model)
    # The step of a method without state updates: the reference the updates are timed against.
    method = methods.build(methods.default_settings(reference_method()))
    data = {"x": jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))}
    return step_time_ms(net, method, make_optimizer(cfg.optim, 100), data)


def update_rows(batch: int, dim: int, bank_size: int):
    z = jax.random.normal(jax.random.key(0), (batch, dim))
    key = jax.random.key(1)
    rows = []

    em_state = em.update(em.EMState.create(key, 16, dim), z, key)[0]  # initialised
    f = jax.jit(lambda s, z, k: em.update(s, z, k)[0])
    rows.append(("online EM statistics (K = 16)", common.time_call(f, em_state, z, key)))

    cfg = gng.GNGConfig(insert_every=10)
    g_state = gng.update(gng.GNGState.create(64, dim), z, cfg)[0]
    f = jax.jit(lambda s, z: gng.update(s, z, cfg)[0])
    rows.append(("GNG scan over the batch (capacity 64)", common.time_call(f, g_state, z)))

    bank = smc.ParticleBank.empty(bank_size, dim)
    fill = jax.jit(smc.insert)
    for i in range(bank_size // batch):
        bank = fill(bank, jax.random.normal(jax.random.fold_in(key, i), (batch, dim)))
    scale_tril = smc.kernel_scale_tril(jnp.eye(dim), bank_size)
    f = jax.jit(lambda b, z, k: smc.update(b, z, k, scale_tril)[0])
    rows.append((f"SMC bank reweight + resample + insert (M = {bank_size})", common.time_call(f, bank, z, key)))
    return rows


def main():
    gpu = jax.default_backend() != "cpu"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="resnet18" if gpu else "convnet_small")
    p.add_argument("--batch", type=int, default=512 if gpu else 128)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--bank", type=int, default=65536)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    ref = step_ms(a.encoder, a.batch, a.embed)
    rows = update_rows(a.batch, 2 * a.embed, a.bank)
    table = [["SimCLR train step (reference)", f"{ref:.1f}", "100%"]] + [
        [name, f"{ms:.1f}", f"{100 * ms / ref:.1f}%"] for name, ms in rows
    ]
    common.report(
        "State-update benchmark",
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}; encoder {a.encoder}, batch {a.batch}, joint D = {2 * a.embed}",
        ["what", "ms", "of the step"],
        table,
        a.out,
        f"python -m experiments.benchmarks.state_updates --out={a.out}",
    )


if __name__ == "__main__":
    main()
