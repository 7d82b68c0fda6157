"""GMJE-MDN: a mixture density network p(t | c) on the context embedding.

With pooled_eps_rel > 0 every predicted component is widened by pooled_eps_rel times the
targets' average variance (an EMA over past batches, in the method state): without that
floor the head can win without bound by packing the targets into K tight clusters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax.methods.base import Method
from gje_jax.methods.shared import FLOOR, MOMENTUM, NUM_COMPONENTS, POOLED_EPS_REL, geometry_settings, target_geometry
from gje_jax.models import MDNHead
from gje_jax.models.heads import COVARIANCES
from gje_jax.settings import choice, widths

TITLE = "GMJE-MDN"
SETTINGS = {
    "num_components": NUM_COMPONENTS,
    "mdn_covariance": choice("diag", "covariance of the predicted components: diag | full", COVARIANCES),
    "mdn_hidden": widths((128,), "hidden layer widths of the MDN head"),
    "floor": FLOOR,
    **geometry_settings(),
    "pooled_eps_rel": POOLED_EPS_REL,
    "momentum": MOMENTUM.only_when(lambda s: s.pooled_eps_rel > 0, "pooled_eps_rel > 0 (the targets' variance EMA)"),
}
SMOKE = {"num_components": 3, "mdn_hidden": (16,)}
IDENTITY = ("num_components", "mdn_covariance", "mdn_hidden")


def mean_variance(t: jax.Array) -> jax.Array:
    """Average per-dimension variance of a batch [N, d] (stop-gradient) -> [].

    Example:
      >>> from gje_jax.methods.gmje_mdn import mean_variance
      >>> float(mean_variance(jnp.array([[0.0, 0.0], [2.0, 2.0]])))
      1.0
    """
    return jnp.mean(jnp.var(jax.lax.stop_gradient(t), axis=0))


def build(s) -> Method:
    """The GMJE-MDN Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje_mdn", num_components=2, mdn_hidden=(8,)))
      >>> params, state = method.init(jax.random.key(0), 3, 1)
      >>> method.conditional(params, state, jnp.zeros((5, 3))).means.shape   # p(t | c): [N, K, d_t]
      (5, 2, 1)
    """
    rel = s.pooled_eps_rel

    def head(dt: int) -> MDNHead:
        return MDNHead(
            num_components=s.num_components,
            out_dim=dt,
            hidden=tuple(s.mdn_hidden),
            covariance=s.mdn_covariance,
            floor=s.floor,
        )

    def init(key, dc, dt):
        params = {"mdn": head(dt).init(key, jnp.zeros((1, dc)))["params"]}
        return params, ({"target_var": jnp.zeros(())} if rel else {})

    def apply(params, c):
        dt = params["mdn"]["means"]["kernel"].shape[-1] // s.num_components
        return head(dt).apply({"params": params["mdn"]}, c)

    def conditional(params, state, c):
        cond = apply(params, c)
        return cond.add_variance(rel * state["target_var"]) if rel else cond

    def loss(params, state, emb):
        cond = apply(params, emb.context)
        if rel:
            # Past batches' variance; the very first step (no history yet) uses its own.
            var = jnp.where(state["target_var"] > 0, state["target_var"], mean_variance(emb.target))
            cond = cond.add_variance(rel * var)
        nll = -jnp.mean(cond.log_prob(emb.target))
        # A conditional NLL pairs with the target-block geometry term (scale invariance).
        geo = target_geometry(s, emb.target, s.lambda_geo)
        loss = nll - s.lambda_geo * geo
        return loss, {"loss": loss, "nll": nll, "geometry": geo}

    def update(state, emb, online, key):
        if not rel:
            return state, {}
        old, var = state["target_var"], mean_variance(emb.target)
        return {"target_var": jnp.where(old > 0, s.momentum * old + (1 - s.momentum) * var, var)}, {}

    return Method("gmje_mdn", init, loss, update, conditional=conditional)
