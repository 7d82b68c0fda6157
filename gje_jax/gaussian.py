"""Single-Gaussian estimates and information quantities (GJE, METHOD sections 1-2).

All results are `GaussianMixture`s with K = 1, so GJE and GMJE share one code path.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax.mixture import GaussianMixture

DEFAULT_EPS_REL = 1e-4
DEFAULT_EPS_ABS = 1e-6


def empirical_moments(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean [D] and biased covariance S = (1/N) sum (z - mu)(z - mu)^T [D, D] of z [N, D].

    Example:
      >>> mu, cov = gje_jax.empirical_moments(jnp.array([[0.0, 0.0], [2.0, 0.0]]))
      >>> mu.tolist(), cov.tolist()                                # biased: divides by N
      ([1.0, 0.0], [[1.0, 0.0], [0.0, 0.0]])
    """
    z = v.check_batch(z)
    mu = jnp.mean(z, axis=0)
    r = z - mu
    return mu, (r.T @ r) / z.shape[0]


def regularize(cov: jax.Array, eps_rel: float = DEFAULT_EPS_REL, eps_abs: float = DEFAULT_EPS_ABS) -> jax.Array:
    """S + eps I with eps = eps_rel * tr(S) / D + eps_abs. cov: [..., D, D].

    The relative ridge makes the estimate scale-equivariant (rescaling z by s rescales
    the result by s^2 when eps_abs = 0); the absolute ridge keeps a collapsed batch
    (S = 0) factorisable.

    Example:
      >>> gje_jax.regularize(jnp.zeros((2, 2)), eps_rel=0.0, eps_abs=1e-3).tolist()
      [[0.0010000000474974513, 0.0], [0.0, 0.0010000000474974513]]
    """
    cov = v.as_float(cov, "cov")
    d = cov.shape[-1]
    eps = eps_rel * jnp.trace(cov, axis1=-2, axis2=-1) / d + eps_abs
    return cov + eps[..., None, None] * jnp.eye(d, dtype=cov.dtype)


POOLED_SHAPES = ("isotropic", "covariance")


def check_pooled_ridge(pooled_eps_rel: float, shape: str) -> None:
    """Raises ValueError unless pooled_eps_rel >= 0 and shape is one of POOLED_SHAPES.

    Example:
      >>> gje_jax.gaussian.check_pooled_ridge(8.0, "covariance")      # fine: returns None
      >>> gje_jax.gaussian.check_pooled_ridge(8.0, "diagonal")
      Traceback (most recent call last):
      ValueError: Unknown pooled ridge shape 'diagonal'; valid: ['isotropic', 'covariance'].
    """
    if shape not in POOLED_SHAPES:
        raise ValueError(f"Unknown pooled ridge shape {shape!r}; valid: {list(POOLED_SHAPES)}.")
    if not isinstance(pooled_eps_rel, jax.core.Tracer) and not pooled_eps_rel >= 0.0:
        raise ValueError(f"pooled_eps_rel must be >= 0, got {pooled_eps_rel!r}.")


def pooled_ridge(
    weights: jax.Array, means: jax.Array, covs: jax.Array, pooled_eps_rel: float, shape: str = "isotropic"
) -> jax.Array:
    """The ridge added to every component of a mixture, relative to the whole mixture's spread.

    Args:
      weights: [K] non-negative, summing to one (zero for unused components);
      means: [K, D]; covs: [K, D, D] component covariances (without a ridge);
      pooled_eps_rel: its size, >= 0;
      shape: 'isotropic': pooled_eps_rel * `pooled_variance` * I; 'covariance':
        pooled_eps_rel * `pooled_covariance`, the mixture's total covariance.

    Returns:
      [D, D] float32, positive semi-definite.

    On joint embeddings [c ; t] of two views the two shapes differ in what they keep. The
    total covariance carries the views' correlation: its ridge leaves the direction c - t
    (where aligned views have little variance) tight, so the NLL still rewards agreement.
    An isotropic ridge as large as the spread widens that direction as much as any other.

    Example:
      >>> w, mu = jnp.array([0.5, 0.5]), jnp.array([[-1.0, -1.0], [1.0, 1.0]])    # spread along (1, 1)
      >>> gje_jax.pooled_ridge(w, mu, jnp.zeros((2, 2, 2)), 1.0, "covariance").tolist()
      [[1.0, 1.0], [1.0, 1.0]]
      >>> gje_jax.pooled_ridge(w, mu, jnp.zeros((2, 2, 2)), 1.0).tolist()
      [[1.0, 0.0], [0.0, 1.0]]
    """
    check_pooled_ridge(pooled_eps_rel, shape)
    if shape == "covariance":
        return pooled_eps_rel * pooled_covariance(weights, means, covs)
    return pooled_eps_rel * pooled_variance(weights, means, covs) * jnp.eye(means.shape[-1], dtype=means.dtype)


def pooled_covariance(weights: jax.Array, means: jax.Array, covs: jax.Array) -> jax.Array:
    """Total covariance Cov[z] of a mixture: sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T) with
    m = sum_k w_k mu_k (the law of total covariance, centred). weights [K] summing to one;
    means [K, D]; covs [K, D, D]. Returns [D, D].

    Example:
      >>> w, mu = jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]])
      >>> gje_jax.pooled_covariance(w, mu, jnp.zeros((2, 2, 2))).tolist()
      [[1.0, 0.0], [0.0, 0.0]]
    """
    w = v.as_float(weights, "weights")
    r = means - w @ means
    return jnp.einsum("k,kde->de", w, covs) + (w[:, None] * r).T @ r


def pooled_variance(weights: jax.Array, means: jax.Array, covs: jax.Array) -> jax.Array:
    """Average variance tr(Cov[z]) / D of a mixture's whole distribution.

    Args:
      weights: [K] non-negative, summing to one (zero for unused components);
      means: [K, D]; covs: [K, D, D] component covariances.

    Returns:
      [] = sum_k w_k (tr Sigma_k + |mu_k - m|^2) / D with m = sum_k w_k mu_k (the law of
      total variance, centred so a far-away mixture loses no precision in float32).

    A ridge proportional to this, added to every component, is a floor on how tight a
    component may get *relative to the spread of the whole mixture*; a ridge relative to the
    component's own trace is not, and a mixture fitted to embeddings that are trained
    against it can then win without bound by packing them into K tight clusters.

    Example:
      >>> w, mu = jnp.array([0.5, 0.5]), jnp.array([[-1.0, 0.0], [1.0, 0.0]])
      >>> float(gje_jax.pooled_variance(w, mu, jnp.zeros((2, 2, 2))))    # (1 + 0) / 2
      0.5
    """
    return jnp.trace(pooled_covariance(weights, means, covs)) / means.shape[-1]


def ledoit_wolf(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ledoit-Wolf shrinkage of the covariance towards mu I (as sklearn's
    `covariance.ledoit_wolf` with assume_centered=False).

    Returns (shrunk covariance [D, D], shrinkage [] in [0, 1]).

    Example:
      >>> z = jax.random.normal(jax.random.key(0), (10, 20))       # N < D: S is singular
      >>> cov, shrinkage = gje_jax.ledoit_wolf(z)
      >>> cov.shape, bool(jnp.linalg.eigvalsh(cov).min() > 0), 0.0 <= float(shrinkage) <= 1.0
      ((20, 20), True, True)
    """
    z = v.check_batch(z)
    n, d = z.shape
    x = z - jnp.mean(z, axis=0)
    s = (x.T @ x) / n
    mu = jnp.trace(s) / d
    x2 = x * x
    beta_num = jnp.sum((x2.T @ x2) / n - s * s)
    delta = jnp.sum(s * s) - 2.0 * mu * jnp.trace(s) + d * mu * mu
    beta = jnp.minimum(beta_num / n, delta)
    shrink = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0)
    return (1.0 - shrink) * s + shrink * mu * jnp.eye(d, dtype=s.dtype), shrink


@v.finite_args("z")
@functools.partial(jax.jit, static_argnames=("eps_rel", "eps_abs", "shrinkage"))
def fit_gaussian(
    z: jax.Array,
    eps_rel: float = DEFAULT_EPS_REL,
    eps_abs: float = DEFAULT_EPS_ABS,
    *,
    shrinkage: str | None = None,
) -> GaussianMixture:
    """Empirical Gaussian of a batch, regularised before factorising.

    Gradients flow through the estimate (this is GJE's `batch` estimator).

    Args:
      z: [N, D] embeddings (N >= 1; N < D and identical rows are fine: the ridge keeps
        the factor finite).
      eps_rel, eps_abs: ridge eps = eps_rel * tr(S)/D + eps_abs.
      shrinkage: None, or 'ledoit_wolf' to shrink S towards a scaled identity first.

    Returns:
      GaussianMixture with K = 1: log_weights [1], means [1, D], scale_tril [1, D, D].

    Example:
      >>> z = jax.random.normal(jax.random.key(0), (1000, 4)) * 2.0
      >>> g = gje_jax.fit_gaussian(z)                              # a GaussianMixture with K = 1
      >>> g.means.shape, g.scale_tril.shape, bool(jnp.allclose(jnp.diag(g.scale_tril[0]), 2.0, atol=0.15))
      ((1, 4), (1, 4, 4), True)
    """
    z = v.check_batch(z)
    if shrinkage is None:
        mu, s = empirical_moments(z)
    elif shrinkage == "ledoit_wolf":
        mu, (s, _) = jnp.mean(z, axis=0), ledoit_wolf(z)
    else:
        raise ValueError(f"shrinkage must be None or 'ledoit_wolf', got {shrinkage!r}.")
    scale_tril = linalg.cholesky(regularize(s, eps_rel, eps_abs))
    return GaussianMixture(jnp.zeros((1,), z.dtype), mu[None], scale_tril[None])


def _single(gaussian: GaussianMixture, what: str) -> GaussianMixture:
    gaussian.check_shapes()
    if gaussian.num_components != 1:
        raise ValueError(
            f"{what} needs a single Gaussian (K = 1), got K = {gaussian.num_components}; "
            "use gm.entropy_per_component() or pick one component."
        )
    return gaussian


def gaussian_entropy(gaussian: GaussianMixture) -> jax.Array:
    """Differential entropy D/2 log(2 pi e) + sum log L_ii of a K = 1 mixture. -> [].

    Example:
      >>> g = gje_jax.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 2)), jnp.eye(2)[None])
      >>> round(float(gje_jax.gaussian_entropy(g)), 4)             # log(2 pi e) for D = 2
      2.8379
    """
    return _single(gaussian, "gaussian_entropy").entropy_per_component()[0]


def gaussian_mutual_information(gaussian: GaussianMixture, split: int) -> jax.Array:
    """I(c; t) = 1/2 (log|S_cc| + log|S_tt| - log|S|) of a joint Gaussian, c = z[:split].

    With the joint factor L: log|S| = log|S_cc| + log|L_tt L_tt^T|, so
    I = sum log diag cholesky(S_tt) - sum log diag L_tt (one factorisation of S_tt).
    Equals -1/2 sum log(1 - rho_i^2) over the canonical correlations. -> [].

    Example:
      >>> rho = 0.6
      >>> g = gje_jax.GaussianMixture.from_covariances(jnp.zeros(1), jnp.zeros((1, 2)), jnp.array([[[1.0, rho], [rho, 1.0]]]))
      >>> round(float(gje_jax.gaussian_mutual_information(g, split=1)), 4)   # -1/2 log(1 - rho^2)
      0.2231
    """
    g = _single(gaussian, "gaussian_mutual_information")
    split = v.check_split(split, g.dim)
    l = g.scale_tril[0]
    rows = l[split:, :]
    scale_tril_tt = linalg.cholesky(rows @ rows.T)
    return linalg.half_logdet(scale_tril_tt) - linalg.half_logdet(l[split:, split:])


def effective_rank(cov: jax.Array) -> jax.Array:
    """exp(entropy of the normalised eigenvalues) of a PSD matrix [D, D] -> [] in [1, D].

    A diagnostic (no gradient): it reads eigenvalues, which need no inverse.

    Example:
      >>> round(float(gje_jax.effective_rank(jnp.eye(4))), 4), round(float(gje_jax.effective_rank(jnp.diag(jnp.array([1.0, 0, 0, 0])))), 4)
      (4.0, 1.0)
    """
    cov = jax.lax.stop_gradient(v.as_float(cov, "cov"))
    v.check_rank(cov, 2, "cov", "[D, D]")
    if cov.shape[0] != cov.shape[1]:
        raise ValueError(f"cov must be square [D, D], got shape {tuple(cov.shape)}.")
    v.check_finite_if_concrete(cov, "cov")
    ev = jnp.clip(jnp.linalg.eigvalsh(cov), 0.0, None)
    p = ev / jnp.maximum(jnp.sum(ev), jnp.finfo(ev.dtype).tiny)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(ent)


@flax.struct.dataclass
class GaussianStats:
    """Running (EMA) mean and covariance for GJE's `ema` estimator. A pytree.

    Attributes:
      mean: [D]; cov: [D, D]; count: [] number of updates so far (0 = empty).

    Example:
      >>> stats = gje_jax.GaussianStats.zeros(3)
      >>> for i in range(50):
      ...     stats = stats.update(jax.random.normal(jax.random.key(i), (256, 3)), momentum=0.9)
      >>> bool(jnp.allclose(stats.cov, jnp.eye(3), atol=0.2)), stats.to_gaussian().scale_tril.shape
      (True, (1, 3, 3))
    """

    mean: jax.Array
    cov: jax.Array
    count: jax.Array

    @classmethod
    def zeros(cls, dim: int, dtype=jnp.float32) -> GaussianStats:
        return cls(jnp.zeros((dim,), dtype), jnp.eye(dim, dtype=dtype), jnp.zeros((), jnp.int32))

    def update(self, z: jax.Array, momentum: float) -> GaussianStats:
        """EMA step towards the batch moments of z [N, D] (stop-gradient). The first
        update copies the batch moments instead of blending with the identity prior."""
        z = jax.lax.stop_gradient(v.check_batch(z))
        v.check_number(momentum, "momentum", low=0.0, high=1.0, high_open=True)
        if z.shape[1] != self.mean.shape[0]:
            raise ValueError(f"z has D = {z.shape[1]} but the statistics have D = {self.mean.shape[0]}.")
        mu_b, cov_b = empirical_moments(z)
        m = jnp.where(self.count > 0, momentum, 0.0)
        # Blend second moments about the new mean so the EMA covariance stays PSD.
        mean = m * self.mean + (1 - m) * mu_b
        dm_old, dm_new = self.mean - mean, mu_b - mean
        cov = m * (self.cov + jnp.outer(dm_old, dm_old)) + (1 - m) * (cov_b + jnp.outer(dm_new, dm_new))
        return GaussianStats(mean, cov, self.count + 1)

    def to_gaussian(self, eps_rel: float = DEFAULT_EPS_REL, eps_abs: float = DEFAULT_EPS_ABS) -> GaussianMixture:
        """The K = 1 mixture of these statistics (regularised, stop-gradient)."""
        cov = jax.lax.stop_gradient(regularize(self.cov, eps_rel, eps_abs))
        return GaussianMixture(
            jnp.zeros((1,), self.mean.dtype), jax.lax.stop_gradient(self.mean)[None], linalg.cholesky(cov)[None]
        )
