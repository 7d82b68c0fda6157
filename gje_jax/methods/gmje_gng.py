"""GMJE-GNG: a Growing Neural Gas over the joint embeddings; its graph is the mixture
(nodes are components, inserted where the error accumulates)."""

from __future__ import annotations

from gje_jax.methods.base import Method
from gje_jax.methods.shared import (
    EM_MOMENTUM,
    FLOOR,
    OBJECTIVE,
    POOLED_EPS_REL,
    POOLED_SHAPE,
    geometry_settings,
    mixture_loss,
)
from gje_jax.remedies import gng
from gje_jax.settings import choice, fraction, integer

TITLE = "GMJE-GNG"
# Fritzke (1995) defaults.
SETTINGS = {
    "objective": OBJECTIVE,
    **geometry_settings(),
    "gng_capacity": integer(32, "most nodes the graph may grow to", low=2),
    "gng_eps_b": fraction(0.2, "step of the winning node towards a point", high_open=False),
    "gng_eps_n": fraction(0.006, "step of the winner's neighbours", high_open=False),
    "gng_max_age": integer(50, "edges older than this are removed"),
    "gng_insert_every": integer(100, "steps between node insertions"),
    "gng_alpha": fraction(0.5, "error decay of the two nodes split by an insertion", high_open=False),
    "gng_decay": fraction(0.995, "error decay of every node per step", high_open=False),
    "em_momentum": EM_MOMENTUM,
    "gng_covariance": choice("node", "component covariance: node (each node's own) | isotropic", ("node", "isotropic")),
    "gng_means": choice(
        "cells",
        "component means: cells (EMA of the mean of the inputs each node wins) | nodes (the node positions, "
        "biased by the neighbour updates; the behaviour before December 2026)",
        gng.MEANS,
    ),
    "floor": FLOOR,
    "pooled_eps_rel": POOLED_EPS_REL,
    "pooled_shape": POOLED_SHAPE,
}
SMOKE = {"gng_capacity": 8, "gng_insert_every": 20}
IDENTITY = ("gng_capacity", "gng_covariance")


def gng_config(s) -> gng.GNGConfig:
    """The GNGConfig of settings s.

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.gmje_gng import gng_config
      >>> gng_config(methods.default_settings("gmje_gng")).insert_every
      100
    """
    return gng.GNGConfig(
        eps_b=s.gng_eps_b,
        eps_n=s.gng_eps_n,
        max_age=s.gng_max_age,
        insert_every=s.gng_insert_every,
        alpha=s.gng_alpha,
        decay=s.gng_decay,
        momentum=s.em_momentum,
        covariance=s.gng_covariance,
        floor=s.floor**2,
        means=s.gng_means,
    )


def build(s) -> Method:
    """The GMJE-GNG Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje_gng", gng_capacity=4))
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> method.density(params, state).num_components             # one slot per possible node
      4
    """
    cfg = gng_config(s)

    def init(key, dc, dt):
        return {}, {"gng": gng.GNGState.create(s.gng_capacity, dc + dt, covariance=cfg.covariance)}

    def update(state, emb, online, key):
        new, metrics = gng.update(state["gng"], emb.joint(), cfg)
        return {"gng": new}, metrics

    def density(params, state):
        return gng.mixture(state["gng"], cfg.floor, s.pooled_eps_rel, s.pooled_shape)

    def loss(params, state, emb):
        return mixture_loss(s, emb, density(params, state))

    return Method("gmje_gng", init, loss, update, density=density)
