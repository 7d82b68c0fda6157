"""Calibration of a conditional density p(t | c), scored on held-out pairs from samples.

A predictive density is calibrated when its level-a regions hold a fraction a of the
targets. Two probability integral transforms (PIT) make that one uniformity check each:
- highest-density regions (any d_t): u_n = P_s[log p(s | c_n) > log p(t_n | c_n)], the
  fraction of the model's own samples s ~ p(. | c_n) denser than the target; t_n lies in
  the level-a HPD region iff u_n <= a;
- central intervals (d_t = 1): u_n = P_s[s <= t_n], the ordinary PIT; t_n lies in the
  central level-a interval iff |u_n - 1/2| <= a / 2.
Under calibration u is uniform on [0, 1], so coverage(a) = a at every level; the expected
calibration error (ECE) is the mean |coverage(a) - a| over the levels. Every function is
pure and jit-safe; the densities are `ConditionalMixture` / `DiagonalConditionalMixture`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gje_jax import _validation as v
from gje_jax._mahalanobis import CHUNK_ELEMENTS

LEVELS = (0.5, 0.8, 0.9, 0.95)


def _draws_in_chunks(cond, key, num_samples: int, per_draw):
    """Sum over num_samples draws s ~ p(. | c_n) of per_draw(s [N, b, d_t]) -> [N], taken b
    draws at a time so that no more than about 4 CHUNK_ELEMENTS of [N, b, K] live at once (a
    bank of thousands of components times a thousand draws would not fit). Returns (sum [N],
    the number of draws, num_samples rounded up to a multiple of b)."""
    n, k, d = cond.means.shape
    b = max(1, min(num_samples, 4 * CHUNK_ELEMENTS // max(1, n * k * max(d, 2))))
    chunks = -(-num_samples // b)

    def chunk(i):
        return per_draw(cond.sample(jax.random.fold_in(key, i), b))

    total = jnp.sum(jax.lax.map(chunk, jnp.arange(chunks)), axis=0)
    return total, chunks * b


def hpd_pit(cond, t: jax.Array, key: jax.Array, num_samples: int = 1000) -> jax.Array:
    """u_n = fraction of draws from p(. | c_n) with a higher density than t_n.

    cond: a conditional mixture over N queries; t: [N, d_t]. Returns [N] float32 in [0, 1],
    from num_samples draws (rounded up to a whole number of memory-bounded chunks).

    Example:
      >>> cond = gje_jax.DiagonalConditionalMixture(jnp.zeros((2, 1)), jnp.zeros((2, 1, 1)), jnp.ones((2, 1, 1)))
      >>> u = gje_jax.calibration.hpd_pit(cond, jnp.array([[0.0], [5.0]]), jax.random.key(0), 200)
      >>> u.tolist()       # the mode: no sample is denser; 5 std away: every sample is
      [0.0, 1.0]
    """
    num_samples = v.check_int(num_samples, "num_samples", minimum=1)
    log_p_t = cond.log_prob(t)  # validates t against cond

    def denser(s):  # [N, b, d_t] -> [N] count of draws denser than the target
        log_p_s = jax.vmap(cond.log_prob, in_axes=1, out_axes=1)(s)  # [N, b]
        return jnp.sum(log_p_s > log_p_t[:, None], axis=1)

    count, total = _draws_in_chunks(cond, key, num_samples, denser)
    return count / total


def central_pit(cond, t: jax.Array, key: jax.Array, num_samples: int = 1000) -> jax.Array:
    """u_n = fraction of draws from p(. | c_n) at or below t_n (d_t = 1 only).

    cond: a conditional mixture with d_t = 1 over N queries; t: [N, 1]. Returns [N] in [0, 1],
    from num_samples draws (rounded up as in `hpd_pit`).

    Example:
      >>> cond = gje_jax.DiagonalConditionalMixture(jnp.zeros((2, 1)), jnp.zeros((2, 1, 1)), jnp.ones((2, 1, 1)))
      >>> gje_jax.calibration.central_pit(cond, jnp.array([[-5.0], [5.0]]), jax.random.key(0), 200).tolist()
      [0.0, 1.0]
    """
    num_samples = v.check_int(num_samples, "num_samples", minimum=1)
    if cond.dim != 1:
        raise ValueError(f"central_pit needs 1-D targets (d_t = 1), got d_t = {cond.dim}; use hpd_pit.")
    cond.log_prob(t)  # the same shape and value checks as the density
    count, total = _draws_in_chunks(cond, key, num_samples, lambda s: jnp.sum(s[..., 0] <= t, axis=1))
    return count / total


def _levels(levels) -> jax.Array:
    levels = np.asarray(levels, np.float64)
    if levels.ndim != 1 or not len(levels) or not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"levels must be a non-empty list of values in (0, 1), got {levels.tolist()}.")
    return jnp.asarray(levels, jnp.float32)


def hpd_coverage(u: jax.Array, levels=LEVELS) -> jax.Array:
    """Fraction of targets inside each level-a HPD region, from u = hpd_pit(...): [L].

    Example:
      >>> gje_jax.calibration.hpd_coverage(jnp.array([0.1, 0.6, 0.85, 0.99]), (0.5, 0.9)).tolist()
      [0.25, 0.75]
    """
    return jnp.mean(u[:, None] <= _levels(levels)[None, :], axis=0)


def central_coverage(u: jax.Array, levels=LEVELS) -> jax.Array:
    """Fraction of targets inside each central level-a interval, from u = central_pit(...): [L].

    Example:
      >>> gje_jax.calibration.central_coverage(jnp.array([0.02, 0.4, 0.55, 0.97]), (0.5, 0.9)).tolist()
      [0.5, 0.5]
    """
    return jnp.mean(jnp.abs(u[:, None] - 0.5) <= _levels(levels)[None, :] / 2, axis=0)


def ece(coverage: jax.Array, levels=LEVELS) -> jax.Array:
    """Expected calibration error: mean over levels of |coverage(a) - a|. coverage: [L] -> [].

    Example:
      >>> round(float(gje_jax.calibration.ece(jnp.array([0.4, 0.9]), (0.5, 0.8))), 6)
      0.1
    """
    return jnp.mean(jnp.abs(coverage - _levels(levels)))


def pit_histogram(u: jax.Array, bins: int = 10) -> jax.Array:
    """Counts of u in `bins` equal bins of [0, 1], normalised to a density (1 everywhere for a
    calibrated model): [bins].

    Example:
      >>> gje_jax.calibration.pit_histogram(jnp.array([0.1, 0.3, 0.6, 0.9]), bins=2).tolist()
      [1.0, 1.0]
    """
    bins = v.check_int(bins, "bins", minimum=1)
    idx = jnp.clip(jnp.floor(u * bins).astype(jnp.int32), 0, bins - 1)
    return jnp.bincount(idx, length=bins) * (bins / u.shape[0])


__all__ = ["LEVELS", "central_coverage", "central_pit", "ece", "hpd_coverage", "hpd_pit", "pit_histogram"]
