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
        check_params(log_weights, means, covs)
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
        check_params(self.log_weights, self.means, self.chols)
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
        z = check_points(z, self.dim, "z")
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
        comp = categorical(k_key, self.normalized_log_weights(), (n,))
        eps = jax.random.normal(e_key, (n, self.dim), self.means.dtype)
        rows = rows_per_chunk(self.num_components, self.dim, chunk_elements)

        def chunk(args):
            e, c = args[:, :-1], args[:, -1].astype(jnp.int32)
            # Every component transforms the noise (one matmul); the drawn one is kept.
            # This avoids gathering [n, D, D] factors.
            all_k = self.means[:, None, :] + jnp.einsum("kde,ne->knd", chols, e)
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
        maha = distances(c, mu_c, l_cc, w_cc, chunk_elements)  # [N, K]
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
        comp = categorical(k_key, self.log_weights[:, None, :], (q, n))  # [N, n]
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


__all__ = ["ConditionalMixture", "GaussianMixture", "component_log_probs"]
