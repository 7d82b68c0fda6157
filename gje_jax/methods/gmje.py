"""Prototype GMJE: K learnable Gaussian components over [c ; t], trained by SGD with the
encoder (METHOD section 3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import linalg
from gje_jax.methods.base import Method
from gje_jax.methods.shared import FLOOR, NUM_COMPONENTS, OBJECTIVE, geometry_settings, mixture_loss
from gje_jax.mixture import GaussianMixture
from gje_jax.settings import nonnegative

TITLE = "GMJE prototypes (SGD)"
SETTINGS = {
    "num_components": NUM_COMPONENTS,
    "objective": OBJECTIVE,
    **geometry_settings(),
    "lambda_bal": nonnegative(0.1, "weight of the balance term KL(mean responsibility || prior weights)"),
    "floor": FLOOR,
}
SMOKE = {"num_components": 3}
IDENTITY = ("num_components",)


def build(s) -> Method:
    """The prototype GMJE Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje", num_components=3))
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> method.density(params, state).num_components
      3
    """

    def init(key, dc, dt):
        d, k = dc + dt, s.num_components
        params = {
            "logits": jnp.zeros((k,)),
            "means": jax.random.normal(key, (k, d)),
            "raw": jnp.broadcast_to(linalg.unconstrained_from_scale_tril(jnp.eye(d), s.floor), (k, d, d)),
        }
        return params, {}

    def density(params, state):
        return GaussianMixture.from_unconstrained(params["logits"], params["means"], params["raw"], s.floor)

    def loss(params, state, emb):
        return mixture_loss(s, emb, density(params, state), s.lambda_bal)

    return Method("gmje", init, loss, density=density)
