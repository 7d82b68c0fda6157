"""Resampling schemes for particle systems (the SMC memory bank, METHOD section 7).

Each scheme is a pure function `(key, log_weights [M], num) -> indices [num] int32`
with static shapes, jit- and vmap-safe. Weights are given as (unnormalised)
log-weights; entries of -inf are never drawn.

- `multinomial`: num i.i.d. draws from Cat(w).
- `stratified`: one uniform draw in each of num equal strata of [0, 1).
- `systematic`: one uniform offset shared by all num strata (lowest variance; default).
- `residual`: floor(num * w_m) copies of each m deterministically, the remaining
  num - sum floor(num * w) drawn multinomially from the residual weights.

Each is unbiased: E[count_m] = num * w_m. Unusable weights (NaN, +inf, or all -inf) are
refused by an eager call; under jit, where their values are unknown, every index is -1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gje_jax import _validation as v


def _check(log_weights: jax.Array, num: int) -> jax.Array:
    log_weights = v.as_float(log_weights, "log_weights")
    v.check_rank(log_weights, 1, "log_weights", "[M]")
    v.check_nonempty(log_weights.shape[0], f"log_weights (shape {tuple(log_weights.shape)})")
    v.check_int(num, "num", minimum=1)
    return log_weights


def _or_invalid(log_weights: jax.Array, idx: jax.Array) -> jax.Array:
    """idx, or -1 everywhere when the weights are unusable (NaN, +inf, or all -inf): eager
    calls refuse such weights; under jit, where values are unknown, -1 marks the draw as
    invalid instead of returning plausible indices (jnp.take(x, idx, mode="fill") then
    gives the fill value, not a particle)."""
    ok = ~jnp.any(jnp.isnan(log_weights) | (log_weights == jnp.inf)) & jnp.any(jnp.isfinite(log_weights))
    return jnp.where(ok, idx, -1).astype(jnp.int32)


def normalized_weights(log_weights: jax.Array) -> jax.Array:
    """softmax(log_weights): [M] -> [M], summing to one.

    Example:
      >>> gje_jax.remedies.resampling.normalized_weights(jnp.log(jnp.array([1.0, 3.0]))).round(4).tolist()
      [0.25, 0.75]
    """
    return jax.nn.softmax(_check(log_weights, 1))


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size 1 / sum_m w_m^2 of normalised weights, computed in the log
    domain: exp(2 logsumexp(l) - logsumexp(2 l)). [M] -> [] in [1, M].

    Example:
      >>> float(gje_jax.remedies.resampling.ess(jnp.zeros(8))), round(float(gje_jax.remedies.resampling.ess(jnp.array([0.0, -jnp.inf, -jnp.inf]))), 4)
      (8.0, 1.0)
    """
    lw = _check(log_weights, 1)
    return jnp.exp(2.0 * jax.nn.logsumexp(lw) - jax.nn.logsumexp(2.0 * lw))


def _inverse_cdf(log_weights: jax.Array, u: jax.Array) -> jax.Array:
    """Indices m with cdf_{m-1} <= u < cdf_m, for sorted or unsorted u in [0, 1)."""
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    cdf = cdf / cdf[-1]  # Exactly 1 at the end despite float32 rounding of the sum.
    idx = jnp.searchsorted(cdf, u, side="right")
    # A zero-weight tail can share the final cdf value 1.0; searchsorted then never
    # lands there because u < 1. Clip guards u rounding up to 1.
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


@v.finite_args(log_weights=("log_weights",))
@functools.partial(jax.jit, static_argnames=("num",))
def multinomial(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
    """num i.i.d. indices from Cat(softmax(log_weights)). -> [num] int32.

    Example:
      >>> idx = gje_jax.remedies.resampling.multinomial(jax.random.key(0), jnp.array([0.0, -jnp.inf, 0.0]), 6)
      >>> idx.shape, bool(jnp.all(idx != 1))                      # zero weights are never drawn
      ((6,), True)
    """
    lw = _check(log_weights, num)
    return _or_invalid(lw, jax.random.categorical(key, lw, shape=(num,)))


@v.finite_args(log_weights=("log_weights",))
@functools.partial(jax.jit, static_argnames=("num",))
def stratified(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
    """u_i = (i + U_i) / num with independent U_i ~ U[0, 1). -> [num] int32 (sorted).

    Example:
      >>> idx = gje_jax.remedies.resampling.stratified(jax.random.key(0), jnp.log(jnp.array([0.5, 0.5])), 8)
      >>> idx.shape, bool(jnp.all(jnp.diff(idx) >= 0))            # sorted
      ((8,), True)
    """
    lw = _check(log_weights, num)
    u = (jnp.arange(num, dtype=lw.dtype) + jax.random.uniform(key, (num,), lw.dtype)) / num
    return _or_invalid(lw, _inverse_cdf(lw, u))


@v.finite_args(log_weights=("log_weights",))
@functools.partial(jax.jit, static_argnames=("num",))
def systematic(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
    """u_i = (i + U) / num with one U ~ U[0, 1). Each count is floor or ceil of num * w_m.
    -> [num] int32 (sorted).

    Example:
      >>> idx = gje_jax.remedies.resampling.systematic(jax.random.key(3), jnp.log(jnp.array([0.7, 0.2, 0.1])), 10)
      >>> jnp.bincount(idx, length=3).tolist()                     # each count floor or ceil of 10 w
      [7, 2, 1]
    """
    lw = _check(log_weights, num)
    u = (jnp.arange(num, dtype=lw.dtype) + jax.random.uniform(key, (), lw.dtype)) / num
    return _or_invalid(lw, _inverse_cdf(lw, u))


@v.finite_args(log_weights=("log_weights",))
def residual_counts(log_weights: jax.Array, num: int) -> jax.Array:
    """The deterministic part of residual resampling: floor(num * w_m). [M] -> [M] int32.

    Example:
      >>> gje_jax.remedies.resampling.residual_counts(jnp.log(jnp.array([0.55, 0.45])), 4).tolist()
      [2, 1]
    """
    lw = _check(log_weights, num)
    return jnp.floor(num * jax.nn.softmax(lw)).astype(jnp.int32)


@v.finite_args(log_weights=("log_weights",))
@functools.partial(jax.jit, static_argnames=("num",))
def residual(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
    """floor(num * w_m) copies of each m, then multinomial draws from the residual
    weights num * w_m - floor(num * w_m) for the remaining slots. -> [num] int32.

    Example:
      >>> idx = gje_jax.remedies.resampling.residual(jax.random.key(0), jnp.log(jnp.array([0.5, 0.3, 0.2])), 10)
      >>> jnp.bincount(idx, length=3).tolist()                     # floor(10 w) each, exactly
      [5, 3, 2]
    """
    lw = _check(log_weights, num)
    scaled = num * jax.nn.softmax(lw)
    counts = jnp.floor(scaled)
    num_det = jnp.sum(counts).astype(jnp.int32)
    # Slot j < num_det belongs to the m whose cumulative count first exceeds j.
    slots = jnp.arange(num)
    det = jnp.searchsorted(jnp.cumsum(counts), slots.astype(lw.dtype), side="right")
    det = jnp.clip(det, 0, lw.shape[0] - 1)
    rest = scaled - counts
    # All-zero residuals (every num * w_m an integer) leave no slot to fill; the guard
    # keeps the logits finite.
    rest_logits = jnp.where(rest > 0, jnp.log(jnp.where(rest > 0, rest, 1.0)), -jnp.inf)
    rest_logits = jnp.where(jnp.any(rest > 0), rest_logits, lw)
    extra = jax.random.categorical(key, rest_logits, shape=(num,))
    return _or_invalid(lw, jnp.where(slots < num_det, det, extra))


SCHEMES = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get_scheme(name: str):
    """The resampling function named `name` (one of SCHEMES).

    Example:
      >>> fn = gje_jax.remedies.resampling.get_scheme("systematic")
      >>> fn(jax.random.key(0), jnp.log(jnp.array([0.5, 0.25, 0.25])), 4).tolist()
      [0, 0, 1, 2]
    """
    if name not in SCHEMES:
        raise ValueError(f"Unknown resampling scheme {name!r}; valid: {sorted(SCHEMES)}.")
    return SCHEMES[name]
