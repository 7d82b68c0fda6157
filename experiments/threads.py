"""Thread settings that a training process needs before numpy, scipy or jax load.

On CPU, jaxlib's LAPACK calls (`jnp.linalg.eigvalsh` in the effective-rank metric of the
GJE losses, for one) run on scipy's OpenBLAS. Its threads keep spinning after each call and
take the cores from the rest of the training step. Measured on 2 cores:
- `experiments/benchmarks/train_step.py`: GJE's step ran 15-22% slower than SimCLR's,
  and between 1% faster and 3% slower with `OPENBLAS_NUM_THREADS=1`;
- `cifar10_small` with GJE: 1290-1440 against 1810-1820 images/s (SimCLR about 1780 either way).

The library's own kernels use no LAPACK on CPU. The entry points call
`default_openblas_threads()` first; a value you set yourself is kept.
"""

from __future__ import annotations

import os


def default_openblas_threads() -> str:
    """Sets OPENBLAS_NUM_THREADS=1 unless already set; returns the value in effect. Call it
    before numpy, scipy or jax is imported (OpenBLAS reads it when it loads)."""
    return os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
