"""The SMC memory bank: an importance-weighted particle system of past joint embeddings
(METHOD section 7), with the kernel-mixture density it defines.

The bank holds M particles P_m [D] (stop-gradient embeddings of past steps) with
log-weights l_m and ages. It is the kernel mixture p(z) = sum_m w_m N(z | P_m, H),
w = softmax(l), with a shared kernel covariance H = L_H L_H^T (isotropic h^2 I or a
full matrix). Empty slots carry l = -inf and are never drawn or scored.

Every function is pure with static shapes (jit/vmap-safe). Kernel densities whiten
once with the [D, D] triangular inverse of L_H and form squared distances by one
[N, M] matmul (no [N, M, D] differences), chunked over the query rows.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax._mahalanobis import map_over_rows, squared_distances
from gje_jax.gaussian import regularize
from gje_jax.remedies import resampling

# Bound on rows * M elements of one distance block ([rows, M] float32, 16 MiB).
KDE_CHUNK_ELEMENTS = 1 << 22


@flax.struct.dataclass
class ParticleBank:
    """particles [M, D]; log_weights [M] (-inf = empty slot); ages [M] int32 (steps since
    insertion or resampling); num_resamples [] int32 (a counter, for logging); log_kde [M]
    (the log-density of the embeddings at each particle when it was last weighted: the
    denominator of incremental reweighting, see `reweight`).

    Example:
      >>> bank = gje_jax.remedies.smc.ParticleBank.empty(capacity=8, dim=2)
      >>> bank = gje_jax.remedies.smc.insert(bank, jnp.ones((3, 2)))
      >>> int(bank.size()), float(bank.ess())
      (3, 3.0)
    """

    particles: jax.Array
    log_weights: jax.Array
    ages: jax.Array
    num_resamples: jax.Array
    log_kde: jax.Array

    @classmethod
    def empty(cls, capacity: int, dim: int, dtype=jnp.float32) -> ParticleBank:
        if capacity < 1 or dim < 1:
            raise ValueError(f"A bank needs capacity >= 1 and dim >= 1, got capacity={capacity}, dim={dim}.")
        return cls(
            jnp.zeros((capacity, dim), dtype),
            jnp.full((capacity,), -jnp.inf, dtype),
            jnp.zeros((capacity,), jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((capacity,), dtype),
        )

    @property
    def capacity(self) -> int:
        return self.particles.shape[0]

    @property
    def dim(self) -> int:
        return self.particles.shape[1]

    @property
    def filled(self) -> jax.Array:
        """[M] bool: which slots hold a particle."""
        return jnp.isfinite(self.log_weights)

    def size(self) -> jax.Array:
        """Number of filled slots. -> [] int32."""
        return jnp.sum(self.filled).astype(jnp.int32)

    def normalized_log_weights(self) -> jax.Array:
        """log w over filled slots (-inf elsewhere); all -inf for an empty bank. -> [M]."""
        lse = jax.nn.logsumexp(self.log_weights)
        return jnp.where(self.filled, self.log_weights - jnp.where(jnp.isfinite(lse), lse, 0.0), -jnp.inf)

    def ess(self) -> jax.Array:
        """Effective sample size of the filled particles (0 for an empty bank). -> []."""
        lw = self.normalized_log_weights()
        safe = jnp.where(self.filled, lw, -jnp.inf)
        val = jnp.exp(-jax.nn.logsumexp(2.0 * safe))
        return jnp.where(self.size() > 0, val, 0.0)


def silverman_factor(num: int, dim: int) -> float:
    """Squared-bandwidth factor (4 / ((D + 2) M))^(2 / (D + 4)) of Silverman's rule, so
    H = factor * Cov for a KDE of M points in D dimensions.

    Example:
      >>> round(gje_jax.remedies.smc.silverman_factor(num=1000, dim=1), 4)   # (4 / (3 n))^(2/5) for D = 1
      0.0708
    """
    return float((4.0 / ((dim + 2) * num)) ** (2.0 / (dim + 4)))


def _silverman_traced(num: jax.Array, dim: int) -> jax.Array:
    return (4.0 / ((dim + 2) * jnp.maximum(num, 1.0))) ** (2.0 / (dim + 4))


def bank_covariance(bank: ParticleBank) -> jax.Array:
    """Weighted covariance [D, D] of the filled particles (weights w = softmax(l)); the
    identity while the bank holds fewer than two particles.

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(4, 1), jnp.array([[0.0], [2.0]]))
      >>> float(gje_jax.remedies.smc.bank_covariance(bank)[0, 0])       # two equal weights at 0 and 2
      1.0
    """
    w = jnp.exp(bank.normalized_log_weights())  # 0 at empty slots
    p = jnp.where(bank.filled[:, None], bank.particles, 0.0)
    mean = w @ p
    r = jnp.where(bank.filled[:, None], p - mean, 0.0)
    cov = (r * w[:, None]).T @ r
    return jnp.where(bank.size() >= 2, cov, jnp.eye(bank.dim, dtype=cov.dtype))


def bank_kernel_scale_tril(bank: ParticleBank, *, eps_rel: float = 1e-4, eps_abs: float = 1e-6) -> jax.Array:
    """Cholesky factor [D, D] of a kernel that follows the bank's spread: Silverman's
    factor at the bank's effective sample size times its weighted covariance,
    H = factor(ESS, D) * (bank_covariance + eps I). A bank whose weight sits on few
    particles (low ESS) gets a wider kernel, as a KDE of fewer points would.

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(4, 1), jnp.array([[0.0], [2.0]]))
      >>> L = gje_jax.remedies.smc.bank_kernel_scale_tril(bank)
      >>> round(float(L[0, 0] ** 2), 3) == round(gje_jax.remedies.smc.silverman_factor(2, 1) * 1.0001, 3)
      True
    """
    d = bank.dim
    n = jnp.where(bank.size() >= 2, bank.ess(), 1.0)
    return linalg.cholesky(_silverman_traced(n, d) * regularize(bank_covariance(bank), eps_rel, eps_abs))


def unique_particles(bank: ParticleBank) -> jax.Array:
    """Number of distinct filled particles (copies made by resampling count once). -> [] int32.

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(4, 1), jnp.array([[0.0], [0.0], [1.0]]))
      >>> int(gje_jax.remedies.smc.unique_particles(bank))
      2
    """
    # Copies are bitwise equal rows: their projections on any direction are equal; distinct
    # rows collide on a generic direction with probability zero.
    direction = jnp.cos(jnp.arange(1, bank.dim + 1, dtype=bank.particles.dtype) * 0.7071)
    proj = jnp.where(bank.filled, bank.particles @ direction, jnp.inf)
    srt = jnp.sort(proj)
    fin = jnp.isfinite(srt)
    new = jnp.concatenate([fin[:1], (srt[1:] != srt[:-1]) & fin[1:]])
    return jnp.sum(new).astype(jnp.int32)


def local_bandwidths(bank: ParticleBank, k: int, scale: float, *, floor: float = 1e-6) -> jax.Array:
    """Per-particle kernel scales of the sample-point adaptive (local) kernel, N(P_m, h_m^2 I):
    h_m = scale * r_m / sqrt(D), with r_m the distance from P_m to its k-th nearest other
    distinct filled particle, so that a kernel draw lands about scale * r_m from its centre
    (E |h xi|^2 = h^2 D). Copies made by resampling are not neighbours (distance 0); with
    fewer than k distinct neighbours the farthest one counts. Empty slots get 1. -> [M].

    A shared kernel has one width for the whole bank: on clustered embeddings in 32 D its
    draws landed between the clusters (sampling precision 0.00). Local widths follow the
    spacing of the particles where they are.

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(4, 1), jnp.array([[0.0], [1.0], [3.0]]))
      >>> gje_jax.remedies.smc.local_bandwidths(bank, k=1, scale=1.0).tolist()   # nearest neighbour's distance
      [1.0, 1.0, 2.0, 1.0]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    m, d = bank.capacity, bank.dim
    k = min(k, max(m - 1, 1))
    filled = bank.filled
    p = jax.lax.stop_gradient(bank.particles)
    p = jnp.where(
        filled[:, None], p - jnp.sum(jnp.where(filled[:, None], p, 0.0), 0) / jnp.maximum(bank.size(), 1), 0.0
    )
    sq = jnp.sum(p * p, axis=-1)

    def chunk(rows):
        rsq = jnp.sum(rows * rows, -1, keepdims=True)
        d2 = jnp.maximum(rsq + sq - 2.0 * rows @ p.T, 0.0)
        # Self, copies and empty slots are no neighbours; "same point" allows the float32
        # cancellation of the expanded square (relative 1e-6 of the squared norms).
        same = d2 <= 1e-6 * (rsq + sq)
        d2 = jnp.where(filled[None, :] & ~same, d2, jnp.inf)
        near = -jax.lax.top_k(-d2, k)[0]  # [rows, k] ascending
        finite = jnp.isfinite(near)
        far = jnp.max(jnp.where(finite, near, -jnp.inf), axis=-1)
        kth = jnp.where(finite[:, -1], near[:, -1], far)
        return jnp.where(jnp.isfinite(kth), kth, jnp.float32(d))[:, None]

    d2k = map_over_rows(chunk, p, max(1, KDE_CHUNK_ELEMENTS // m))[:, 0]
    h = scale * jnp.sqrt(d2k / d)
    return jnp.where(filled, jnp.maximum(h, floor), 1.0)


# `fit_bandwidths`' search: first one width for every coordinate, the bank's spread times
# 2^-k, k = -1 .. 12 (one batched pass over a fixed grid); then the target's width and the
# context's in turn, each over 2^(j/2), j = -2 .. 2, times the width so far. Each stage
# ends at the vertex of the parabola through its best point and neighbours in log h.
BANDWIDTH_GRID_EXPONENTS = tuple(range(-1, 13))
BANDWIDTH_REFINE_EXPONENTS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def _parabola_argmax(log_h: jax.Array, scores: jax.Array) -> jax.Array:
    """log h at the vertex of the parabola through the best of `scores` (on the uniform grid
    log_h) and its two neighbours; the best point itself at an edge or where the three are
    not concave. -> []."""
    k = jnp.argmax(scores)
    lo, hi = jnp.maximum(k - 1, 0), jnp.minimum(k + 1, scores.shape[0] - 1)
    curv = scores[lo] - 2.0 * scores[k] + scores[hi]
    concave = (lo < k) & (k < hi) & (curv < 0)
    # Offset of the vertex from k in grid steps (within half a step when k is the best).
    shift = jnp.where(concave, 0.5 * (scores[lo] - scores[hi]) / jnp.where(concave, curv, -1.0), 0.0)
    return log_h[k] + jnp.clip(shift, -1.0, 1.0) * (log_h[1] - log_h[0])


@functools.partial(jax.jit, static_argnames=("split", "num_queries"))
def fit_bandwidths(
    bank: ParticleBank, split: int, previous: jax.Array, queries: jax.Array | None = None, *, num_queries: int = 128
) -> tuple[jax.Array, jax.Array]:
    """Widths (h_c, h_t) of the kernel diag(h_c^2 I, h_t^2 I) under which the bank's kernel
    mixture predicts targets best: the mean log p(t_n | c_n) of `queries` (held-out
    points, e.g. the batch the bank has not seen), or without queries the bank's
    leave-one-out sum_i w_i log p_{-i}(t_i | c_i). z = [c ; t], c the first `split`
    coordinates.

    p(t | c) is what a bank is asked for (the conditional NLL, the calibration of
    p(t | c)). Two widths, because they do different things there: h_c sets which
    particles a context draws on, h_t how much each one's target is smeared; one width for
    both over-smeared the targets on the alignment tasks. Held-out queries, because a bank
    holds past embeddings: scored on themselves (leave-one-out) the widths came out
    narrower than what predicts the encoder's new embeddings (README, "SMC kernel widths
    fitted to the next batch").

    The search: one width for all coordinates over the bank's spread (root mean weighted
    variance per coordinate) times 2^-k, k = -1 .. 12; then h_t, then h_c, each over
    2^(j/2), j = -2 .. 2, times the width so far; every stage ends at the vertex of the
    parabola through its best width and neighbours in log h. Leave-one-out, the queries
    are num_queries slots spread evenly over the bank (weighted by their own weights) and
    copies made by resampling are the particle itself, not neighbours (a copy at distance
    0 would drive the widths to 0).

    Args:
      bank: the particles; split: d_c; previous: [2] the widths to keep when nothing can
        be scored (an empty bank; leave-one-out, a bank of copies); queries: [N, D] or
        None; num_queries: leave-one-out, how many slots score each width. The cost is
        (N or num_queries) x M x 45 exponentials.

    Returns:
      ([2] (h_c, h_t), the conditional NLL at them [], NaN when `previous` was kept).

    Example:
      >>> c = jnp.linspace(-2.0, 2.0, 400)[:, None]
      >>> t = jnp.sin(3 * c) + 0.1 * jax.random.normal(jax.random.key(0), c.shape)
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(400, 2), jnp.concatenate([c, t], 1))
      >>> (h_c, h_t), nll = gje_jax.remedies.smc.fit_bandwidths(bank, 1, jnp.ones(2))
      >>> 0.02 < float(h_t) < 0.1                                   # under the noise's 0.1, far under the spread's 1.1
      True
    """
    m, d = bank.capacity, bank.dim
    if not 0 < split < d:
        raise ValueError(f"split must be in [1, D - 1] = [1, {d - 1}], got {split}.")
    previous = v.as_float(previous, "previous")
    if previous.shape != (2,):
        raise ValueError(f"previous must have shape [2] (h_c, h_t), got {tuple(previous.shape)}.")
    dt = d - split
    filled = bank.filled
    lw = bank.normalized_log_weights()
    w = jnp.exp(lw)
    p = jax.lax.stop_gradient(bank.particles)
    # Centred on the weighted mean (small cancellation in the expanded squares below).
    mean = w @ jnp.where(filled[:, None], p, 0.0)
    p = jnp.where(filled[:, None], p - mean, 0.0)
    spread = jnp.sqrt(jnp.sum(w @ (p * p)) / d)
    if queries is None:
        q_idx = jnp.asarray(np.unique(np.linspace(0, m - 1, min(num_queries, m)).round().astype(np.int32)))
        q = p[q_idx]
    else:
        queries = v.as_float(queries, "queries")
        if queries.ndim != 2 or queries.shape[1] != d:
            raise ValueError(f"queries must have shape [N, D] with D = {d}, got {tuple(queries.shape)}.")
        q = jax.lax.stop_gradient(queries) - mean

    d2c = squared_distances(q[:, :split], p[:, :split])  # [Q, M]
    d2t = squared_distances(q[:, split:], p[:, split:])
    if queries is None:
        # The query itself and its copies (equal up to the expanded square's float32 error).
        norms = jnp.sum(q * q, -1)[:, None] + jnp.sum(p * p, -1)[None, :]
        other = filled[None, :] & (d2c + d2t > 1e-6 * norms)
        q_w = jnp.where(jnp.any(other, axis=-1) & filled[q_idx], w[q_idx], 0.0)
    else:
        other = jnp.broadcast_to(filled[None, :], d2c.shape)
        q_w = jnp.where(jnp.any(filled), jnp.ones(q.shape[0], p.dtype), 0.0)
    lw_other = jnp.where(other, lw[None, :], -jnp.inf)
    q_w = q_w / jnp.maximum(jnp.sum(q_w), 1e-30)

    def context_term(lh_c):
        return lw_other - 0.5 * jnp.exp(-2.0 * lh_c) * d2c

    def score(lh_c, lh_t, marginal=None):
        base = context_term(lh_c)
        joint = jax.nn.logsumexp(base - 0.5 * jnp.exp(-2.0 * lh_t) * d2t, axis=-1)
        marginal = jax.nn.logsumexp(base, axis=-1) if marginal is None else marginal
        ll = joint - marginal - dt * (lh_t + 0.5 * linalg.LOG_2PI)
        # A query whose neighbours all lie beyond float32's exp range scores -inf: it
        # lowers that width's score (it is counted, not dropped).
        return jnp.sum(q_w * jnp.where(q_w > 0, jnp.maximum(ll, -1e30), 0.0))

    grid = jnp.log(jnp.maximum(spread, 1e-30)) - jnp.log(2.0) * jnp.asarray(BANDWIDTH_GRID_EXPONENTS, p.dtype)
    lh = _parabola_argmax(grid, jax.lax.map(lambda x: score(x, x), grid))
    steps = jnp.log(2.0) * jnp.asarray(BANDWIDTH_REFINE_EXPONENTS, p.dtype)
    marginal = jax.nn.logsumexp(context_term(lh), axis=-1)  # h_c is fixed while h_t moves
    lh_t = _parabola_argmax(lh + steps, jax.lax.map(lambda x: score(lh, x, marginal), lh + steps))
    lh_c = _parabola_argmax(lh + steps, jax.lax.map(lambda x: score(x, lh_t), lh + steps))
    nll = -score(lh_c, lh_t)
    ok = jnp.any(q_w > 0) & (spread > 0) & jnp.isfinite(nll)
    widths = jnp.where(ok, jnp.exp(jnp.stack([lh_c, lh_t])), previous)
    return widths.astype(p.dtype), jnp.where(ok, nll, jnp.nan).astype(p.dtype)


def adaptive_tempering(log_weights: jax.Array, log_increment: jax.Array, target: float, iters: int = 40) -> jax.Array:
    """The largest exponent delta in [0, 1] for which the weights log_weights + delta *
    log_increment keep ESS >= target * (number of finite entries), by bisection (adaptive
    tempered SMC). 1 when delta = 1 keeps it; 0 when even delta = 0 does not.

    Args:
      log_weights: [M] current log-weights (-inf = empty slot); log_increment: [M] the
        step's log-likelihood of each particle; target: fraction in (0, 1]; iters: bisection
        steps (resolution 2^-iters).

    Returns:
      [] float32 delta.

    Example:
      >>> lw = jnp.zeros(4)
      >>> inc = jnp.array([0.0, -1.0, -2.0, -3.0])
      >>> delta = gje_jax.remedies.smc.adaptive_tempering(lw, inc, 0.9)
      >>> w = jax.nn.softmax(delta * inc)
      >>> round(float(1.0 / jnp.sum(w ** 2) / 4), 3)              # the ESS sits at the target
      0.9
    """
    filled = jnp.isfinite(log_weights)
    size = jnp.maximum(jnp.sum(filled), 1).astype(log_increment.dtype)
    inc = jnp.where(filled, log_increment, 0.0)

    def ess_fraction(delta):
        lw = jnp.where(filled, log_weights + delta * inc, -jnp.inf)
        lw = lw - jax.nn.logsumexp(lw)
        return jnp.exp(-jax.nn.logsumexp(2.0 * lw)) / size

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = ess_fraction(mid) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    zero, one = jnp.zeros((), inc.dtype), jnp.ones((), inc.dtype)
    lo, _ = jax.lax.fori_loop(0, iters, body, (zero, one))
    # The invariant keeps ESS(lo) >= target whenever ESS(0) >= target.
    return jnp.where(ess_fraction(one) >= target, one, lo)


def _pairwise_log_kernel(
    x: jax.Array, centres: jax.Array, log_weights: jax.Array, scale_tril: jax.Array, centre_scales=None
):
    """log sum_m exp(log_weights_m) N(x_n | centres_m, s_m^2 L L^T) for x [N, D] -> [N]
    (s_m = centre_scales [M], or 1).

    Whitening by W = L^{-1} turns the kernel isotropic; |u - v|^2 = |u|^2 + |v|^2 - 2 u.v
    after centring both sets on the centres' mean (keeps the cancellation small).
    """
    d = x.shape[1]
    w = linalg.tril_inverse(scale_tril)
    shift = jnp.mean(centres, axis=0)
    v_c = (centres - shift) @ w.T  # [M, D]
    v_sq = jnp.sum(v_c * v_c, axis=-1)
    log_norm = -linalg.half_logdet(scale_tril) - 0.5 * d * linalg.LOG_2PI
    m = centres.shape[0]
    if centre_scales is None:
        inv_s2, lw = 1.0, log_weights
    else:
        inv_s2, lw = 1.0 / jnp.square(centre_scales), log_weights - d * jnp.log(centre_scales)

    def chunk(xc):
        u = (xc - shift) @ w.T
        d2 = jnp.maximum(jnp.sum(u * u, axis=-1, keepdims=True) + v_sq - 2.0 * u @ v_c.T, 0.0)  # [n, M]
        return jax.nn.logsumexp(lw - 0.5 * d2 * inv_s2, axis=-1, keepdims=True)

    out = map_over_rows(chunk, x, max(1, KDE_CHUNK_ELEMENTS // max(m, 1)))
    return out[:, 0] + log_norm


def _check_kernel(scale_tril, d: int, name: str = "scale_tril") -> jax.Array:
    scale_tril = v.as_float(scale_tril, name)
    if scale_tril.shape != (d, d):
        raise ValueError(f"{name} must have shape [D, D] = {(d, d)}, got {tuple(scale_tril.shape)}.")
    v.check_scale_tril_if_concrete(scale_tril, name)
    return scale_tril


def _check_centre_scales(centre_scales, m: int):
    if centre_scales is None:
        return None
    centre_scales = v.as_float(centre_scales, "centre_scales")
    if centre_scales.shape != (m,):
        raise ValueError(f"centre_scales must have shape [M] = {(m,)}, got {tuple(centre_scales.shape)}.")
    return centre_scales


@v.finite_args("x", "centres", "scale_tril", log_weights=("log_weights",), positive=("centre_scales",))
@jax.jit
def kernel_log_prob(
    x: jax.Array,
    centres: jax.Array,
    log_weights: jax.Array | None,
    scale_tril: jax.Array,
    centre_scales: jax.Array | None = None,
) -> jax.Array:
    """Log-density of the kernel mixture sum_m w_m N(x | centres_m, s_m^2 L L^T).

    Args:
      x: [N, D] points.
      centres: [M, D] kernel centres (particles).
      log_weights: [M] log-weights (normalised inside; -inf entries are skipped), or
        None for uniform weights.
      scale_tril: [D, D] lower Cholesky factor of the shared kernel covariance.
      centre_scales: [M] positive per-centre factors s_m (the local kernel,
        `local_bandwidths`, with scale_tril = I), or None for s = 1.

    Returns:
      [N] float32.

    Example:
      >>> lp = gje_jax.remedies.smc.kernel_log_prob(jnp.zeros((1, 2)), jnp.zeros((5, 2)), None, jnp.eye(2))
      >>> round(float(lp[0]), 4)                                   # log N(0 | 0, I) = -log(2 pi)
      -1.8379
    """
    x, centres = v.as_float(x, "x"), v.as_float(centres, "centres")
    v.check_rank(x, 2, "x", "[N, D]")
    v.check_rank(centres, 2, "centres", "[M, D]")
    if x.shape[1] != centres.shape[1]:
        raise ValueError(f"x has D = {x.shape[1]} but centres have D = {centres.shape[1]}.")
    scale_tril = _check_kernel(scale_tril, x.shape[1])
    m = centres.shape[0]
    centre_scales = _check_centre_scales(centre_scales, m)
    lw = jnp.full((m,), -np.log(m), x.dtype) if log_weights is None else jax.nn.log_softmax(log_weights)
    return _pairwise_log_kernel(x, centres, lw, scale_tril, centre_scales)


@v.finite_args("c", "t", "centres", "scale_tril", log_weights=("log_weights",), positive=("centre_scales",))
@functools.partial(jax.jit, static_argnames=("split",))
def kernel_conditional_log_prob(
    c: jax.Array,
    t: jax.Array,
    centres: jax.Array,
    log_weights: jax.Array | None,
    scale_tril: jax.Array,
    split: int | None = None,
    centre_scales: jax.Array | None = None,
) -> jax.Array:
    """log p(t | c) under the kernel mixture over z = [c ; t]:
    log p(c, t) - log p(c), where p(c) uses the leading block L_cc of the kernel factor
    (the block identity of METHOD section 1; L_tt is the conditional kernel factor).

    Args:
      c: [N, d_c]; t: [N, d_t]; centres: [M, d_c + d_t]; log_weights: [M] or None;
      scale_tril: [D, D]; split: d_c (defaults to c.shape[1]); centre_scales: [M] or
      None (see `kernel_log_prob`).

    Returns:
      [N] float32.

    Example:
      >>> centres = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> lp = gje_jax.remedies.smc.kernel_conditional_log_prob(jnp.zeros((3, 1)), jnp.zeros((3, 1)), centres, None, 0.1 * jnp.eye(2), split=1)
      >>> lp.shape
      (3,)
    """
    c, t = v.as_float(c, "c"), v.as_float(t, "t")
    v.check_rank(c, 2, "c", "[N, d_c]")
    v.check_rank(t, 2, "t", "[N, d_t]")
    split = c.shape[1] if split is None else split
    z = jnp.concatenate([c, t], axis=-1)
    d = z.shape[1]
    v.check_split(split, d)
    centres = v.as_float(centres, "centres")
    if centres.ndim != 2 or centres.shape[1] != d:
        raise ValueError(f"centres must have shape [M, D] with D = {d}, got {tuple(centres.shape)}.")
    scale_tril = _check_kernel(scale_tril, d)
    m = centres.shape[0]
    centre_scales = _check_centre_scales(centre_scales, m)
    lw = jnp.full((m,), -np.log(m), z.dtype) if log_weights is None else jax.nn.log_softmax(log_weights)
    joint = _pairwise_log_kernel(z, centres, lw, scale_tril, centre_scales)
    marginal = _pairwise_log_kernel(c, centres[:, :split], lw, scale_tril[:split, :split], centre_scales)
    return joint - marginal


def kernel_scale_tril(cov: jax.Array, num: int, *, eps_rel: float = 1e-4, eps_abs: float = 1e-6) -> jax.Array:
    """Cholesky factor of Silverman's kernel H = factor(num, D) * (cov + eps I). [D, D].

    Example:
      >>> L = gje_jax.remedies.smc.kernel_scale_tril(jnp.eye(2), num=100)
      >>> bool(jnp.allclose(L, jnp.sqrt(gje_jax.remedies.smc.silverman_factor(100, 2)) * jnp.eye(2), atol=1e-3))
      True
    """
    d = cov.shape[-1]
    return linalg.cholesky(silverman_factor(num, d) * regularize(cov, eps_rel, eps_abs))


def reweight(
    bank: ParticleBank,
    z: jax.Array,
    scale_tril: jax.Array,
    *,
    age_penalty: float = 0.0,
    tempering: float = 1.0,
    ess_target: float = 0.0,
    incremental: bool = True,
) -> ParticleBank:
    """l_m += delta * (log KDE_z(P_m) - log_kde_m) - age_penalty * age_m, renormalised over
    filled slots; log_kde_m <- log KDE_z(P_m).

    KDE_z(x) = (1/N) sum_n N(x | z_n, H) estimates the current density of the embeddings.
    A particle inserted from the batch of step s was a draw from p_s, so its importance
    weight for the current density p_t is p_t(P) / p_s(P); the per-step increments
    log KDE_t(P) - log KDE_{t-1}(P) telescope to exactly that, with log_kde_m holding the
    last denominator (at insertion: the bank's density at the particle, see `update`).
    Particles in regions the embeddings leave lose weight; under a stationary density the
    weights stay near uniform.

    incremental=False adds log KDE_z(P_m) itself every step (METHOD section 7 as first
    written): the weights become the product of all past KDEs, which concentrates the bank
    on the modes (w ~ p^T after T steps) and starves the ESS.

    delta in [0, 1] raises the increment to that power (tempered SMC): `tempering`, or with
    ess_target > 0 the largest exponent that keeps the reweighted bank's ESS at least
    ess_target times its size (`adaptive_tempering`). `update` reports it
    (metrics['bank_tempering']).

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(2, 1), jnp.array([[0.0], [5.0]]))
      >>> new = gje_jax.remedies.smc.reweight(bank, jnp.zeros((8, 1)), jnp.eye(1))   # the batch sits at 0
      >>> bool(new.log_weights[0] > new.log_weights[1]), float(new.ess()) < 2.0
      (True, True)
      >>> new = gje_jax.remedies.smc.reweight(bank, jnp.zeros((8, 1)), jnp.eye(1), ess_target=0.9)
      >>> round(float(new.ess()) / 2, 3)                            # adaptive: the ESS kept at 90%
      0.9
      >>> full = gje_jax.remedies.smc.reweight(bank, jnp.zeros((8, 1)), jnp.eye(1))
      >>> again = gje_jax.remedies.smc.reweight(full, jnp.zeros((8, 1)), jnp.eye(1))
      >>> bool(jnp.allclose(again.log_weights, full.log_weights))   # the same density: no change
      True
    """
    return _reweight(bank, z, scale_tril, age_penalty, tempering, ess_target, incremental)[0]


def _reweight(bank, z, scale_tril, age_penalty, tempering, ess_target, incremental) -> tuple[ParticleBank, jax.Array]:
    z = jax.lax.stop_gradient(v.as_float(z, "z"))
    v.check_number(tempering, "tempering", low=0.0, high=1.0)
    v.check_number(ess_target, "ess_target", low=0.0, high=1.0)
    log_kde = kernel_log_prob(bank.particles, z, None, scale_tril)  # [M]
    increment = jnp.where(bank.filled, log_kde - bank.log_kde if incremental else log_kde, 0.0)
    base = jnp.where(bank.filled, bank.log_weights - age_penalty * bank.ages.astype(z.dtype), -jnp.inf)
    if v.is_zero(ess_target):
        delta = jnp.asarray(tempering, z.dtype)
    else:
        delta = adaptive_tempering(base, increment, ess_target)
    lw = base + delta * increment
    # Tempered, the weight carries delta of the step's ratio; the denominator moves by the
    # same fraction so that later increments telescope to the untempered remainder.
    stored = bank.log_kde + delta * (log_kde - bank.log_kde) if incremental else log_kde
    reweighted = bank.replace(
        log_weights=jnp.where(bank.filled, lw, -jnp.inf), log_kde=jnp.where(bank.filled, stored, 0.0)
    )
    return reweighted.replace(log_weights=reweighted.normalized_log_weights()), delta


def _insertion_log_kde(bank: ParticleBank, z: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """The density of the embeddings at new particles z [N, D]: the (reweighted) bank's
    kernel density there, an estimate from M particles; while the bank is empty (the first
    step only), the leave-one-out KDE of the batch (N >= 2) or the kernel's peak (N = 1).

    A batch's own leave-one-out KDE (N points) is the noisier estimate: in the tails it
    is often too small and those particles' later ratios too large, which over-weights
    the tails (tests/test_resampling_smc.py bounds the bank's spread on N(0, I) batches)."""

    def at_bank(_):
        return kernel_log_prob.unchecked(z, bank.particles, bank.log_weights, scale_tril)

    def own_batch(_):
        if z.shape[0] >= 2:
            return leave_one_out_log_kde(z, scale_tril)
        return jnp.full((1,), -linalg.half_logdet(scale_tril) - 0.5 * z.shape[1] * linalg.LOG_2PI, z.dtype)

    return jax.lax.cond(bank.size() > 0, at_bank, own_batch, None)


def leave_one_out_log_kde(z: jax.Array, scale_tril: jax.Array) -> jax.Array:
    """log (1/(N-1)) sum_{m != n} N(z_n | z_m, H) for each row of z [N, D] -> [N] (N >= 2):
    the density of z's own batch at each of its points without the point itself.

    Example:
      >>> lp = gje_jax.remedies.smc.leave_one_out_log_kde(jnp.array([[0.0], [1.0]]), jnp.eye(1))
      >>> round(float(lp[0]), 4)                                   # log N(0 | 1, 1)
      -1.4189
    """
    z = jax.lax.stop_gradient(v.as_float(z, "z"))
    n, d = z.shape
    w = linalg.tril_inverse(scale_tril)
    u = (z - jnp.mean(z, axis=0)) @ w.T
    d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, squared_distances(u, u))
    log_norm = -linalg.half_logdet(scale_tril) - 0.5 * d * linalg.LOG_2PI
    return jax.nn.logsumexp(-0.5 * d2, axis=-1) - jnp.log(max(n - 1, 1)) + log_norm


def resample(
    bank: ParticleBank,
    key: jax.Array,
    *,
    scheme: str = "systematic",
    ess_threshold: float = 0.5,
    rejuvenation: float = 0.0,
    scale_tril: jax.Array | None = None,
) -> tuple[ParticleBank, jax.Array]:
    """If the bank is full and ESS < ess_threshold * M: draw M indices with `scheme`,
    copy the particles, reset weights to uniform and ages to 0, and optionally jitter
    P += rejuvenation * L_H xi. A partly filled bank is never resampled (its empty
    slots are filled by insertion first). Returns (bank, resampled [] bool).

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(4, 1), jnp.arange(4.0)[:, None])
      >>> bank = bank.replace(log_weights=jnp.array([0.0, -30.0, -30.0, -30.0]))   # ESS ~ 1 < 0.5 * 4
      >>> new, resampled = gje_jax.remedies.smc.resample(bank, jax.random.key(0), scheme="systematic", ess_threshold=0.5)
      >>> bool(resampled), new.particles[:, 0].tolist(), float(new.ess())
      (True, [0.0, 0.0, 0.0, 0.0], 4.0)
    """
    if not 0.0 < ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in (0, 1], got {ess_threshold!r}.")
    fn = resampling.get_scheme(scheme)
    m = bank.capacity
    do = (bank.size() == m) & (bank.ess() < ess_threshold * m)

    def go(b):
        k_idx, k_jit = jax.random.split(key)
        idx = fn(k_idx, b.log_weights, m)
        # Unusable weights give idx = -1 (resampling's invalid marker): NaN particles then,
        # which the train loop's finiteness check stops on, not a wrapped-around copy.
        parts = jnp.take(b.particles, idx, axis=0, mode="fill", fill_value=jnp.nan)
        log_kde = jnp.take(b.log_kde, idx, axis=0, mode="fill", fill_value=0.0)
        if not v.is_zero(rejuvenation) and scale_tril is not None:
            xi = jax.random.normal(k_jit, parts.shape, parts.dtype)
            parts = parts + rejuvenation * xi @ scale_tril.T
        return ParticleBank(
            parts,
            jnp.full((m,), -np.log(m), b.log_weights.dtype),
            jnp.zeros((m,), jnp.int32),
            b.num_resamples + 1,
            log_kde,
        )

    return jax.lax.cond(do, go, lambda b: b, bank), do


def insert(bank: ParticleBank, z: jax.Array, log_kde: jax.Array | None = None, oldest: bool = False) -> ParticleBank:
    """Writes the N rows of z into the lowest-weight slots (empty slots, l = -inf, come
    first); new particles get the mean weight of the filled ones (uniform for an empty
    bank), then all weights are renormalised. Every particle ages by one step. log_kde
    [N] (default 0) is stored as the new particles' density (see `reweight`). oldest=True
    overwrites the oldest particles (largest age) instead of the lowest weights.

    Example:
      >>> bank = gje_jax.remedies.smc.insert(gje_jax.remedies.smc.ParticleBank.empty(6, 2), jnp.zeros((4, 2)))
      >>> bank = gje_jax.remedies.smc.insert(bank, jnp.ones((4, 2)))         # 2 empty slots, then 2 lowest weights
      >>> int(bank.size()), int((bank.particles[:, 0] == 1.0).sum())
      (6, 4)
    """
    z = jax.lax.stop_gradient(v.as_float(z, "z"))
    v.check_rank(z, 2, "z", "[N, D]")
    v.check_finite_if_concrete(z, "z")  # NaN rows would become particles
    n, d = z.shape
    if d != bank.dim:
        raise ValueError(f"z has D = {d} but the bank holds D = {bank.dim}.")
    if n > bank.capacity:
        raise ValueError(f"Cannot insert N = {n} rows into a bank of capacity M = {bank.capacity}.")
    size = bank.size()
    mean_lw = jnp.where(size > 0, -jnp.log(jnp.maximum(size, 1).astype(z.dtype)), 0.0)
    lw = bank.normalized_log_weights()
    # Lowest weight first; empty slots tie at the top and top_k takes ties in index
    # order, so an unfilled bank fills like a ring.
    order = jnp.where(bank.filled, bank.ages.astype(lw.dtype) if oldest else -lw, jnp.inf)
    _, slots = jax.lax.top_k(order, n)
    particles = bank.particles.at[slots].set(z)
    lw = lw.at[slots].set(mean_lw)
    ages = (bank.ages + 1).at[slots].set(0)
    dens = bank.log_kde.at[slots].set(jnp.zeros((n,), z.dtype) if log_kde is None else log_kde)
    out = ParticleBank(particles, lw, ages, bank.num_resamples, dens)
    return out.replace(log_weights=out.normalized_log_weights())


def update(
    bank: ParticleBank,
    z: jax.Array,
    key: jax.Array,
    scale_tril: jax.Array,
    *,
    scheme: str = "systematic",
    ess_threshold: float = 0.5,
    age_penalty: float = 0.0,
    rejuvenation: float = 0.0,
    tempering: float = 1.0,
    ess_target: float = 0.0,
    incremental: bool = True,
) -> tuple[ParticleBank, dict[str, jax.Array]]:
    """One bank step with the batch z [N, D] (stop-gradient): reweight (with the fixed
    `tempering`, or the adaptive exponent when ess_target > 0; incremental or not, see
    `reweight`), resample if the ESS is low, insert (and, incremental, resample again if
    the insertion left the ESS low).

    Incremental, the new particles' density (the denominator of their later ratios) is the
    bank's kernel density at them, and they overwrite the oldest particles: overwriting
    the lowest weights would keep the particles whose noisy ratios came out high, which
    over-weights the tails. Not incremental (METHOD section 7 as first written), they
    overwrite the lowest weights.

    Returns (bank, metrics {'bank_ess' (after reweighting, before
    resampling), 'bank_ess_fraction' (the same over the bank's size), 'bank_tempering' (the
    exponent used), 'bank_unique' (distinct particles after the step), 'bank_size',
    'resampled'}).

    Example:
      >>> bank = gje_jax.remedies.smc.ParticleBank.empty(16, 2)
      >>> for i in range(3):
      ...     bank, metrics = gje_jax.remedies.smc.update(bank, jax.random.normal(jax.random.key(i), (8, 2)), jax.random.key(9), jnp.eye(2))
      >>> int(bank.size()), sorted(metrics)[:3]
      (16, ['bank_ess', 'bank_ess_fraction', 'bank_size'])
    """
    z = v.as_float(z, "z")
    v.check_rank(z, 2, "z", "[N, D]")
    v.check_finite_if_concrete(z, "z")
    v.check_finite_if_concrete(bank.particles, "bank.particles")
    v.check_log_weights_if_concrete(bank.log_weights, "bank.log_weights", allow_all_zero=True)  # empty: all -inf
    # A non-positive kernel factor gives NaN kernel values, which empty the bank's weights.
    _check_kernel(scale_tril, bank.dim)
    bank, delta = _reweight(bank, z, scale_tril, age_penalty, tempering, ess_target, incremental)
    ess_before = bank.ess()
    size_before = bank.size()
    bank, did = resample(
        bank, key, scheme=scheme, ess_threshold=ess_threshold, rejuvenation=rejuvenation, scale_tril=scale_tril
    )
    own = _insertion_log_kde(bank, z, scale_tril) if incremental else None
    bank = insert(bank, z, own, oldest=incremental)
    if incremental:
        # Overwriting the oldest particles can drop the ones that carry the weight, leaving
        # the ESS under the threshold for the next step, where adaptive tempering can then
        # only choose 0 (measured: fraction 0.485 against 0.5). Resampling here starts every
        # step at or above it.
        bank, again = resample(
            bank,
            jax.random.fold_in(key, 1),
            scheme=scheme,
            ess_threshold=ess_threshold,
            rejuvenation=rejuvenation,
            scale_tril=scale_tril,
        )
        did = did | again
    metrics = {
        "bank_ess": ess_before,
        # An empty bank (the first step) has nothing to weigh: its fraction counts as full.
        "bank_ess_fraction": jnp.where(size_before > 0, ess_before / jnp.maximum(size_before, 1).astype(z.dtype), 1.0),
        "bank_tempering": delta,
        "bank_unique": unique_particles(bank).astype(jnp.float32),
        "bank_size": bank.size().astype(jnp.float32),
        "resampled": did.astype(jnp.float32),
    }
    return bank, metrics
