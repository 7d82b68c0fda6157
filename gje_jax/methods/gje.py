"""GJE: one Gaussian over the joint embedding [c ; t] (METHOD section 2).

estimator 'batch' fits it to each batch (with gradients; lambda_geo = 0 is the naive loss
that falls into the trace trap), 'ema' keeps running statistics, 'param' learns (mu, L) by SGD.
"""

from __future__ import annotations

import jax.numpy as jnp

from gje_jax import gaussian, linalg, losses
from gje_jax.losses.gaussian import ESTIMATORS
from gje_jax.methods.base import Method
from gje_jax.methods.shared import FLOOR, MOMENTUM, geometry_settings
from gje_jax.mixture import GaussianMixture
from gje_jax.settings import choice

TITLE = "GJE"
SETTINGS = {
    "estimator": choice("batch", "where the Gaussian comes from: batch | ema | param", ESTIMATORS),
    **geometry_settings(),
    "momentum": MOMENTUM.only_when(lambda s: s.estimator == "ema", "estimator='ema'"),
    "floor": FLOOR.only_when(lambda s: s.estimator == "param", "estimator='param'"),
}
SMOKE = {}
IDENTITY = ("estimator",)


def check(s, config) -> None:
    """Refuses a batch estimator without any ridge (its covariance may be singular).

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gje import check
      >>> try:
      ...     check(methods.default_settings("gje", eps_rel=0.0, eps_abs=0.0), None)
      ... except ValueError as e:
      ...     print(str(e).split(":")[0])
      config.method.eps_rel and eps_abs are both 0
    """
    if s.estimator == "batch" and s.eps_rel == 0 and s.eps_abs == 0:
        raise ValueError(
            "config.method.eps_rel and eps_abs are both 0: the batch covariance cannot be factorised "
            "safely; set eps_abs > 0."
        )


def build(s) -> Method:
    """The GJE Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gje", estimator="param"))
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> method.density(params, state).means.shape               # K = 1 over the 4-D joint
      (1, 4)
    """

    def init(key, dc, dt):
        d = dc + dt
        if s.estimator == "param":
            return {"mean": jnp.zeros((d,)), "raw": linalg.unconstrained_from_scale_tril(jnp.eye(d), s.floor)}, {}
        if s.estimator == "ema":
            return {}, {"stats": gaussian.GaussianStats.zeros(d)}
        return {}, {}

    def density(params, state):
        if s.estimator == "param":
            return GaussianMixture(
                jnp.zeros((1,)),
                params["mean"][None],
                linalg.scale_tril_from_unconstrained(params["raw"], s.floor)[None],
            )
        return state["stats"].to_gaussian(s.eps_rel, s.eps_abs)

    def loss(params, state, emb):
        held = None
        if s.estimator == "ema":
            held = state["stats"]
        elif s.estimator == "param":
            held = density(params, state)
        return losses.gje_loss(
            emb.context,
            emb.target,
            estimator=s.estimator,
            density=held,
            lambda_geo=s.lambda_geo,
            eps_rel=s.eps_rel,
            eps_abs=s.eps_abs,
        )

    def update(state, emb, online, key):
        if s.estimator != "ema":
            return state, {}
        return {"stats": state["stats"].update(emb.joint(), s.momentum)}, {}

    batch = s.estimator == "batch"
    return Method("gje", init, loss, update, density=None if batch else density, batch_density=batch)
