"""The GMJE-MDN head (METHOD section 5): a conditional mixture density network.

A thin Flax module: an MLP trunk and three linear read-outs (logits, means, scales).
It returns the core `ConditionalMixture`, so log-density, moments, modes and sampling
are the same code as prototype GMJE's conditionals.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gje_jax import linalg
from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture

COVARIANCES = ("diag", "full")


class MDNHead(nn.Module):
    """h(c) -> p(t | c) = sum_k pi_k(c) N(t | m_k(c), S_k(c)).

    Attributes:
      num_components: K.
      out_dim: d_t.
      hidden: widths of the ReLU trunk (layer-normed).
      covariance: 'diag' (softplus scales + floor: a DiagonalConditionalMixture with
        scale_diag [N, K, d_t]) or 'full' (a ConditionalMixture with Cholesky factors
        [N, K, d_t, d_t], softplus diagonal + floor; K * d_t^2 outputs, for small d_t).
      floor: minimum standard deviation / Cholesky diagonal.

    Call: c [N, d_c] -> (Diagonal)ConditionalMixture with log_weights [N, K], means [N, K, d_t].

    Example:
      >>> head = gje_jax.models.MDNHead(num_components=3, out_dim=2, hidden=(16,))
      >>> params = head.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> cond = head.apply(params, jnp.ones((5, 4)))              # a DiagonalConditionalMixture
      >>> cond.mean().shape, cond.log_prob(jnp.zeros((5, 2))).shape
      ((5, 2), (5,))
    """

    num_components: int
    out_dim: int
    hidden: Sequence[int] = (128, 128)
    covariance: str = "diag"
    floor: float = 1e-3

    @nn.compact
    def __call__(self, c: jax.Array) -> ConditionalMixture | DiagonalConditionalMixture:
        if self.covariance not in COVARIANCES:
            raise ValueError(f"MDNHead covariance must be one of {COVARIANCES}, got {self.covariance!r}.")
        if c.ndim != 2:
            raise ValueError(f"MDNHead expects c of shape [N, d_c], got {tuple(c.shape)}.")
        k, d = self.num_components, self.out_dim
        h = c.astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.LayerNorm(name=f"norm_{i}")(nn.Dense(width, name=f"hidden_{i}")(h)))
        n = h.shape[0]
        logits = nn.Dense(k, name="logits")(h)
        means = nn.Dense(k * d, name="means")(h).reshape(n, k, d)
        if self.covariance == "diag":
            raw = nn.Dense(k * d, name="scales")(h).reshape(n, k, d)
            scales = jax.nn.softplus(raw) + self.floor
            return DiagonalConditionalMixture(jax.nn.log_softmax(logits), means, scales)
        raw = nn.Dense(k * d * d, name="scale_trils")(h).reshape(n, k, d, d)
        scale_tril = linalg.scale_tril_from_unconstrained(raw, self.floor)
        return ConditionalMixture(jax.nn.log_softmax(logits), means, scale_tril)
