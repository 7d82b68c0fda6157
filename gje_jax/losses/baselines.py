"""Losses of the deterministic baselines (METHOD section 9): VICReg, Barlow Twins and a
JEPA/BYOL predictor."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax.losses import _common


def vicreg_loss(
    a: jax.Array,
    b: jax.Array,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[jax.Array, dict]:
    """VICReg (Bardes et al. 2022): invariance MSE + variance hinge + off-diagonal covariance.

    a, b: [N, d] embeddings of two views. Returns (loss [], metrics).

    Example:
      >>> a = jax.random.normal(jax.random.key(0), (128, 16))
      >>> loss, metrics = gje_jax.losses.vicreg_loss(a, a)         # identical views: no invariance term
      >>> float(metrics["invariance"]), loss.shape
      (0.0, ())
    """
    a, b = _common.check_pair(a, b)
    n, d = a.shape
    inv = jnp.mean(jnp.sum((a - b) ** 2, axis=-1)) / d

    def var_cov(x):
        x = x - jnp.mean(x, axis=0)
        std = jnp.sqrt(jnp.var(x, axis=0) + eps)
        cov = (x.T @ x) / max(n - 1, 1)
        off = cov - jnp.diag(jnp.diagonal(cov))
        return jnp.mean(jax.nn.relu(gamma - std)), jnp.sum(off**2) / d

    va, ca = var_cov(a)
    vb, cb = var_cov(b)
    var, cov = 0.5 * (va + vb), ca + cb
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}


def barlow_twins_loss(
    a: jax.Array, b: jax.Array, *, lambda_offdiag: float = 5e-3, eps: float = 1e-5
) -> tuple[jax.Array, dict]:
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation C of the two views'
    embeddings, each dimension standardised over the batch, pushed to the identity:
    sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2.

    a, b: [N, d] embeddings of two views (N >= 2). eps: added to the batch variance
    (as the reference's affine-free batch norm does). Returns (loss [], metrics).

    Example:
      >>> a = jax.random.normal(jax.random.key(0), (256, 8))
      >>> loss, metrics = gje_jax.losses.barlow_twins_loss(a, a)   # identical views: C_ii = 1
      >>> round(float(metrics["on_diagonal"]), 4)
      0.0
    """
    a, b = _common.check_pair(a, b)
    n, d = a.shape

    def standardise(x):
        x = x - jnp.mean(x, axis=0)
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=0) + eps)

    c = standardise(a).T @ standardise(b) / n
    diag = jnp.diagonal(c)
    on = jnp.sum((1.0 - diag) ** 2)
    off = jnp.sum(c * c) - jnp.sum(diag * diag)
    loss = on + lambda_offdiag * off
    return loss, {"loss": loss, "on_diagonal": on, "off_diagonal": off}


def predictor_loss(pred: jax.Array, target: jax.Array, *, kind: str = "cosine") -> tuple[jax.Array, dict]:
    """Distance of predictions [N, d] to stop-gradient targets [N, d]: 'mse' (mean squared
    error per example) or 'cosine' (2 - 2 cos, as in BYOL). Returns (loss [], metrics).

    Example:
      >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> float(gje_jax.losses.predictor_loss(x, 3 * x, kind="cosine")[0]), float(gje_jax.losses.predictor_loss(x, x, kind="mse")[0])
      (0.0, 0.0)
    """
    pred, target = _common.check_pair(pred, target)
    target = jax.lax.stop_gradient(target)
    if kind == "mse":
        loss = jnp.mean(jnp.sum((pred - target) ** 2, axis=-1))
    elif kind == "cosine":
        loss = jnp.mean(2.0 - 2.0 * jnp.sum(_common.normalize(pred) * _common.normalize(target), axis=-1))
    else:
        raise ValueError(f"kind must be 'mse' or 'cosine', got {kind!r}.")
    return loss, {"loss": loss}
