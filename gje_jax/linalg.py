"""Cholesky-factor linear algebra built from matrix products.

Why not `jnp.linalg.cholesky` and `jax.scipy.linalg.solve_triangular`:
- XLA's batched triangular solve is slow on CPU, and jaxlib 0.10.x can deadlock on
  small machines in the gradient of batched LAPACK calls (a known hazard; see the
  README). The functions here use only matmuls, elementwise ops and short loops, so
  their forward and backward passes contain no LAPACK custom call at all.
- The N-dependent work of every density evaluation is then a single batched
  matmul with the triangular inverse W = L^{-1} ([K, D, D], computed once per
  component), which is what sklearn does per component and what runs at the
  matmul ceiling on CPU, GPU and TPU.

Algorithms (recursive 2x2 blocking, both O(n^3) and matmul-rich):
  inv([[A, 0], [C, B]]) = [[A^-1, 0], [-B^-1 C A^-1, B^-1]]
  cholesky([[A, .], [C, B]]) = [[L_A, 0], [C L_A^-T, cholesky(B - C L_A^-T L_A^-1 C^T)]]
with a row-by-row loop below `_BASE` rows. Triangular inversion by this blocking is
forward stable (error ~ cond(L) * eps), and tests compare it with LAPACK solves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from gje_jax import _validation as v

_BASE = 16  # Below this size the row loop is cheaper than another level of blocking.
LOG_2PI = math.log(2.0 * math.pi)


def _check_square(a: jax.Array, name: str) -> None:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must have shape [..., n, n], got {tuple(a.shape)}.")


def _phi(x: jax.Array) -> jax.Array:
    """Lower triangle with the diagonal halved (the Cholesky derivative's projector)."""
    return jnp.tril(x) - 0.5 * x * jnp.eye(x.shape[-1], dtype=x.dtype)


def _mT(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _tril_inverse_small(l: jax.Array) -> jax.Array:
    """Row-by-row forward substitution for W = L^{-1}; [..., b, b], b small."""
    n = l.shape[-1]
    eye = jnp.eye(n, dtype=l.dtype)

    def body(i, x):
        row = lax.dynamic_index_in_dim(l, i, axis=-2, keepdims=False)  # [..., b]
        # Rows >= i of x are still zero, so row @ x only sums j < i.
        acc = jnp.einsum("...j,...jk->...k", row, x)
        diag = lax.dynamic_index_in_dim(row, i, axis=-1, keepdims=True)
        new = (lax.dynamic_index_in_dim(eye, i, axis=0, keepdims=False) - acc) / diag
        return lax.dynamic_update_index_in_dim(x, new, i, axis=-2)

    return lax.fori_loop(0, n, body, jnp.zeros_like(l))


def _pad_identity(a: jax.Array, n_pad: int) -> jax.Array:
    n = a.shape[-1]
    if n_pad == n:
        return a
    widths = [(0, 0)] * (a.ndim - 2) + [(0, n_pad - n), (0, n_pad - n)]
    eye_tail = jnp.diag(jnp.concatenate([jnp.zeros(n, a.dtype), jnp.ones(n_pad - n, a.dtype)]))
    return jnp.pad(a, widths) + eye_tail


def _diagonal_blocks(a: jax.Array, m: int, s: int) -> jax.Array:
    """[..., m*s, m*s] -> [..., m, s, s], the m diagonal blocks of size s."""
    r = a.reshape(a.shape[:-2] + (m, s, m, s))
    return jnp.moveaxis(jnp.diagonal(r, axis1=-4, axis2=-2), -1, -3)


@jax.custom_jvp
@jax.jit  # One compiled program per shape, also when called eagerly (Colab, tests).
def _tril_inverse(l: jax.Array) -> jax.Array:
    n = l.shape[-1]
    if n <= _BASE:
        return _tril_inverse_small(l)
    # Invert all 2^levels diagonal blocks in one batched loop, then merge pairs of
    # neighbours level by level: one loop and `levels` batched matmuls in all, which
    # keeps compile time flat in n.
    levels = math.ceil(math.log2(n / _BASE))
    m = 2**levels
    b = -(-n // m)
    lp = _pad_identity(l, b * m)
    inv = _tril_inverse_small(_diagonal_blocks(lp, m, b))  # [..., m, b, b]
    s = b
    while m > 1:
        p = m // 2
        # C blocks of each pair: rows of the second block, columns of the first.
        r = lp.reshape(lp.shape[:-2] + (p, 2, s, p, 2, s))
        c = jnp.moveaxis(jnp.diagonal(r, axis1=-6, axis2=-3), -1, -5)[..., 1, :, 0, :]  # [..., p, s, s]
        a_inv, b_inv = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        lower_left = -(b_inv @ (c @ a_inv))
        top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
        bottom = jnp.concatenate([lower_left, b_inv], axis=-1)
        inv = jnp.concatenate([top, bottom], axis=-2)  # [..., p, 2s, 2s]
        m, s = p, 2 * s
    return inv[..., 0, :n, :n]


@_tril_inverse.defjvp
def _tril_inverse_jvp(primals, tangents):
    (l,), (dl,) = primals, tangents
    w = _tril_inverse(l)
    return w, -(w @ jnp.tril(dl) @ w)


@jax.jit
def tril_inverse(scale_tril: jax.Array) -> jax.Array:
    """Inverse of lower-triangular matrices, W = L^{-1}, from matmuls only.

    Args:
      scale_tril: [..., n, n] float, lower-triangular with a nonzero diagonal; the upper
        triangle is ignored.

    Returns:
      [..., n, n] lower-triangular W with W @ L = I. Use it for one batched matmul
      (whitening); never to form a covariance inverse.

    Example:
      >>> w = tril_inverse(jnp.array([[2.0, 0.0], [1.0, 1.0]]))  # [[0.5, 0], [-0.5, 1]]
    """
    scale_tril = v.as_float(scale_tril, "scale_tril")
    _check_square(scale_tril, "scale_tril")
    return _tril_inverse(jnp.tril(scale_tril))


def _cholesky_small(a: jax.Array) -> jax.Array:
    """Column-by-column Cholesky of [..., b, b] symmetric matrices, b small."""
    n = a.shape[-1]
    idx = jnp.arange(n)

    def body(j, l):
        a_col = lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False)  # [..., b]
        l_row = lax.dynamic_index_in_dim(l, j, axis=-2, keepdims=False)  # [..., b]
        # Columns >= j of l are still zero, so this subtracts sum_{k<j} L_ik L_jk.
        col = a_col - jnp.einsum("...ik,...k->...i", l, l_row)
        pivot = lax.dynamic_index_in_dim(col, j, axis=-1, keepdims=True)
        # A non-positive pivot means "not positive definite": NaN, as LAPACK does.
        d = jnp.sqrt(jnp.where(pivot > 0, pivot, jnp.nan))
        col = jnp.where(idx > j, col / d, jnp.where(idx == j, d, 0.0))
        return lax.dynamic_update_index_in_dim(l, col, j, axis=-1)

    return lax.fori_loop(0, n, body, jnp.zeros_like(a))


@jax.custom_jvp
@jax.jit
def _cholesky(a: jax.Array) -> jax.Array:
    n = a.shape[-1]
    if n <= _BASE:
        return _cholesky_small(a)
    # Right-looking blocked Cholesky: one loop over block columns, each a small
    # factorisation, a panel matmul and a rank-b update of the trailing matrix.
    b = max(_BASE, -(-n // 16))
    m = -(-n // b)
    ap = _pad_identity(a, m * b)
    rows = jnp.arange(m * b)

    def body(j, carry):
        a_cur, l = carry
        start = j * b
        a_jj = lax.dynamic_slice_in_dim(lax.dynamic_slice_in_dim(a_cur, start, b, axis=-2), start, b, axis=-1)
        l_jj = _cholesky_small(a_jj)
        w_jj = _tril_inverse_small(l_jj)
        panel = lax.dynamic_slice_in_dim(a_cur, start, b, axis=-1) @ _mT(w_jj)  # [..., n, b]
        below = jnp.where((rows >= start + b)[:, None], panel, 0.0)
        col = jnp.where(((rows >= start) & (rows < start + b))[:, None], panel, 0.0) + below
        # panel rows of block j equal A_jj L_jj^-T = L_jj, so `col` is the factor's column.
        l = lax.dynamic_update_slice_in_dim(l, col, start, axis=-1)
        a_cur = a_cur - below @ _mT(below)
        return a_cur, l

    _, l = lax.fori_loop(0, m, body, (ap, jnp.zeros_like(ap)))
    return jnp.tril(l[..., :n, :n])


@_cholesky.defjvp
def _cholesky_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    l = _cholesky(a)
    w = _tril_inverse(l)
    da = 0.5 * (da + _mT(da))
    return l, l @ _phi(w @ da @ _mT(w))


@jax.jit
def cholesky(cov: jax.Array) -> jax.Array:
    """Lower Cholesky factor L of symmetric positive-definite matrices (Sigma = L L^T).

    `cov` is symmetrised first, (cov + cov^T) / 2, so gradients follow the usual
    convention for symmetric inputs. Like LAPACK, a matrix that is not positive
    definite in floating point gives NaN entries rather than an error, because values
    cannot be inspected under jit: regularise first (`gje_jax.regularize`) and check
    concrete inputs with `GaussianMixture.from_covariances`.

    Args:
      cov: [..., n, n] float.

    Returns:
      [..., n, n] lower-triangular factor with a positive diagonal.

    Example:
      >>> cov = jnp.array([[4.0, 2.0], [2.0, 3.0]])
      >>> L = gje_jax.linalg.cholesky(cov)
      >>> bool(jnp.allclose(L @ L.T, cov, atol=1e-5)), bool(jnp.isnan(gje_jax.linalg.cholesky(-jnp.eye(2))).any())
      (True, True)
    """
    cov = v.as_float(cov, "cov")
    _check_square(cov, "cov")
    return _cholesky(0.5 * (cov + _mT(cov)))


def solve_tril(scale_tril: jax.Array, b: jax.Array) -> jax.Array:
    """Solves L x = b for lower-triangular L by one matmul with L^{-1}.

    Args:
      scale_tril: [..., n, n].
      b: [..., n, m] right-hand sides (batch dims broadcast).

    Returns:
      [..., n, m].

    Example:
      >>> L = jnp.array([[2.0, 0.0], [1.0, 1.0]])
      >>> x = gje_jax.linalg.solve_tril(L, jnp.array([[2.0], [3.0]]))
      >>> x.tolist()                                               # L x = b
      [[1.0], [2.0]]
    """
    return tril_inverse(scale_tril) @ v.as_float(b, "b")


def half_logdet(scale_tril: jax.Array) -> jax.Array:
    """sum_i log L_ii = 1/2 log|L L^T|. [..., n, n] -> [...].

    Example:
      >>> L = jnp.linalg.cholesky(jnp.array([[4.0, 2.0], [2.0, 3.0]]))
      >>> round(float(gje_jax.linalg.half_logdet(L)), 4) == round(0.5 * float(jnp.log(8.0)), 4)   # 1/2 log|L L^T|
      True
    """
    return jnp.sum(jnp.log(jnp.diagonal(scale_tril, axis1=-2, axis2=-1)), axis=-1)


def scale_tril_from_unconstrained(raw: jax.Array, floor: float = 1e-4) -> jax.Array:
    """Cholesky parameterisation L = tril(A, -1) + diag(softplus(diag A) + floor).

    Args:
      raw: [..., n, n] unconstrained parameters A (the upper triangle is ignored).
      floor: minimum diagonal entry, so the covariance is never singular.

    Returns:
      [..., n, n] lower-triangular factor with diagonal > floor.

    Example:
      >>> L = gje_jax.linalg.scale_tril_from_unconstrained(jnp.zeros((3, 3)), floor=1e-4)
      >>> bool(jnp.all(jnp.diag(L) > 0)), bool(jnp.all(jnp.triu(L, 1) == 0))
      (True, True)
    """
    raw = v.as_float(raw, "raw")
    _check_square(raw, "raw")
    diag = jax.nn.softplus(jnp.diagonal(raw, axis1=-2, axis2=-1)) + floor
    return jnp.tril(raw, -1) + diag[..., None] * jnp.eye(raw.shape[-1], dtype=raw.dtype)


def unconstrained_from_scale_tril(scale_tril: jax.Array, floor: float = 1e-4) -> jax.Array:
    """Inverse of `scale_tril_from_unconstrained` (diagonal must exceed `floor`).

    Example:
      >>> L = jnp.array([[2.0, 0.0], [0.5, 1.0]])
      >>> raw = gje_jax.linalg.unconstrained_from_scale_tril(L)
      >>> bool(jnp.allclose(gje_jax.linalg.scale_tril_from_unconstrained(raw), L, atol=1e-5))   # inverse maps
      True
    """
    d = jnp.diagonal(scale_tril, axis1=-2, axis2=-1) - floor
    inv_softplus = d + jnp.log(-jnp.expm1(-d))  # log(exp(d) - 1), stable for large d.
    n = scale_tril.shape[-1]
    return jnp.tril(scale_tril, -1) + inv_softplus[..., None] * jnp.eye(n, dtype=scale_tril.dtype)
