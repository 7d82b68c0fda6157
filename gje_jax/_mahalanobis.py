"""The Mahalanobis kernels behind the mixtures (gje_jax.mixture) and the SMC bank
(gje_jax.remedies.smc): chunked whitened distances, their hand-written reverse-mode rules, the
per-component log-densities, and the shape checks the densities share.

Package-internal: the public entry points are gje_jax.mixture (GaussianMixture,
ConditionalMixture, component_log_probs) and gje_jax.remedies.smc.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from gje_jax import _validation as v
from gje_jax import linalg

# Whitened residuals (float32) per chunk in the forward pass, 8 MiB; the gradient's chunks
# are half that. Chunks reuse cache-resident buffers (fresh large buffers cost page faults
# on CPU), but a chunk's GEMM wants many rows and each chunk costs a loop step. 16 MiB is
# slower; 4 MiB is as fast or faster (experiments/benchmarks/choices.py) but would change
# the float summation order, so every published number, for a few percent.
CHUNK_ELEMENTS = 1 << 21


def map_over_rows(fn, x: jax.Array, rows_per_chunk: int) -> jax.Array:
    """Applies fn([n, ...] -> [n, ...]) to x in row chunks with lax.map, output [N, ...]."""
    n = x.shape[0]
    if rows_per_chunk >= n:
        return fn(x)
    out = lax.map(fn, _chunked(x, rows_per_chunk))
    return out.reshape((-1,) + out.shape[2:])[:n]


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, D] x [m, D] -> [n, m] squared Euclidean distances, by the expanded square (one
    matmul, no [n, m, D] array), clamped at 0 against its float32 cancellation."""
    return jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T, 0.0)


def _chunked(x: jax.Array, rows: int) -> jax.Array:
    """[N, ...] -> [ceil(N / rows), rows, ...], zero-padded at the end."""
    n = x.shape[0]
    num = -(-n // rows)
    return jnp.pad(x, [(0, num * rows - n)] + [(0, 0)] * (x.ndim - 1)).reshape((num, rows) + x.shape[1:])


def _sum_of_squares(y: jax.Array, axis: int, shift: jax.Array | None = None) -> jax.Array:
    """sum((y - shift)^2) over `axis`: the distances' last pass over [n, K, D] residuals.

    shift (optional) broadcasts against y and has y's length along `axis`.

    On CPU by pairwise halving (`_pairwise_sum_of_squares`), other backends by jnp.sum
    (`_reduced_sum_of_squares`): XLA's CPU reduce over a short axis is slower where K is
    large and D short, and the same elsewhere (experiments/benchmarks/choices.py).
    """
    args = (y,) if shift is None else (y, shift)
    cpu = functools.partial(_pairwise_sum_of_squares, axis=axis)
    other = functools.partial(_reduced_sum_of_squares, axis=axis)
    return lax.platform_dependent(*args, cpu=cpu, default=other)


def _reduced_sum_of_squares(y, shift=None, *, axis):
    return jnp.sum(jnp.square(y if shift is None else y - shift), axis)


def _pairwise_sum_of_squares(y, shift=None, *, axis):
    """Slices are added level by level, which XLA fuses with the shift and the square into one
    elementwise pass after the GEMM. The shift and the square apply to the first level's
    slices, not before slicing: XLA's CPU fusion materialised an array that two slices read
    (timed in experiments/benchmarks/choices.py)."""

    def part(lo, hi):
        a = lax.slice_in_dim(y, lo, hi, axis=axis)
        if shift is not None:
            a = a - lax.slice_in_dim(shift, lo, hi, axis=axis)
        return jnp.square(a)

    def halve(x, fn):  # fn(first half) + fn(second half), with an odd last slice kept
        n = x.shape[axis]
        h = n // 2
        head = fn(0, h) + fn(h, 2 * h)
        return jnp.concatenate([head, fn(2 * h, n)], axis) if n % 2 else head

    x = halve(y, part) if y.shape[axis] > 1 else part(0, 1)
    while x.shape[axis] > 1:
        x = halve(x, functools.partial(lax.slice_in_dim, x, axis=axis))
    return jnp.squeeze(x, axis)


def rows_per_chunk(k: int, d: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, k * d))


@v.finite_args("z", "means", factors=("scale_tril",))
@functools.partial(jax.jit, static_argnames=("chunk_elements",))
def component_log_probs(
    z: jax.Array,
    means: jax.Array,
    scale_tril: jax.Array,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[jax.Array, jax.Array]:
    """log N(z_n | mu_k, L_k L_k^T) for every point and component.

    Args:
      z: [N, D] points.
      means: [K, D].
      scale_tril: [K, D, D] lower Cholesky factors.
      chunk_elements: bound on K * rows * D per chunk of the whitened residuals (half that
        in the gradient).

    Returns:
      (log_probs [N, K], mahalanobis [N, K]) in float32, the squared distances
      |L_k^{-1}(z_n - mu_k)|^2 included for diagnostics.

    Example:
      >>> log_probs, maha = gje_jax.component_log_probs(jnp.zeros((4, 2)), jnp.zeros((3, 2)), jnp.stack([jnp.eye(2)] * 3))
      >>> log_probs.shape, float(log_probs[0, 0]).__round__(4)   # log N(0 | 0, I) = -log(2 pi)
      ((4, 3), -1.8379)
      >>> maha.max().item()
      0.0
    """
    means, scale_tril = v.as_float(means, "means"), v.as_float(scale_tril, "scale_tril")
    v.check_rank(means, 2, "means", "[K, D]")
    check_params(jnp.zeros(means.shape[:1], means.dtype), means, scale_tril)
    k, d = means.shape
    z = check_points(z, d, "z")
    log_norm = -linalg.half_logdet(scale_tril) - 0.5 * d * linalg.LOG_2PI  # [K]
    maha = distances(z, means, scale_tril, None, chunk_elements)
    return log_norm - 0.5 * maha, maha


# From this many components on, residuals are laid out [n, D, K] (component axis minor): the
# sum over D then vectorises across components; below it, [n, K, D] and a minor-axis sum.
_COMPONENT_MINOR_MIN = 8


def _residuals(zc, mat, off, k, component_minor):
    """Whitened residuals W_k (z_n - mu_k) of a chunk zc [n, D], as [n, D, K] or [n, K, D].
    mat: [D * K, D] the rows of every W_k in that order; off: [D * K] the whitened means."""
    y = zc @ mat.T - off
    d = zc.shape[1]
    return y.reshape((-1, d, k) if component_minor else (-1, k, d))


def vary_together(*xs):
    """Inside jax.shard_map, marks every x as varying over the mesh axes any of them varies
    over (a no-op elsewhere). The custom VJPs below must return each cotangent with its
    input's type, and the cotangent of a replicated factor from a sharded batch varies; this
    way the transpose of the cast (a psum) is JAX's own, outside the custom rule."""
    have = [_varying_axes(x) for x in xs]
    axes = set().union(*have)
    return tuple(_pcast_varying(x, tuple(sorted(axes - h))) if axes - h else x for x, h in zip(xs, have))


def _varying_axes(x) -> set:
    t = jax.typeof(x)
    if hasattr(t, "vma"):  # the name in some JAX versions
        return set(t.vma)
    mat = getattr(t, "manual_axis_type", None)
    return set(mat.varying) if mat is not None else set()


def _pcast_varying(x, axes: tuple):
    if hasattr(lax, "pcast"):
        return lax.pcast(x, axes, to="varying")
    return lax.pvary(x, axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _mahalanobis(z, mat, off, rows: int, k: int, component_minor: bool) -> jax.Array:
    """|W_k z_n - W_k mu_k|^2: [N, K]. z: [N, D]; mat, off: see `_residuals`; rows: points
    per chunk (half that in the gradient). One GEMM per chunk; the gradient recomputes the
    residuals chunk by chunk instead of storing them, so [N, K, D] never lives in memory."""
    d = z.shape[1]
    axis, shape = (1, (d, k)) if component_minor else (2, (k, d))
    shift = off.reshape((1,) + shape)
    # The whitened means are subtracted inside the sum of squares (see there why).
    return map_over_rows(lambda zc: _sum_of_squares((zc @ mat.T).reshape((-1,) + shape), axis, shift), z, rows)


def _mahalanobis_fwd(z, mat, off, rows, k, component_minor):
    return _mahalanobis(z, mat, off, rows, k, component_minor), (z, mat, off)


def _mahalanobis_bwd(rows, k, component_minor, res, g):
    z, mat, off = res
    n = z.shape[0]
    rows = max(1, min(rows // 2, n))  # see CHUNK_ELEMENTS
    g_axis = 1 if component_minor else 2

    def body(carry, xs):
        zc, gc = xs
        dmat_t, doff = carry
        y = _residuals(zc, mat, off, k, component_minor)
        yb = (2.0 * jnp.expand_dims(gc, g_axis) * y).reshape(zc.shape[0], -1)  # d|y|^2 / dy
        # The factor gradient is accumulated transposed, [D, K D]: the same product as
        # yb.T @ zc, but XLA's CPU GEMM runs faster with the long K D axis as the output's
        # minor one (experiments/benchmarks/choices.py).
        return (dmat_t + zc.T @ yb, doff - jnp.sum(yb, axis=0)), yb @ mat

    init = (jnp.zeros_like(mat.T), jnp.zeros_like(off))
    (dmat_t, doff), dz = lax.scan(body, init, (_chunked(z, rows), _chunked(g, rows)))
    return dz.reshape(-1, z.shape[1])[:n], dmat_t.T, doff


_mahalanobis.defvjp(_mahalanobis_fwd, _mahalanobis_bwd)


@jax.custom_vjp
def _mahalanobis_one(z: jax.Array, mean: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """K = 1: |L^{-1}(z_n - mu)|^2 by one unbatched triangular solve. z: [N, D]; mean: [D];
    scale_tril: [D, D]. Returns [N].

    Used off CPU (see `distances`): cuBLAS trsm does N*D^2 flops at close to matmul speed,
    without forming W = L^{-1}. See `_row_solver` for why it stays safe under vmap.
    """
    return _mahalanobis_one_fwd(z, mean, scale_tril)[0]


def _row_solver(trans: int):
    """solve(L [D, D], r [N, D]) -> L^{-1} r_n (trans=0) or L^{-T} r_n (trans=1) per row.

    Unbatched it is one LAPACK/cuBLAS triangular solve with N right-hand sides. Under vmap it
    never becomes a *batched* LAPACK call (whose gradients deadlock jaxlib 0.10.x on 2 cores,
    measured: two vmapped K = 1 densities in one gradient hung): a batch of right-hand sides
    folds into the rows of one solve, and a batch of factors uses matmuls with the triangular
    inverse (`linalg.tril_inverse`) instead.
    """

    def unbatched(scale_tril, r):
        # A vmap over rows: its batching rule hands LAPACK one solve with N right-hand sides in
        # the layout it runs fastest (measured faster than transposing to [D, N] ourselves).
        return jax.vmap(lambda x: jax.scipy.linalg.solve_triangular(scale_tril, x, lower=True, trans=trans))(r)

    solve = jax.custom_batching.custom_vmap(unbatched)

    @solve.def_vmap
    def _rule(axis_size, in_batched, scale_tril, r):
        l_batched, r_batched = in_batched
        if not r_batched:
            r = jnp.broadcast_to(r, (axis_size,) + r.shape)
        if not l_batched:
            return solve(scale_tril, r.reshape(-1, r.shape[-1])).reshape(r.shape), True
        w = linalg.tril_inverse(scale_tril)  # [B, D, D]
        return jnp.einsum("bed,bne->bnd" if trans else "bde,bne->bnd", w, r), True

    return solve


_solve_rows = _row_solver(0)
_solve_rows_transposed = _row_solver(1)


def _mahalanobis_one_fwd(z, mean, scale_tril):
    y = _solve_rows(scale_tril, z - mean)  # [N, D]
    return jnp.sum(y * y, axis=1), (scale_tril, y)


def _mahalanobis_one_bwd(res, g):
    scale_tril, y = res
    # r_bar = L^{-T} (2 g y): the cotangent of the residuals, one more solve.
    r_bar = _solve_rows_transposed(scale_tril, 2.0 * g[:, None] * y)
    # dL = -tril(r_bar^T y): one dense GEMM. This path runs off CPU; on CPU, row blocks that
    # skip the upper triangle ran 0-15% faster (experiments/benchmarks/choices.py), untimed
    # on GPU / TPU, where it matters.
    return r_bar, -jnp.sum(r_bar, axis=0), -jnp.tril(r_bar.T @ y)


_mahalanobis_one.defvjp(_mahalanobis_one_fwd, _mahalanobis_one_bwd)


def _whitened_distances(z: jax.Array, w: jax.Array, means: jax.Array, *, chunk_elements: int = CHUNK_ELEMENTS):
    """Squared Mahalanobis distances |W_k (z_n - mu_k)|^2 from whitening matrices W_k = L_k^{-1}.

    z: [N, D]; w: [K, D, D] lower-triangular (zero above the diagonal); means: [K, D].
    Returns [N, K] float32. Work: one [n, D] x [D, K D] GEMM per chunk of n points, chunked
    over N to at most `chunk_elements` residuals at a time, with a hand-written gradient that
    recomputes rather than stores them. (Skipping the zero upper triangles with row-blocked
    GEMMs saves flops but measured no faster on CPU.)
    """
    k, d = means.shape
    minor = k >= _COMPONENT_MINOR_MIN
    wmu = jnp.einsum("kde,ke->kd", w, means)
    if minor:
        w, wmu = jnp.swapaxes(w, 0, 1), wmu.T  # [D, K, D], [D, K]
    z, mat, off = vary_together(z, w.reshape(k * d, d), wmu.reshape(-1))
    return _mahalanobis(z, mat, off, rows_per_chunk(k, d, chunk_elements), k, minor)


def distances(z, means, scale_tril, w, chunk_elements):
    """[N, K] squared Mahalanobis distances by GEMMs with W = L^{-1} (passed as w when the
    caller already has it); on GPU and TPU, K = 1 is one triangular solve instead.

    Why no solve for K = 1 on CPU: jaxlib's LAPACK there is OpenBLAS, whose threads keep
    spinning after each call and take the cores from whatever runs next, such as the rest of
    a training step (measured in `experiments/threads.py`). The GEMM path uses XLA's threads
    only; alone it is faster or slower than the solve by shape (experiments/benchmarks/
    choices.py), which is small against what the spinning threads cost a step.
    """

    def by_gemm(z, means, scale_tril):
        wk = linalg.tril_inverse(scale_tril) if w is None else w
        return _whitened_distances(z, wk, means, chunk_elements=chunk_elements)

    if means.shape[0] > 1:
        return by_gemm(z, means, scale_tril)

    def by_solve(z, means, scale_tril):
        return _mahalanobis_one(*vary_together(z, means[0], jnp.tril(scale_tril[0])))[:, None]

    return lax.platform_dependent(z, means, scale_tril, cpu=by_gemm, default=by_solve)


def check_params(log_weights, means, scale_tril) -> None:
    v.check_rank(log_weights, 1, "log_weights", "[K]")
    v.check_rank(means, 2, "means", "[K, D]")
    v.check_rank(scale_tril, 3, "scale_tril", "[K, D, D]")
    k, d = means.shape
    if k == 0:
        raise ValueError("A mixture needs K >= 1 components, got K = 0 (means shape (0, D)).")
    if d == 0:
        raise ValueError("A mixture needs D >= 1 dimensions, got means shape (K, 0).")
    v.check_dim(log_weights.shape[0], k, f"log_weights length vs means {tuple(means.shape)}")
    if scale_tril.shape != (k, d, d):
        raise ValueError(
            f"scale_tril must have shape [K, D, D] = {(k, d, d)} to match means {tuple(means.shape)}, got {tuple(scale_tril.shape)}."
        )


def check_points(z: jax.Array, d: int, name: str) -> jax.Array:
    z = v.as_float(z, name)
    v.check_rank(z, 2, name, "[N, D]")
    if z.shape[1] != d:
        raise ValueError(f"{name} has dimension {z.shape[1]} (shape {tuple(z.shape)}) but the mixture has D = {d}.")
    v.check_finite_if_concrete(z, name)
    return z


def categorical(key: jax.Array, logits: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.categorical(key, logits, shape=shape)
