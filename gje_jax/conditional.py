"""Conditional mixtures p(t | c_n), one mixture over the target block per query.

Two covariance layouts, one class each (no rank- or flag-branching in the maths):
`ConditionalMixture` holds lower Cholesky factors, shared by all queries ([K, d_t, d_t]:
prototype GMJE, GNG, the SMC bank) or per query ([N, K, d_t, d_t]: the MDN head with full
covariances); `DiagonalConditionalMixture` holds per-query standard deviations [N, K, d_t]
(the MDN head with diagonal covariances: no [N, K, d_t, d_t] array is ever formed). Both
are pytrees and share every method but the few layout hooks at the end of each class.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax._mahalanobis import categorical


class _Conditional:
    """What both layouts share; a subclass supplies `_check_scales`, `_validate_scales`,
    `_white_and_half_logdet`, `_within`, `_noise` and `_widened`."""

    @property
    def num_queries(self) -> int:
        return self.means.shape[0]

    @property
    def num_components(self) -> int:
        return self.means.shape[1]

    @property
    def dim(self) -> int:
        return self.means.shape[2]

    def check_shapes(self):
        v.check_rank(self.log_weights, 2, "log_weights", "[N, K]")
        v.check_rank(self.means, 3, "means", "[N, K, d_t]")
        if self.log_weights.shape != self.means.shape[:2]:
            raise ValueError(
                f"log_weights shape {tuple(self.log_weights.shape)} does not match means {tuple(self.means.shape)}."
            )
        self._check_scales()
        return self

    def validate(self):
        """check_shapes, then for concrete arrays the values: NaN/Inf means, NaN/+Inf or
        all -inf log-weights in a query, and scales that are not valid for the layout.
        Returns self."""
        self.check_shapes()
        v.check_finite_if_concrete(self.means, "means")
        v.check_log_weights_if_concrete(self.log_weights, "log_weights")
        self._validate_scales()
        return self

    def _component_log_probs(self, t: jax.Array) -> jax.Array:
        """log N(t_n | m_k(c_n), S_k): [N, K]."""
        white, half_logdet = self._white_and_half_logdet(t[:, None, :] - self.means)
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
        return self._within(r) + jnp.einsum("nk,nkd,nke->nde", r, centred, centred)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """k ~ Cat(r(c)), t = m_k(c) + L_k eps. Returns [N, n, d_t]."""
        self.validate()
        n = v.check_int(n, "n", minimum=0)
        k_key, e_key = jax.random.split(key)
        q, k, d = self.means.shape
        comp = categorical(k_key, self.log_weights[:, None, :], (q, n))  # [N, n]
        onehot = jax.nn.one_hot(comp, k, dtype=self.means.dtype)  # [N, n, K]
        eps = jax.random.normal(e_key, (q, n, d), self.means.dtype)
        return jnp.einsum("qsk,qkd->qsd", onehot, self.means) + self._noise(onehot, eps)

    def add_variance(self, variance: jax.Array | float):
        """The same mixture with every component covariance widened to S_k + variance * I.

        variance: [] or [N] (one per query), >= 0.
        """
        self.validate()
        var = jnp.asarray(variance, self.means.dtype)
        if var.ndim > 1 or (var.ndim == 1 and var.shape[0] != self.num_queries):
            raise ValueError(f"variance must be a scalar or [N] = [{self.num_queries}], got {tuple(var.shape)}.")
        return self._widened(var)

    def modes(self) -> tuple[jax.Array, jax.Array]:
        """Components ranked by responsibility: (weights [N, K], means [N, K, d_t]),
        highest weight first."""
        self.validate()
        order = jnp.argsort(-self.log_weights, axis=-1)
        weights = jnp.take_along_axis(jnp.exp(self.log_weights), order, axis=-1)
        means = jnp.take_along_axis(self.means, order[..., None], axis=1)
        return weights, means


@flax.struct.dataclass
class ConditionalMixture(_Conditional):
    """p(t | c_n) = sum_k exp(log_weights[n, k]) N(t | means[n, k], L L^T) for each query n.

    Attributes:
      log_weights: [N, K] normalised log responsibilities r_k(c_n).
      means: [N, K, d_t] conditional component means m_k(c_n).
      scale_tril: [K, d_t, d_t] lower Cholesky factors shared by all queries (prototype
        GMJE, GNG, SMC), or [N, K, d_t, d_t] per query (the MDN head, full covariances).

    Example:
      >>> gm = gje_jax.fit_gaussian(jax.random.normal(jax.random.key(0), (500, 3)))
      >>> cond = gm.condition(jnp.zeros((4, 1)), split=1)         # 4 queries, d_t = 2
      >>> cond.mean().shape, cond.covariance().shape
      ((4, 2), (4, 2, 2))
      >>> cond.sample(jax.random.key(1), 10).shape, cond.log_prob(jnp.zeros((4, 2))).shape
      ((4, 10, 2), (4,))
      >>> weights, means = cond.modes(); weights.shape, means.shape
      ((4, 1), (4, 1, 2))
      >>> cond.add_variance(jnp.ones(4)).scale_tril.shape        # per-query widths: per-query factors
      (4, 1, 2, 2)
    """

    log_weights: jax.Array
    means: jax.Array
    scale_tril: jax.Array

    def _check_scales(self) -> None:
        n, k, d = self.means.shape
        v.check_rank(self.scale_tril, (3, 4), "scale_tril", "[K, d_t, d_t] or [N, K, d_t, d_t]")
        if self.scale_tril.shape[-3:] != (k, d, d) or (self.scale_tril.ndim == 4 and self.scale_tril.shape[0] != n):
            raise ValueError(
                f"scale_tril shape {tuple(self.scale_tril.shape)} does not match means {tuple(self.means.shape)}."
            )

    def _validate_scales(self) -> None:
        v.check_scale_tril_if_concrete(self.scale_tril, "scale_tril")

    def _covs(self) -> jax.Array:
        scale_tril = jnp.tril(self.scale_tril)
        return scale_tril @ jnp.swapaxes(scale_tril, -1, -2)

    def _white_and_half_logdet(self, resid):
        w = linalg.tril_inverse(self.scale_tril)
        spec = "kde,nke->nkd" if self.scale_tril.ndim == 3 else "nkde,nke->nkd"
        return jnp.einsum(spec, w, resid), linalg.half_logdet(self.scale_tril)

    def _within(self, r):
        covs = self._covs()
        return jnp.einsum("nk,kde->nde", r, covs) if covs.ndim == 3 else jnp.einsum("nk,nkde->nde", r, covs)

    def _noise(self, onehot, eps):
        # Every component transforms the noise ([N, n, K, d_t], one matmul) and the drawn
        # one is kept: no [N, n, d_t, d_t] gather of factors.
        spec = "kde,qse->qskd" if self.scale_tril.ndim == 3 else "qkde,qse->qskd"
        return jnp.einsum("qsk,qskd->qsd", onehot, jnp.einsum(spec, jnp.tril(self.scale_tril), eps))

    def _widened(self, var):
        # Refactorised in the layout held (K or N * K factors), except that per-query
        # widths turn shared factors into per-query ones.
        covs = self._covs()
        if var.ndim == 1 and covs.ndim == 3:
            covs = jnp.broadcast_to(covs, (self.num_queries,) + covs.shape)
        var = var.reshape(var.shape + (1,) * (covs.ndim - var.ndim))
        return self.replace(scale_tril=linalg.cholesky(covs + var * jnp.eye(self.dim, dtype=covs.dtype)))


@flax.struct.dataclass
class DiagonalConditionalMixture(_Conditional):
    """p(t | c_n) = sum_k exp(log_weights[n, k]) N(t | means[n, k], diag(scale_diag[n, k])^2).

    Attributes:
      log_weights: [N, K] normalised log responsibilities r_k(c_n).
      means: [N, K, d_t] conditional component means m_k(c_n).
      scale_diag: [N, K, d_t] positive per-query standard deviations.

    Example:
      >>> cond = gje_jax.DiagonalConditionalMixture(jnp.zeros((1, 1)), jnp.zeros((1, 1, 2)), jnp.full((1, 1, 2), 3.0))
      >>> cond.add_variance(16.0).scale_diag.tolist()               # sqrt(9 + 16)
      [[[5.0, 5.0]]]
      >>> cond.covariance().tolist()
      [[[9.0, 0.0], [0.0, 9.0]]]
    """

    log_weights: jax.Array
    means: jax.Array
    scale_diag: jax.Array

    def _check_scales(self) -> None:
        if self.scale_diag.shape != self.means.shape:
            raise ValueError(
                f"scale_diag must have shape [N, K, d_t] = {tuple(self.means.shape)}, got {tuple(self.scale_diag.shape)}."
            )

    def _validate_scales(self) -> None:
        if not v.is_concrete(self.scale_diag):
            return
        v.check_finite_if_concrete(self.scale_diag, "scale_diag")
        with jax.ensure_compile_time_eval():
            n_bad = int(jnp.sum(self.scale_diag <= 0))
        if n_bad:
            raise ValueError(f"scale_diag must be positive; {n_bad} are <= 0 (shape {tuple(self.scale_diag.shape)}).")

    def _white_and_half_logdet(self, resid):
        return resid / self.scale_diag, jnp.sum(jnp.log(self.scale_diag), axis=-1)

    def _within(self, r):
        within = jnp.einsum("nk,nkd->nd", r, self.scale_diag * self.scale_diag)
        return within[..., None] * jnp.eye(self.dim, dtype=within.dtype)

    def _noise(self, onehot, eps):
        return jnp.einsum("qsk,qkd->qsd", onehot, self.scale_diag) * eps

    def _widened(self, var):
        per_query = var.reshape(var.shape + (1, 1))
        return self.replace(scale_diag=jnp.sqrt(self.scale_diag * self.scale_diag + per_query))


__all__ = ["ConditionalMixture", "DiagonalConditionalMixture"]
