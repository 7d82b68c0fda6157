r"""Each layout choice of the kernels, timed against the alternative it was chosen over.

  python -m experiments.benchmarks.choices [--out=FILE] [--rounds=5]

The kernels' code keeps a one-line reason for each choice and points here; the timings live
in the table this script writes (experiments/benchmarks/results/choices_cpu.md on CPU). Every
row times the chosen form and its alternative in the same run, interleaved in shuffled
blocks (`common.time_blocks`), at the shapes the choice was made for; the ratio is the
alternative's time over the chosen one's (above 1: the choice is faster here), repeated
--repeats times: a range that spans 1 is "within noise".
"""

from __future__ import annotations

import argparse
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gje_jax import _mahalanobis as m
from gje_jax import linalg
from gje_jax.models.encoders import Conv3x3
from gje_jax.train import records

from . import common


def _normal(i, shape):
    return jax.random.normal(jax.random.key(i), shape, jnp.float32)


def _factors(k, d):
    a = _normal(7, (k, d, d)) / jnp.sqrt(d)
    return linalg.cholesky(a @ jnp.swapaxes(a, 1, 2) + jnp.eye(d))


def _call(f, *args):
    f = jax.jit(f)
    return lambda: f(*args)


def _distances_with(impl, z, means, l):
    """The whole chunked distance kernel (value), compiled with `impl` as the CPU sum of squares."""
    f = jax.jit(lambda z, means, l: m.distances(z, means, l, None, m.CHUNK_ELEMENTS))
    real = m._pairwise_sum_of_squares
    m._pairwise_sum_of_squares = impl  # read when the kernel is traced, so only this compile sees it
    try:
        compiled = f.lower(z, means, l).compile()
    finally:
        m._pairwise_sum_of_squares = real
    return lambda: compiled(z, means, l)


def _distance_args(n, k, d):
    return _normal(0, (n, d)), _normal(1, (k, d)), _factors(k, d)


def sum_of_squares(n, k, d):
    """Whitened distances, last pass by pairwise halving vs by jnp.sum over the short axis."""
    args = _distance_args(n, k, d)
    return _distances_with(m._pairwise_sum_of_squares, *args), _distances_with(m._reduced_sum_of_squares, *args)


def shift_position(n, k, d):
    """Whitened distances, means subtracted per slice inside the pairwise sum vs before slicing."""
    pairwise = m._pairwise_sum_of_squares
    before = lambda y, shift=None, *, axis: pairwise(y if shift is None else y - shift, axis=axis)
    args = _distance_args(n, k, d)
    return _distances_with(pairwise, *args), _distances_with(before, *args)


def _value_and_grad(chunk, z, means, l):
    f = lambda z, means, l: m.distances(z, means, l, None, chunk).sum()
    return _call(jax.value_and_grad(f, argnums=(0, 1, 2)), z, means, l)


def chunk_smaller(n, k, d):
    """Distances, value and gradient, in chunks of 8 MiB of residuals vs 4 MiB."""
    args = _distance_args(n, k, d)
    return _value_and_grad(m.CHUNK_ELEMENTS, *args), _value_and_grad(m.CHUNK_ELEMENTS // 2, *args)


def chunk_larger(n, k, d):
    """Distances, value and gradient, in chunks of 8 MiB of residuals vs 16 MiB."""
    args = _distance_args(n, k, d)
    return _value_and_grad(m.CHUNK_ELEMENTS, *args), _value_and_grad(m.CHUNK_ELEMENTS * 2, *args)


def gradient_layout(n, k, d):
    """The factor gradient accumulated transposed ([D, K D] = z^T yb) vs as yb^T z ([K D, D])."""
    z, yb = _normal(0, (n, d)), _normal(1, (n, k * d))
    return _call(lambda z, yb: z.T @ yb, z, yb), _call(lambda z, yb: yb.T @ z, z, yb)


def ones_column(n, k, d):
    """Conditional means as one GEMM of [c, 1] (offsets in the GEMM) vs a GEMM plus an offset pass."""
    dc = dt = d
    c, gain, offset = _normal(0, (n, dc)), _normal(1, (k * dt, dc)), _normal(2, (k * dt,))

    def with_ones(c, gain, offset):
        rhs = jnp.concatenate([gain, offset[:, None]], axis=1)
        return (jnp.concatenate([c, jnp.ones((n, 1), c.dtype)], axis=1) @ rhs.T).reshape(n, k, dt)

    def plus_offset(c, gain, offset):
        return (c @ gain.T + offset).reshape(n, k, dt)

    return _call(with_ones, c, gain, offset), _call(plus_offset, c, gain, offset)


def k1_gemm_vs_solve(n, k, d):
    """K = 1 on CPU: distances (value and gradient) by the whitening GEMM vs one triangular solve."""
    del k
    z, mean, l = _normal(0, (n, d)), _normal(1, (1, d)), _factors(1, d)
    gemm = lambda z, mean, l: m.distances(z, mean, l, None, m.CHUNK_ELEMENTS).sum()
    solve = lambda z, mean, l: m._mahalanobis_one(z, mean[0], l[0]).sum()
    grad = functools.partial(jax.value_and_grad, argnums=(0, 1, 2))
    return _call(grad(gemm), z, mean, l), _call(grad(solve), z, mean, l)


def tril_gradient(n, k, d):
    """The solve path's factor gradient -tril(r^T y): one dense GEMM vs row blocks (no upper triangle)."""
    del k
    r, y = _normal(0, (n, d)), _normal(1, (n, d))
    block = max(1, d // 4)

    def blocked(r, y):
        rows = [r[:, i : i + block].T @ y[:, : i + block] for i in range(0, d, block)]
        rows = [jnp.pad(b, ((0, 0), (0, d - b.shape[1]))) for b in rows]
        return -jnp.tril(jnp.concatenate(rows, axis=0))

    return _call(lambda r, y: -jnp.tril(r.T @ y), r, y), _call(blocked, r, y)


def conv3x3(n, k, d):
    """A 3x3 SAME convolution's gradient: im2col by slicing + one matmul (Conv3x3) vs nn.Conv."""
    del k
    x = _normal(0, (n, 16, 16, d))
    ours, ref = Conv3x3(d), nn.Conv(d, (3, 3), use_bias=False)

    def grad(mod):
        params = mod.init(jax.random.key(1), x[:1])
        loss = lambda p, x: jnp.sum(mod.apply(p, x) ** 2)
        return _call(jax.grad(loss, argnums=(0, 1)), params, x)

    return grad(ours), grad(ref)


# (function, where it is chosen, [(N, K, D)] it is timed at).
CHOICES = [
    (
        sum_of_squares,
        "_mahalanobis._sum_of_squares (CPU)",
        [(1024, 256, 16), (4096, 16, 64), (4096, 64, 32), (8192, 8, 256)],
    ),
    (shift_position, "_mahalanobis._pairwise_sum_of_squares", [(1024, 256, 16), (4096, 16, 64)]),
    (chunk_smaller, "_mahalanobis.CHUNK_ELEMENTS", [(1024, 256, 16), (4096, 16, 64), (4096, 64, 32)]),
    (chunk_larger, "_mahalanobis.CHUNK_ELEMENTS", [(1024, 256, 16), (4096, 16, 64), (4096, 64, 32)]),
    (gradient_layout, "_mahalanobis._mahalanobis_bwd", [(1024, 256, 16), (4096, 16, 64)]),
    (ones_column, "GaussianMixture.condition", [(4096, 16, 32), (1024, 64, 16)]),
    (k1_gemm_vs_solve, "_mahalanobis.distances (K = 1, CPU)", [(128, 1, 256), (4096, 1, 128), (4096, 1, 512)]),
    (tril_gradient, "_mahalanobis._mahalanobis_one_bwd (GPU/TPU path)", [(4096, 1, 512)]),
    (conv3x3, "models.encoders.Conv3x3 (N images of 16x16, D channels)", [(128, 0, 64)]),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="independent timings of each row (range reported)")
    a = p.parse_args()
    common.configure_allocator()
    rows = []
    for fn, where, shapes in CHOICES:
        for shape in shapes:
            chosen, alternative = fn(*shape)
            ours, alt, ratios = [], [], []
            for r in range(a.repeats):
                med, per_round = common.time_blocks({"ours": chosen, "alt": alternative}, rounds=a.rounds, seed=r)
                ours.append(med["ours"])
                alt.append(med["alt"])
                ratios.append(common.ratio(per_round, "alt"))
            verdict = (
                "chosen faster" if min(ratios) > 1 else "alternative faster" if max(ratios) < 1 else "within noise"
            )
            rows.append(
                [
                    fn.__doc__.split("\n")[0],
                    where,
                    str(shape),
                    f"{np.median(ours):.3f}",
                    f"{np.median(alt):.3f}",
                    f"{np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                    verdict,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = [
        "choice (chosen vs alternative)",
        "where",
        "(N, K, D)",
        "chosen ms",
        "alternative ms",
        f"alternative / chosen, median (range of {a.repeats})",
        "verdict",
    ]
    common.report(
        "Kernel layout choices",
        f"{records.provenance()} Device: {jax.devices()[0].device_kind}.",
        header,
        rows,
        a.out,
        f"python -m experiments.benchmarks.choices --out={a.out}",
    )


if __name__ == "__main__":
    main()
