"""Gaussian mixtures carried by Cholesky factors, and their conditionals.

`GaussianMixture` is the joint density p(z) = sum_k pi_k N(z | mu_k, L_k L_k^T) used by
GJE (K = 1) and GMJE (K > 1); `ConditionalMixture` is p(t | c), one mixture over the
target block per query, shared by prototype GMJE, the MDN head, GNG and the SMC bank.
Both are pytrees (flax.struct dataclasses): pass them through jit, vmap and grad.

Densities whiten residuals with W_k = L_k^{-1} in one GEMM per chunk of points, so at most
`chunk_elements` residuals ([n, K, D]) live at once, in the gradient too (it recomputes
them); nothing of size [N, K, D, D] or [N, N, D] is ever formed. On GPU and TPU a single
Gaussian (K = 1) is one triangular solve instead; on CPU no density calls LAPACK. Their
gradients are hand-written reverse-mode rules (custom VJPs): use jax.grad / jax.vjp;
forward-mode (jax.jvp, jacfwd, hessian) of a density is not supported.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gje_jax import _validation as v
from gje_jax import linalg

# Whitened residuals (float32) per chunk in the forward pass, 8 MiB; the gradient's chunks
# are half that. Chunks reuse cache-resident buffers (fresh large buffers cost page faults
# on CPU), but a chunk's GEMM wants many rows and each chunk costs a loop step. Whole
# log-density on 2 cores, ms at (N, K, D) = (1024, 256, 16) / (4096, 16, 64) / (4096, 64, 32):
# forward with 2 / 4 / 8 / 16 MiB chunks 1.28 / 1.10 / 1.02 / 0.91 (16 MiB is unchunked
# there), 1.92 / 1.80 / 1.69 / 1.87, 2.74 / 2.59 / 2.47 / 2.77 (32 MiB: 15.9); value and
# gradient with 2 / 4 / 8 MiB gradient chunks 5.2 / 4.8 / 14.0, 7.96 / 7.69 / 7.76,
# 10.9 / 10.3 / 10.8.
CHUNK_ELEMENTS = 1 << 21


def _map_over_rows(fn, x: jax.Array, rows_per_chunk: int) -> jax.Array:
    """Applies fn([n, ...] -> [n, ...]) to x in row chunks with lax.map, output [N, ...]."""
    n = x.shape[0]
    if rows_per_chunk >= n:
        return fn(x)
    out = lax.map(fn, _chunked(x, rows_per_chunk))
    return out.reshape((-1,) + out.shape[2:])[:n]


def _chunked(x: jax.Array, rows: int) -> jax.Array:
    """[N, ...] -> [ceil(N / rows), rows, ...], zero-padded at the end."""
    n = x.shape[0]
    num = -(-n // rows)
    return jnp.pad(x, [(0, num * rows - n)] + [(0, 0)] * (x.ndim - 1)).reshape((num, rows) + x.shape[1:])


def _sum_of_squares(y: jax.Array, axis: int, shift: jax.Array | None = None) -> jax.Array:
    """sum((y - shift)^2) over `axis`: the distances' last pass over [n, K, D] residuals.

    shift (optional) broadcasts against y and has y's length along `axis`.

    On CPU by pairwise halving (`_pairwise_sum_of_squares`), other backends by jnp.sum
    (`_reduced_sum_of_squares`): XLA's CPU reduce over a short axis measured slower.
    Whitened distances at (N, K, D) = (1024, 256, 16) / (4096, 16, 64) / (4096, 64, 32) /
    (8192, 8, 256): 0.73 / 1.74 / 2.11 / 20.5 ms against 1.09 / 1.84 / 2.62 / 22.3.
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
    (0.73 ms against 1.13 at (1024, 256, 16))."""

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


def _rows_per_chunk(k: int, d: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, k * d))


@v.finite_args("z", "means", factors=("scale_trils",))
@functools.partial(jax.jit, static_argnames=("chunk_elements",))
def component_log_probs(
    z: jax.Array,
    means: jax.Array,
    scale_trils: jax.Array,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[jax.Array, jax.Array]:
    """log N(z_n | mu_k, L_k L_k^T) for every point and component.

    Args:
      z: [N, D] points.
      means: [K, D].
      scale_trils: [K, D, D] lower Cholesky factors.
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
    means, scale_trils = v.as_float(means, "means"), v.as_float(scale_trils, "chols")
    v.check_rank(means, 2, "means", "[K, D]")
    _check_params(jnp.zeros(means.shape[:1], means.dtype), means, scale_trils)
    k, d = means.shape
    z = _check_points(z, d, "z")
    log_norm = -linalg.half_logdet(scale_trils) - 0.5 * d * linalg.LOG_2PI  # [K]
    maha = _distances(z, means, scale_trils, None, chunk_elements)
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


def _vary_together(*xs):
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
    return _map_over_rows(lambda zc: _sum_of_squares((zc @ mat.T).reshape((-1,) + shape), axis, shift), z, rows)


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
        # yb.T @ zc, but XLA's CPU GEMM with the long K D axis as the output's minor one ran
        # 2.5x faster (whole backward at (N, K, D) = (1024, 256, 16): 3.0 ms against 7.5).
        return (dmat_t + zc.T @ yb, doff - jnp.sum(yb, axis=0)), yb @ mat

    init = (jnp.zeros_like(mat.T), jnp.zeros_like(off))
    (dmat_t, doff), dz = lax.scan(body, init, (_chunked(z, rows), _chunked(g, rows)))
    return dz.reshape(-1, z.shape[1])[:n], dmat_t.T, doff


_mahalanobis.defvjp(_mahalanobis_fwd, _mahalanobis_bwd)


@jax.custom_vjp
def _mahalanobis_one(z: jax.Array, mean: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """K = 1: |L^{-1}(z_n - mu)|^2 by one unbatched triangular solve. z: [N, D]; mean: [D];
    scale_tril: [D, D]. Returns [N].

    Used off CPU (see `_distances`): cuBLAS trsm does N*D^2 flops at close to matmul speed,
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
    # dL = -tril(r_bar^T y): one dense GEMM (row-blocked lower-triangle-only GEMMs measured
    # 1.5x slower on CPU for D = 512).
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
    z, mat, off = _vary_together(z, w.reshape(k * d, d), wmu.reshape(-1))
    return _mahalanobis(z, mat, off, _rows_per_chunk(k, d, chunk_elements), k, minor)


def _distances(z, means, scale_trils, w, chunk_elements):
    """[N, K] squared Mahalanobis distances by GEMMs with W = L^{-1} (passed as w when the
    caller already has it); on GPU and TPU, K = 1 is one triangular solve instead.

    Why no solve for K = 1 on CPU: jaxlib's LAPACK there is OpenBLAS, whose threads keep
    spinning after each call and take the cores from whatever runs next, such as the rest of
    a training step (measured in `experiments/threads.py`). The GEMM path uses XLA's threads
    only. Alone, it ran as fast as the solve at N = 4096 (forward 0.55 ms at D = 128, 5.5
    against 5.7 at D = 512) and slower for small batches (0.23 against 0.15 ms at N = 128,
    D = 256), which is small against what the spinning threads cost a step.
    """

    def by_gemm(z, means, scale_trils):
        wk = linalg.tril_inverse(scale_trils) if w is None else w
        return _whitened_distances(z, wk, means, chunk_elements=chunk_elements)

    if means.shape[0] > 1:
        return by_gemm(z, means, scale_trils)

    def by_solve(z, means, scale_trils):
        return _mahalanobis_one(*_vary_together(z, means[0], jnp.tril(scale_trils[0])))[:, None]

    return lax.platform_dependent(z, means, scale_trils, cpu=by_gemm, default=by_solve)


def _check_params(log_weights, means, scale_trils) -> None:
    v.check_rank(log_weights, 1, "log_weights", "[K]")
    v.check_rank(means, 2, "means", "[K, D]")
    v.check_rank(scale_trils, 3, "chols", "[K, D, D]")
    k, d = means.shape
    if k == 0:
        raise ValueError("A mixture needs K >= 1 components, got K = 0 (means shape (0, D)).")
    if d == 0:
        raise ValueError("A mixture needs D >= 1 dimensions, got means shape (K, 0).")
    v.check_dim(log_weights.shape[0], k, f"log_weights length vs means {tuple(means.shape)}")
    if scale_trils.shape != (k, d, d):
        raise ValueError(
            f"chols must have shape [K, D, D] = {(k, d, d)} to match means {tuple(means.shape)}, got {tuple(scale_trils.shape)}."
        )


def _check_points(z: jax.Array, d: int, name: str) -> jax.Array:
    z = v.as_float(z, name)
    v.check_rank(z, 2, name, "[N, D]")
    if z.shape[1] != d:
        raise ValueError(f"{name} has dimension {z.shape[1]} (shape {tuple(z.shape)}) but the mixture has D = {d}.")
    v.check_finite_if_concrete(z, name)
    return z


def _categorical(key: jax.Array, logits: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.categorical(key, logits, shape=shape)


@flax.struct.dataclass
class GaussianMixture:
    """p(z) = sum_k softmax(log_weights)_k N(z | means_k, chols_k chols_k^T).

    Attributes:
      log_weights: [K] mixture log-weights (normalised on use, so logits are fine;
        -inf switches a component off).
      means: [K, D].
      chols: [K, D, D] lower-triangular Cholesky factors with positive diagonals. Eager
        calls refuse a non-positive diagonal or a non-zero upper triangle; under jit the
        upper triangle is ignored everywhere (every method reads tril(chols) only).

    K = 1 is a single Gaussian (GJE); every method runs the same code for any K.

    Example:
      >>> gm = GaussianMixture.from_covariances(jnp.zeros(2), jnp.zeros((2, 3)),
      ...                                       jnp.stack([jnp.eye(3)] * 2))
      >>> gm.log_prob(jnp.ones((5, 3))).shape
      (5,)
    """

    log_weights: jax.Array
    means: jax.Array
    chols: jax.Array

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_covariances(cls, log_weights, means, covs) -> GaussianMixture:
        """Factorises covariances [K, D, D] (no inverse). Concrete inputs are checked
        for NaN/Inf and positive definiteness, with the failing component named."""
        log_weights, means, covs = (
            v.as_float(a, n) for a, n in ((log_weights, "log_weights"), (means, "means"), (covs, "covs"))
        )
        v.check_rank(covs, 3, "covs", "[K, D, D]")
        _check_params(log_weights, means, covs)
        for a, n in ((means, "means"), (covs, "covs")):
            v.check_finite_if_concrete(a, n)
        chols = linalg.cholesky(covs)
        if v.is_concrete(chols):
            bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(chols)), axis=(1, 2)))
            if bad.size:
                raise ValueError(
                    f"covs[{int(bad[0])}] is not positive definite in float32 (components {bad.tolist()}); "
                    "add a ridge (gje_jax.regularize) before factorising."
                )
        return cls(log_weights, means, chols)

    @classmethod
    def from_unconstrained(cls, logits, means, raw_chols, floor: float = 1e-4) -> GaussianMixture:
        """Builds a mixture from unconstrained parameters (for SGD): logits [K],
        means [K, D], raw_chols [K, D, D] through `scale_tril_from_unconstrained`."""
        return cls(
            v.as_float(logits, "logits"),
            v.as_float(means, "means"),
            linalg.scale_tril_from_unconstrained(raw_chols, floor),
        )

    # ---- shape --------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def check_shapes(self) -> GaussianMixture:
        """Trace-time shape checks; returns self."""
        _check_params(self.log_weights, self.means, self.chols)
        return self

    def validate(self) -> GaussianMixture:
        """Checks shapes and, for concrete arrays, the values: NaN/Inf in the means, NaN,
        +Inf or all -inf log-weights, factors with a non-positive diagonal or a non-zero
        upper triangle. Returns self."""
        self.check_shapes()
        v.check_finite_if_concrete(self.means, "means")
        v.check_log_weights_if_concrete(self.log_weights, "log_weights")
        v.check_scale_tril_if_concrete(self.chols, "chols")
        return self

    def _tril(self) -> jax.Array:
        # The densities never read the upper triangle; neither may sampling nor moments.
        return jnp.tril(self.chols)

    def normalized_log_weights(self) -> jax.Array:
        """[K] log pi_k."""
        return jax.nn.log_softmax(self.log_weights)

    # ---- densities ----------------------------------------------------------
    def _joint_logits(self, z, chunk_elements):
        self.validate()
        z = _check_points(z, self.dim, "z")
        comp, _ = component_log_probs.unchecked(z, self.means, self.chols, chunk_elements=chunk_elements)
        return self.normalized_log_weights() + comp  # [N, K]

    def log_prob(self, z: jax.Array, *, chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
        """log p(z). z: [N, D] -> [N] float32."""
        logits = self._joint_logits(z, chunk_elements)
        if self.num_components == 1:  # one Gaussian: skip the logsumexp pass over N
            return logits[:, 0]
        return jax.nn.logsumexp(logits, axis=-1)

    def responsibilities(self, z: jax.Array, *, chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
        """Posterior component probabilities gamma_nk. z: [N, D] -> [N, K]."""
        return jax.nn.softmax(self._joint_logits(z, chunk_elements), axis=-1)

    def entropy_per_component(self) -> jax.Array:
        """[K] differential entropies of the components, D/2 log(2 pi e) + sum log L_ii."""
        return 0.5 * self.dim * (linalg.LOG_2PI + 1.0) + linalg.half_logdet(self.chols)

    def mean(self) -> jax.Array:
        """[D] mean of the mixture."""
        return jnp.einsum("k,kd->d", jnp.exp(self.normalized_log_weights()), self.means)

    def covariance(self) -> jax.Array:
        """[D, D] total covariance sum_k pi_k (Sigma_k + (mu_k - m)(mu_k - m)^T)."""
        self.validate()
        pi = jnp.exp(self.normalized_log_weights())
        centred = self.means - self.mean()
        chols = self._tril()
        within = jnp.einsum("k,kde,kfe->df", pi, chols, chols)
        return within + jnp.einsum("k,kd,ke->de", pi, centred, centred)

    # ---- sampling -----------------------------------------------------------
    def sample(self, key: jax.Array, n: int, *, chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
        """Unconditional samples: k ~ Cat(pi), z = mu_k + L_k eps. Returns [n, D]."""
        self.validate()
        n = v.check_int(n, "n", minimum=0)
        chols = self._tril()
        k_key, e_key = jax.random.split(key)
        comp = _categorical(k_key, self.normalized_log_weights(), (n,))
        eps = jax.random.normal(e_key, (n, self.dim), self.means.dtype)
        rows = _rows_per_chunk(self.num_components, self.dim, chunk_elements)

        def chunk(args):
            e, c = args[:, :-1], args[:, -1].astype(jnp.int32)
            # Every component transforms the noise (one matmul); the drawn one is kept.
            # This avoids gathering [n, D, D] factors.
            all_k = self.means[:, None, :] + jnp.einsum("kde,ne->knd", chols, e)
            return jnp.take_along_axis(all_k, c[None, :, None], axis=0)[0]

        packed = jnp.concatenate([eps, comp[:, None].astype(eps.dtype)], axis=-1)
        return _map_over_rows(chunk, packed, rows)

    # ---- conditioning and marginals -----------------------------------------
    def condition(
        self, c: jax.Array, split: int | None = None, *, chunk_elements: int = CHUNK_ELEMENTS
    ) -> ConditionalMixture:
        """p(t | c) with z = [c ; t], c = z[:split].

        Uses the block identity of the joint factor L = [[L_cc, 0], [L_tc, L_tt]]:
        m_k(c) = mu_t,k + L_tc,k L_cc,k^{-1} (c - mu_c,k), conditional factor L_tt,k,
        r_k(c) = softmax_k(log pi_k + log N(c | mu_c,k, L_cc,k L_cc,k^T)).

        Args:
          c: [N, d_c] contexts.
          split: d_c. Without it, d_c = d_t = D / 2 (the shared-encoder layout) and a `c`
            of another width is refused rather than silently re-splitting the joint.

        Returns:
          ConditionalMixture with log_weights [N, K], means [N, K, d_t], chols [K, d_t, d_t].
        """
        self.validate()
        c = v.as_float(c, "c")
        v.check_rank(c, 2, "c", "[N, d_c]")
        v.check_finite_if_concrete(c, "c")
        if split is None:
            if 2 * c.shape[1] != self.dim:
                raise ValueError(
                    f"c has {c.shape[1]} columns (shape {tuple(c.shape)}) but the joint has D = {self.dim}: without "
                    "split, d_c = d_t = D / 2 is assumed. Pass split=d_c explicitly for unequal widths."
                )
            split = c.shape[1]
        split = v.check_split(split, self.dim)
        if c.shape[1] != split:
            raise ValueError(f"c has {c.shape[1]} columns (shape {tuple(c.shape)}) but split = {split}.")
        k, d = self.num_components, self.dim
        chols = self._tril()
        l_cc = chols[:, :split, :split]
        l_tc = chols[:, split:, :split]
        l_tt = chols[:, split:, split:]
        mu_c, mu_t = self.means[:, :split], self.means[:, split:]
        w_cc = linalg.tril_inverse(l_cc)
        log_norm = -linalg.half_logdet(l_cc) - 0.5 * split * linalg.LOG_2PI
        maha = _distances(c, mu_c, l_cc, w_cc, chunk_elements)  # [N, K]
        logits = self.normalized_log_weights() + log_norm - 0.5 * maha
        # m_k(c) = b_k + G_k c with the gain G_k = L_tc,k L_cc,k^{-1} [d_t, d_c] formed once:
        # every component's conditional mean is then one [N, d_c + 1] x [d_c + 1, K d_t] GEMM
        # (c with a column of ones, so the offsets b_k ride in the GEMM instead of costing
        # another pass over the [N, K, d_t] output: 2x faster on CPU, measured).
        gain = l_tc @ w_cc
        offset = mu_t - jnp.einsum("kde,ke->kd", gain, mu_c)
        rhs = jnp.concatenate([gain.reshape(k * (d - split), split), offset.reshape(-1, 1)], axis=1)
        c1 = jnp.concatenate([c, jnp.ones((c.shape[0], 1), c.dtype)], axis=1)
        means = (c1 @ rhs.T).reshape(-1, k, d - split)
        return ConditionalMixture(jax.nn.log_softmax(logits, axis=-1), means, l_tt)

    def marginal(self, start: int, stop: int) -> GaussianMixture:
        """Marginal over z[start:stop]. A leading block reuses L directly; any other
        block re-factorises its covariance L_s L_s^T (no inverse)."""
        self.check_shapes()
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= self.dim:
            raise ValueError(f"marginal needs 0 <= start < stop <= D = {self.dim}, got start={start}, stop={stop}.")
        means = self.means[:, start:stop]
        chols = self._tril()
        if start == 0:
            return GaussianMixture(self.log_weights, means, chols[:, :stop, :stop])
        rows = chols[:, start:stop, :stop]
        return GaussianMixture(self.log_weights, means, linalg.cholesky(rows @ jnp.swapaxes(rows, -1, -2)))

    def permute(self, order) -> GaussianMixture:
        """Reorders the dimensions (static `order`, length D) and re-factorises, e.g. to
        condition c on t: `gm.permute(list(range(s, D)) + list(range(s))).condition(t)`."""
        order = np.asarray(order)
        if sorted(order.tolist()) != list(range(self.dim)):
            raise ValueError(f"order must be a permutation of range({self.dim}), got {order.tolist()}.")
        rows = self._tril()[:, order, :]
        return GaussianMixture(
            self.log_weights, self.means[:, order], linalg.cholesky(rows @ jnp.swapaxes(rows, -1, -2))
        )


@flax.struct.dataclass
class ConditionalMixture:
    """p(t | c_n) = sum_k exp(log_weights[n, k]) N(t | means[n, k], L L^T) for each query n.

    Attributes:
      log_weights: [N, K] normalised log responsibilities r_k(c_n).
      means: [N, K, d_t] conditional component means m_k(c_n).
      chols: [K, d_t, d_t] factors shared by all queries (prototype GMJE, GNG, SMC), or
        [N, K, d_t, d_t] per query (the MDN head with full covariances), or, when
        `diagonal` is True, [N, K, d_t] per-query standard deviations (the MDN head with
        diagonal covariances: no [N, K, d_t, d_t] array is ever formed).
      diagonal: static flag selecting the last layout.

    Example:
      >>> gm = gje_jax.fit_gaussian(jax.random.normal(jax.random.key(0), (500, 3)))
      >>> cond = gm.condition(jnp.zeros((4, 1)), split=1)         # 4 queries, d_t = 2
      >>> cond.mean().shape, cond.covariance().shape
      ((4, 2), (4, 2, 2))
      >>> cond.sample(jax.random.key(1), 10).shape, cond.log_prob(jnp.zeros((4, 2))).shape
      ((4, 10, 2), (4,))
      >>> weights, means = cond.modes(); weights.shape, means.shape
      ((4, 1), (4, 1, 2))
    """

    log_weights: jax.Array
    means: jax.Array
    chols: jax.Array
    diagonal: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def num_queries(self) -> int:
        return self.means.shape[0]

    @property
    def num_components(self) -> int:
        return self.means.shape[1]

    @property
    def dim(self) -> int:
        return self.means.shape[2]

    def check_shapes(self) -> ConditionalMixture:
        v.check_rank(self.log_weights, 2, "log_weights", "[N, K]")
        v.check_rank(self.means, 3, "means", "[N, K, d_t]")
        n, k, d = self.means.shape
        if self.log_weights.shape != (n, k):
            raise ValueError(
                f"log_weights shape {tuple(self.log_weights.shape)} does not match means {tuple(self.means.shape)}."
            )
        if self.diagonal:
            if self.chols.shape != (n, k, d):
                raise ValueError(
                    f"diagonal scales must have shape [N, K, d_t] = {(n, k, d)}, got {tuple(self.chols.shape)}."
                )
            return self
        v.check_rank(self.chols, (3, 4), "chols", "[K, d_t, d_t] or [N, K, d_t, d_t]")
        if self.chols.shape[-3:] != (k, d, d) or (self.chols.ndim == 4 and self.chols.shape[0] != n):
            raise ValueError(f"chols shape {tuple(self.chols.shape)} does not match means {tuple(self.means.shape)}.")
        return self

    def validate(self) -> ConditionalMixture:
        """check_shapes, then for concrete arrays the values: NaN/Inf means, NaN/+Inf or
        all -inf log-weights in a query, non-positive scales, factors that are not lower
        triangular with a positive diagonal. Returns self."""
        self.check_shapes()
        v.check_finite_if_concrete(self.means, "means")
        v.check_log_weights_if_concrete(self.log_weights, "log_weights")
        if not self.diagonal:
            v.check_scale_tril_if_concrete(self.chols, "chols")
        elif v.is_concrete(self.chols):
            v.check_finite_if_concrete(self.chols, "chols")
            with jax.ensure_compile_time_eval():
                n_bad = int(jnp.sum(self.chols <= 0))
            if n_bad:
                raise ValueError(
                    f"diagonal scales must be positive; {n_bad} are <= 0 (shape {tuple(self.chols.shape)})."
                )
        return self

    def _tril(self) -> jax.Array:
        return self.chols if self.diagonal else jnp.tril(self.chols)

    def _covs(self) -> jax.Array:
        chols = self._tril()
        return chols @ jnp.swapaxes(chols, -1, -2)

    def _component_log_probs(self, t: jax.Array) -> jax.Array:
        """log N(t_n | m_k(c_n), S_k): [N, K]."""
        resid = t[:, None, :] - self.means  # [N, K, d_t]
        if self.diagonal:
            white = resid / self.chols
            half_logdet = jnp.sum(jnp.log(self.chols), axis=-1)
        else:
            w = linalg.tril_inverse(self.chols)
            spec = "kde,nke->nkd" if self.chols.ndim == 3 else "nkde,nke->nkd"
            white = jnp.einsum(spec, w, resid)
            half_logdet = linalg.half_logdet(self.chols)
        return -0.5 * jnp.sum(white * white, -1) - half_logdet - 0.5 * self.dim * linalg.LOG_2PI

    def log_prob(self, t: jax.Array) -> jax.Array:
        """log p(t_n | c_n). t: [N, d_t] -> [N]."""
        self.validate()
        t = v.as_float(t, "t")
        v.check_rank(t, 2, "t", "[N, d_t]")
        if t.shape != (self.num_queries, self.dim):
            raise ValueError(
                f"t must have shape {(self.num_queries, self.dim)} (one target per query), got {tuple(t.shape)}."
            )
        v.check_finite_if_concrete(t, "t")
        return jax.nn.logsumexp(self.log_weights + self._component_log_probs(t), axis=-1)

    def mean(self) -> jax.Array:
        """E[t | c]: [N, d_t]."""
        self.validate()
        return jnp.einsum("nk,nkd->nd", jnp.exp(self.log_weights), self.means)

    def covariance(self) -> jax.Array:
        """Cov[t | c] = sum_k r_k (S_k + (m_k - E)(m_k - E)^T): [N, d_t, d_t]."""
        self.validate()
        r = jnp.exp(self.log_weights)
        centred = self.means - self.mean()[:, None, :]
        spread = jnp.einsum("nk,nkd,nke->nde", r, centred, centred)
        if self.diagonal:
            within = jnp.einsum("nk,nkd->nd", r, self.chols * self.chols)
            return spread + within[..., None] * jnp.eye(self.dim, dtype=within.dtype)
        covs = self._covs()
        within = jnp.einsum("nk,kde->nde", r, covs) if covs.ndim == 3 else jnp.einsum("nk,nkde->nde", r, covs)
        return within + spread

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """k ~ Cat(r(c)), t = m_k(c) + L_k eps. Returns [N, n, d_t]."""
        self.validate()
        n = v.check_int(n, "n", minimum=0)
        k_key, e_key = jax.random.split(key)
        q, k, d = self.means.shape
        comp = _categorical(k_key, self.log_weights[:, None, :], (q, n))  # [N, n]
        onehot = jax.nn.one_hot(comp, k, dtype=self.means.dtype)  # [N, n, K]
        eps = jax.random.normal(e_key, (q, n, d), self.means.dtype)
        loc = jnp.einsum("qsk,qkd->qsd", onehot, self.means)
        # Every component transforms the noise ([N, n, K, d_t], one matmul) and the drawn
        # one is kept: no [N, n, d_t, d_t] gather of factors.
        if self.diagonal:
            noise = jnp.einsum("qsk,qkd->qsd", onehot, self.chols) * eps
        else:
            spec = "kde,qse->qskd" if self.chols.ndim == 3 else "qkde,qse->qskd"
            noise = jnp.einsum("qsk,qskd->qsd", onehot, jnp.einsum(spec, self._tril(), eps))
        return loc + noise

    def add_variance(self, variance: jax.Array | float) -> ConditionalMixture:
        """The same mixture with every component covariance widened to S_k + variance * I.

        variance: [] or [N] (one per query), >= 0. Diagonal scales become
        sqrt(s^2 + variance); full factors are refactorised (K or N * K factors of
        [d_t, d_t], the layout the mixture already holds).

        Example:
          >>> cond = gje_jax.ConditionalMixture(jnp.zeros((1, 1)), jnp.zeros((1, 1, 2)), jnp.full((1, 1, 2), 3.0), diagonal=True)
          >>> cond.add_variance(16.0).chols.tolist()               # sqrt(9 + 16)
          [[[5.0, 5.0]]]
        """
        self.validate()
        var = jnp.asarray(variance, self.means.dtype)
        if var.ndim > 1 or (var.ndim == 1 and var.shape[0] != self.num_queries):
            raise ValueError(f"variance must be a scalar or [N] = [{self.num_queries}], got {tuple(var.shape)}.")
        if self.diagonal:
            per_query = var.reshape(var.shape + (1, 1))
            return self.replace(chols=jnp.sqrt(self.chols * self.chols + per_query))
        if var.ndim == 1 and self.chols.ndim == 3:  # shared factors become per-query ones
            covs = jnp.broadcast_to(self._covs(), (self.num_queries,) + self.chols.shape)
        else:
            covs = self._covs()
        eye = jnp.eye(self.dim, dtype=covs.dtype)
        var = var.reshape(var.shape + (1,) * (covs.ndim - var.ndim))
        return self.replace(chols=linalg.cholesky(covs + var * eye))

    def modes(self) -> tuple[jax.Array, jax.Array]:
        """Components ranked by responsibility: (weights [N, K], means [N, K, d_t]),
        highest weight first."""
        self.validate()
        order = jnp.argsort(-self.log_weights, axis=-1)
        weights = jnp.take_along_axis(jnp.exp(self.log_weights), order, axis=-1)
        means = jnp.take_along_axis(self.means, order[..., None], axis=1)
        return weights, means
