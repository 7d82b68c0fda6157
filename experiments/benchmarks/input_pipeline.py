r"""Host cost of one image batch: the library's index batching against grain's, and a train step.

  python -m experiments.benchmarks.input_pipeline [--out=FILE]   (grain: pip install grain)

The image configs hold the dataset in memory as uint8 and augment on the device, so the host
work of a step is choosing the batch's indices and gathering its rows. Timed here for a
CIFAR-10-sized array (50000 x 32 x 32 x 3, random bytes, nothing downloaded), batch 256:
`batch_indices` + a NumPy take (ours), grain's MapDataset source -> shuffle -> batch, read
by index the same way, and grain's DataLoader with its own sampler; beside them one train
step of the `cifar10_small` network (with a method that has no state updates) as the scale
the input cost is set against.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version

import jax
import numpy as np

from gje_jax import methods
from gje_jax.data import batch_indices
from gje_jax.models import build_network
from gje_jax.train import records
from gje_jax.train.optim import make_optimizer

from . import common
from .train_step import reference_method, step_time_ms


def _per_batch_ms(next_batch, n: int = 200) -> float:
    next_batch(0)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        next_batch(i)
    return 1e3 * (time.perf_counter() - t0) / n


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    import grain  # only this benchmark needs it

    images = np.random.default_rng(0).integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8)
    n, b = len(images), a.batch
    rows = [("ours: batch_indices + take", _per_batch_ms(lambda s: images[batch_indices(0, s, n, b)]))]
    ds = grain.MapDataset.source(images).shuffle(seed=0).batch(b, drop_remainder=True)
    rows.append(("grain MapDataset shuffle + batch, by index", _per_batch_ms(lambda s: ds[s % len(ds)])))
    loader = grain.DataLoader(
        data_source=images,
        sampler=grain.samplers.IndexSampler(n, shuffle=True, seed=0, num_epochs=None),
        operations=[grain.transforms.Batch(b, drop_remainder=True)],
        worker_count=0,
    )
    it = iter(loader)
    rows.append(("grain DataLoader (IndexSampler, no workers)", _per_batch_ms(lambda s: next(it))))

    from ..configs.cifar10_small import get_config

    name = reference_method()
    cfg = get_config(name)
    net = build_network(cfg.model)
    method = methods.build(cfg.method)
    data = {"x": jax.random.normal(jax.random.key(0), (b, 32, 32, 3))}
    step = step_time_ms(net, method, make_optimizer(cfg.optim, 100), data)
    table = [[what, f"{ms:.3f}", f"{100 * ms / step:.2f}%"] for what, ms in rows]
    table.append([f"cifar10_small train step ({name}, batch {b})", f"{step:.1f}", "100%"])
    common.report(
        "Input pipeline: host cost of one batch",
        f"{records.provenance()} grain {version('grain')}.",
        ["what", "ms per batch", "of the train step"],
        table,
        a.out,
        f"python -m experiments.benchmarks.input_pipeline --out={a.out}",
    )


if __name__ == "__main__":
    main()
