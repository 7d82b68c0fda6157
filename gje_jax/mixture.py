"""Gaussian mixtures carried by Cholesky factors.

`GaussianMixture` is the joint density p(z) = sum_k pi_k N(z | mu_k, L_k L_k^T) used by
GJE (K = 1) and GMJE (K > 1); its `condition` returns p(t | c) as a `ConditionalMixture`
(gje_jax.conditional, re-exported here with its diagonal twin). It is a pytree (a
flax.struct dataclass): pass it through jit, vmap and grad.

Densities whiten residuals with W_k = L_k^{-1} in one GEMM per chunk of points, so at most
`chunk_elements` residuals ([n, K, D]) live at once, in the gradient too (it recomputes
them); nothing of size [N, K, D, D] or [N, N, D] is ever formed. On GPU and TPU a single
Gaussian (K = 1) is one triangular solve instead; on CPU no density calls LAPACK. Their
gradients are hand-written reverse-mode rules (custom VJPs): use jax.grad / jax.vjp;
forward-mode (jax.jvp, jacfwd, hessian) of a density is not supported.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax._mahalanobis import (
    CHUNK_ELEMENTS,
    categorical,
    check_params,
    check_points,
    component_log_probs,
    distances,
    map_over_rows,
    rows_per_chunk,
)
from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture


@flax.struct.dataclass
class GaussianMixture:
    """p(z) = sum_k softmax(log_weights)_k N(z | means_k, scale_tril_k scale_tril_k^T).

    Attributes:
      log_weights: [K] mixture log-weights (normalised on use, so logits are fine;
        -inf switches a component off).
      means: [K, D].
      scale_tril: [K, D, D] lower-triangular Cholesky factors with positive diagonals. Eager
        calls refuse a non-positive diagonal or a non-zero upper triangle; under jit the
        upper triangle is ignored everywhere (every method reads tril(scale_tril) only).

    K = 1 is a single Gaussian (GJE); every method runs the same code for any K.

    Example:
      >>> gm = GaussianMixture.from_covariances(jnp.zeros(2), jnp.zeros((2, 3)),
      ...                                       jnp.stack([jnp.eye(3)] * 2))
      >>> gm.log_prob(jnp.ones((5, 3))).shape
      (5,)
    """

    log_weights: jax.Array
    means: jax.Array
    scale_tril: jax.Array

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_covariances(cls, log_weights, means, covs) -> GaussianMixture:
        """Factorises covariances [K, D, D] (no inverse). Concrete inputs are checked
        for NaN/Inf and positive definiteness, with the failing component named."""
        log_weights, means, covs = (
            v.as_float(a, n) for a, n in ((log_weights, "log_weights"), (means, "means"), (covs, "covs"))
        )
        v.check_rank(covs, 3, "covs", "[K, D, D]")
        check_params(log_weights, means, covs)
        for a, n in ((means, "means"), (covs, "covs")):
            v.check_finite_if_concrete(a, n)
        scale_tril = linalg.cholesky(covs)
        if v.is_concrete(scale_tril):
            bad = np.flatnonzero(~np.all(np.isfinite(np.asarray(scale_tril)), axis=(1, 2)))
            if bad.size:
                raise ValueError(
                    f"covs[{int(bad[0])}] is not positive definite in float32 (components {bad.tolist()}); "
                    "add a ridge (gje_jax.regularize) before factorising."
                )
        return cls(log_weights, means, scale_tril)

    @classmethod
    def from_unconstrained(cls, logits, means, raw_scale_tril, floor: float = 1e-4) -> GaussianMixture:
        """Builds a mixture from unconstrained parameters (for SGD): logits [K],
        means [K, D], raw_scale_tril [K, D, D] through `scale_tril_from_unconstrained`."""
        return cls(
            v.as_float(logits, "logits"),
            v.as_float(means, "means"),
            linalg.scale_tril_from_unconstrained(raw_scale_tril, floor),
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
        check_params(self.log_weights, self.means, self.scale_tril)
        return self

    def validate(self) -> GaussianMixture:
        """Checks shapes and, for concrete arrays, the values: NaN/Inf in the means, NaN,
        +Inf or all -inf log-weights, factors with a non-positive diagonal or a non-zero
        upper triangle. Returns self."""
        self.check_shapes()
        v.check_finite_if_concrete(self.means, "means")
        v.check_log_weights_if_concrete(self.log_weights, "log_weights")
        v.check_scale_tril_if_concrete(self.scale_tril, "scale_tril")
        return self

    def _tril(self) -> jax.Array:
        # The densities never read the upper triangle; neither may sampling nor moments.
        return jnp.tril(self.scale_tril)

    def normalized_log_weights(self) -> jax.Array:
        """[K] log pi_k."""
        return jax.nn.log_softmax(self.log_weights)

    # ---- densities ----------------------------------------------------------
    def _joint_logits(self, z, chunk_elements):
        self.validate()
        z = check_points(z, self.dim, "z")
        comp, _ = component_log_probs.unchecked(z, self.means, self.scale_tril, chunk_elements=chunk_elements)
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
        return 0.5 * self.dim * (linalg.LOG_2PI + 1.0) + linalg.half_logdet(self.scale_tril)

    def mean(self) -> jax.Array:
        """[D] mean of the mixture."""
        return jnp.einsum("k,kd->d", jnp.exp(self.normalized_log_weights()), self.means)

    def covariance(self) -> jax.Array:
        """[D, D] total covariance sum_k pi_k (Sigma_k + (mu_k - m)(mu_k - m)^T)."""
        self.validate()
        pi = jnp.exp(self.normalized_log_weights())
        centred = self.means - self.mean()
        scale_tril = self._tril()
        within = jnp.einsum("k,kde,kfe->df", pi, scale_tril, scale_tril)
        return within + jnp.einsum("k,kd,ke->de", pi, centred, centred)

    # ---- sampling -----------------------------------------------------------
    def sample(self, key: jax.Array, n: int, *, chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
        """Unconditional samples: k ~ Cat(pi), z = mu_k + L_k eps. Returns [n, D]."""
        self.validate()
        n = v.check_int(n, "n", minimum=0)
        scale_tril = self._tril()
        k_key, e_key = jax.random.split(key)
        comp = categorical(k_key, self.normalized_log_weights(), (n,))
        eps = jax.random.normal(e_key, (n, self.dim), self.means.dtype)
        rows = rows_per_chunk(self.num_components, self.dim, chunk_elements)

        def chunk(args):
            e, c = args[:, :-1], args[:, -1].astype(jnp.int32)
            # Every component transforms the noise (one matmul); the drawn one is kept.
            # This avoids gathering [n, D, D] factors.
            all_k = self.means[:, None, :] + jnp.einsum("kde,ne->knd", scale_tril, e)
            return jnp.take_along_axis(all_k, c[None, :, None], axis=0)[0]

        packed = jnp.concatenate([eps, comp[:, None].astype(eps.dtype)], axis=-1)
        return map_over_rows(chunk, packed, rows)

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
          ConditionalMixture with log_weights [N, K], means [N, K, d_t], scale_tril [K, d_t, d_t].
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
        scale_tril = self._tril()
        l_cc = scale_tril[:, :split, :split]
        l_tc = scale_tril[:, split:, :split]
        l_tt = scale_tril[:, split:, split:]
        mu_c, mu_t = self.means[:, :split], self.means[:, split:]
        w_cc = linalg.tril_inverse(l_cc)
        log_norm = -linalg.half_logdet(l_cc) - 0.5 * split * linalg.LOG_2PI
        maha = distances(c, mu_c, l_cc, w_cc, chunk_elements)  # [N, K]
        logits = self.normalized_log_weights() + log_norm - 0.5 * maha
        # m_k(c) = b_k + G_k c with the gain G_k = L_tc,k L_cc,k^{-1} [d_t, d_c] formed once:
        # every component's conditional mean is then one [N, d_c + 1] x [d_c + 1, K d_t] GEMM
        # (c with a column of ones, so the offsets b_k ride in the GEMM instead of costing
        # another pass over the [N, K, d_t] output; faster on CPU: experiments/benchmarks/choices.py).
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
        scale_tril = self._tril()
        if start == 0:
            return GaussianMixture(self.log_weights, means, scale_tril[:, :stop, :stop])
        rows = scale_tril[:, start:stop, :stop]
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


__all__ = ["ConditionalMixture", "DiagonalConditionalMixture", "GaussianMixture", "component_log_probs"]
