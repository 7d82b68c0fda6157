"""Contrastive learning as a degenerate GMJE (METHOD section 8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import linalg
from gje_jax.losses import _common


def _cross_entropy_diag(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean -log softmax(logits)_ii over rows, and top-1 accuracy of the diagonal."""
    n = logits.shape[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    diag = jnp.diagonal(logp[:, :n])
    acc = jnp.mean(jnp.argmax(logits, axis=-1) == jnp.arange(n))
    return -jnp.mean(diag), acc


def infonce(
    c: jax.Array,
    t: jax.Array,
    *,
    tau: float = 0.1,
    symmetric: bool = False,
    normalize: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """InfoNCE: -(1/N) sum_i log softmax_j(c_i . t_j / tau)_i.

    Args:
      c, t: [N, d] paired embeddings (row i of each is a positive pair).
      tau: temperature.
      symmetric: average the c->t and t->c directions (as in CLIP).
      normalize: project both onto the unit sphere first (cosine similarities).

    Returns:
      (loss [], metrics {'loss', 'accuracy'}), accuracy = top-1 retrieval of the pair.

    Example:
      >>> c = jnp.eye(4)
      >>> loss, metrics = gje_jax.infonce(c, c, tau=0.1)           # perfect pairs: loss near 0
      >>> round(float(loss), 3), float(metrics["accuracy"])
      (0.0, 1.0)
    """
    c, t = _common.check_pair(c, t)
    v.check_number(tau, "tau", low=0.0, low_open=True)
    if normalize:
        c, t = _common.normalize(c), _common.normalize(t)
    logits = (c @ t.T) / tau
    loss, acc = _cross_entropy_diag(logits)
    if symmetric:
        loss_t, acc_t = _cross_entropy_diag(logits.T)
        loss, acc = 0.5 * (loss + loss_t), 0.5 * (acc + acc_t)
    return loss, {"loss": loss, "accuracy": acc}


def gmje_contrastive(
    c: jax.Array,
    t: jax.Array,
    *,
    tau: float | None = None,
    covariance: jax.Array | None = None,
    scale_tril: jax.Array | None = None,
    log_weights: jax.Array | None = None,
    extra_targets: jax.Array | None = None,
    extra_log_weights: jax.Array | None = None,
    normalize: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Component identification under a non-parametric mixture over the targets.

    The candidates are the batch targets t_j (and optional extra ones, e.g. an SMC
    bank), each a Gaussian kernel N(. | t_j, Sigma) with prior weight w_j. The loss is
    -(1/N) sum_i log r_ii with r_ij = softmax_j(log w_j - 1/2 |c_i - t_j|^2_{Sigma^-1}).
    With Sigma = tau I, uniform w and unit vectors it equals `infonce(c, t, tau=tau)`.

    Args:
      c, t: [N, d] paired embeddings.
      tau: isotropic kernel variance (Sigma = tau I). Exactly one of tau, covariance,
        scale_tril must be given.
      covariance: [d, d] shared kernel covariance (a learned, anisotropic temperature).
      scale_tril: [d, d] its Cholesky factor, if already available.
      log_weights: [N] prior log-weights of the batch targets (default uniform).
      extra_targets: [M, d] extra candidates, never positives.
      extra_log_weights: [M] their prior log-weights (default uniform).
      normalize: project c, t and extra_targets onto the unit sphere.

    Returns:
      (loss [], metrics {'loss', 'accuracy'}).

    Example:
      >>> c, t = jax.random.normal(jax.random.key(0), (2, 32, 8))
      >>> c, t = c / jnp.linalg.norm(c, axis=1, keepdims=True), t / jnp.linalg.norm(t, axis=1, keepdims=True)
      >>> a = gje_jax.gmje_contrastive(c, t, tau=0.1)[0]          # isotropic tau I on unit vectors
      >>> b = gje_jax.infonce(c, t, tau=0.1)[0]
      >>> bool(jnp.allclose(a, b, atol=1e-5))
      True
    """
    c, t = _common.check_pair(c, t)
    n, d = c.shape
    if sum(x is not None for x in (tau, covariance, scale_tril)) != 1:
        raise ValueError("Give exactly one of tau, covariance or scale_tril.")
    cands = t
    if extra_targets is not None:
        extra_targets = v.as_float(extra_targets, "extra_targets")
        v.check_rank(extra_targets, 2, "extra_targets", "[M, d]")
        if extra_targets.shape[1] != d:
            raise ValueError(f"extra_targets has d = {extra_targets.shape[1]} but c has d = {d}.")
        cands = jnp.concatenate([t, extra_targets], axis=0)
    if normalize:
        c, cands = _common.normalize(c), _common.normalize(cands)
    m = cands.shape[0]
    lw = jnp.zeros((n,), c.dtype) if log_weights is None else v.as_float(log_weights, "log_weights")
    if lw.shape != (n,):
        raise ValueError(f"log_weights must have shape [N] = ({n},), got {tuple(lw.shape)}.")
    if m > n:
        elw = (
            jnp.zeros((m - n,), c.dtype)
            if extra_log_weights is None
            else v.as_float(extra_log_weights, "extra_log_weights")
        )
        if elw.shape != (m - n,):
            raise ValueError(f"extra_log_weights must have shape [M] = ({m - n},), got {tuple(elw.shape)}.")
        lw = jnp.concatenate([lw, elw])
    if tau is not None:
        u, w_c = c / jnp.sqrt(tau), cands / jnp.sqrt(tau)
    else:
        if scale_tril is None:
            covariance = v.as_float(covariance, "covariance")
            if covariance.shape != (d, d):
                raise ValueError(f"covariance must have shape {(d, d)}, got {tuple(covariance.shape)}.")
            scale_tril = linalg.cholesky(covariance)
        scale_tril = v.as_float(scale_tril, "scale_tril")
        if scale_tril.shape != (d, d):
            raise ValueError(f"scale_tril must have shape {(d, d)}, got {tuple(scale_tril.shape)}.")
        w = linalg.tril_inverse(scale_tril)
        u, w_c = c @ w.T, cands @ w.T
    # -1/2 |u_i - v_j|^2 = u_i.v_j - |v_j|^2/2 - |u_i|^2/2; the last is constant in j and
    # dropped (softmax over j ignores it). One [N, M] matmul, no [N, M, d] differences.
    logits = lw + u @ w_c.T - 0.5 * jnp.sum(w_c * w_c, axis=-1)
    loss, acc = _cross_entropy_diag(logits)
    return loss, {"loss": loss, "accuracy": acc}
