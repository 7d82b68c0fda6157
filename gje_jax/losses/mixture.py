"""GMJE: the joint Gaussian-mixture loss for prototype parameters (METHOD section 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import _validation as v
from gje_jax import gaussian as g
from gje_jax.losses.gaussian import check_views, geometry_term, target_geometry_term
from gje_jax.mixture import GaussianMixture, component_log_probs

OBJECTIVES = ("joint", "conditional")


def balance_term(resp: jax.Array, log_weights: jax.Array) -> jax.Array:
    """KL(mean_i gamma_i. || pi): resp [N, K] responsibilities, log_weights [K] (normalised
    inside). Zero when components are used in proportion to their weights. -> [].

    Example:
      >>> resp = jnp.array([[1.0, 0.0], [0.0, 1.0]])               # both components used equally
      >>> float(gje_jax.losses.balance_term(resp, jnp.log(jnp.array([0.5, 0.5]))))
      0.0
    """
    gbar = jnp.mean(resp, axis=0)
    log_pi = jax.nn.log_softmax(log_weights)
    # Components with log-weight -inf (inactive GNG nodes, empty slots) have gbar = 0;
    # both guards keep 0 * inf out of the value and the gradient.
    used = (gbar > 0) & jnp.isfinite(log_pi)
    safe_pi = jnp.where(used, log_pi, 0.0)
    return jnp.sum(jnp.where(used, gbar * (jnp.log(jnp.where(used, gbar, 1.0)) - safe_pi), 0.0))


def gmje_loss(
    c: jax.Array,
    t: jax.Array,
    mixture: GaussianMixture,
    *,
    objective: str = "joint",
    lambda_geo: float = 0.0,
    lambda_bal: float = 0.0,
    eps_rel: float = g.DEFAULT_EPS_REL,
    eps_abs: float = g.DEFAULT_EPS_ABS,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GMJE loss of a batch under a joint mixture whose parameters are NOT batch statistics.

    Args:
      c: [N, d_c]; t: [N, d_t].
      mixture: GaussianMixture over D = d_c + d_t (K prototypes; e.g. built with
        `GaussianMixture.from_unconstrained` from trainable parameters).
      objective: 'joint' (mean -log p(z_i)) or 'conditional' (mean -log p(t_i | c_i)).
      lambda_geo: weight of the geometry term (subtracted): G(c, t) with the joint
        objective, G_t(t) = 1/2 log|S_tt| with the conditional one (each matches its
        NLL's scaling, so the loss is invariant to a global rescaling).
      lambda_bal: weight of KL(mean_i gamma_i || pi) against dead components.
      eps_rel, eps_abs: ridge of the geometry term's covariances.

    Returns:
      (loss [], metrics): 'loss', 'nll', 'geometry', 'balance', 'mahalanobis' (the
      responsibility-weighted mean squared distance) and 'components_used' (exp of the
      entropy of the mean responsibilities, between 1 and K).

    Example:
      >>> gm = gje_jax.GaussianMixture.from_unconstrained(jnp.zeros(4), jax.random.normal(jax.random.key(0), (4, 3)),
      ...                                                 jnp.zeros((4, 3, 3)))
      >>> c, t = jax.random.normal(jax.random.key(1), (64, 1)), jax.random.normal(jax.random.key(2), (64, 2))
      >>> loss, metrics = gje_jax.gmje_loss(c, t, gm, objective="joint", lambda_bal=0.1)
      >>> loss.shape, 1.0 <= float(metrics["components_used"]) <= 4.0
      ((), True)
    """
    c, t = check_views(c, t)
    mixture.validate()  # shapes, and NaN/Inf in the parameters when called eagerly
    d = c.shape[1] + t.shape[1]
    if mixture.dim != d:
        raise ValueError(f"mixture has D = {mixture.dim} but c {tuple(c.shape)} and t {tuple(t.shape)} give D = {d}.")
    z = jnp.concatenate([c, t], axis=-1)
    comp, maha = component_log_probs.unchecked(z, mixture.means, mixture.scale_tril)
    joint_logits = mixture.normalized_log_weights() + comp
    resp = jax.nn.softmax(joint_logits, axis=-1)
    if objective == "joint":
        nll = -jnp.mean(jax.nn.logsumexp(joint_logits, axis=-1))
        bal_resp = resp
    elif objective == "conditional":
        cond = mixture.condition(c, split=c.shape[1])
        nll = -jnp.mean(cond.log_prob(t))
        bal_resp = jnp.exp(cond.log_weights)
    else:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if v.is_zero(lambda_geo):
        geo = jnp.zeros((), z.dtype)
    elif objective == "joint":
        geo = geometry_term.unchecked(c, t, eps_rel=eps_rel, eps_abs=eps_abs)
    else:  # the conditional NLL scales with d_t only: pair it with G_t
        geo = target_geometry_term.unchecked(t, eps_rel=eps_rel, eps_abs=eps_abs)
    bal = balance_term(bal_resp, mixture.log_weights)
    loss = nll - lambda_geo * geo + lambda_bal * bal
    gbar = jnp.mean(jax.lax.stop_gradient(resp), axis=0)
    used = jnp.exp(-jnp.sum(jnp.where(gbar > 0, gbar * jnp.log(jnp.where(gbar > 0, gbar, 1.0)), 0.0)))
    metrics = {
        "loss": loss,
        "nll": nll,
        "geometry": geo,
        "balance": bal,
        "mahalanobis": jnp.mean(jnp.sum(jax.lax.stop_gradient(resp) * maha, axis=-1)),
        "components_used": used,
    }
    return loss, metrics
