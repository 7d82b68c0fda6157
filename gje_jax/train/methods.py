"""The method registry: config.method.name -> (parameter/state init, loss, state update).

A method sees the embeddings of both views and owns two pytrees in the TrainState:
`params['method']` (trained by the optimiser: GJE's `param` density, GMJE prototypes,
the predictor head) and `method_state` (never differentiated: EMA statistics, the EMA
target network). Everything is computed on the *global* batch inside one jit, so one
device and many devices give the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gje_jax import gaussian, linalg, losses
from gje_jax.mixture import GaussianMixture
from gje_jax.models import Predictor


class Embeddings(NamedTuple):
    """a, b: [N, E] online embeddings of the context and target views;
    a_target, b_target: [N, E] EMA-target-network embeddings (or None)."""

    a: jax.Array
    b: jax.Array
    a_target: jax.Array | None = None
    b_target: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    """init(key, embed_dim) -> (method params, method state);
    loss(params, state, emb) -> (loss, metrics);
    update(state, emb, online_params) -> state   (after the optimiser step, stop-gradient)."""

    name: str
    init: Callable[[jax.Array, int], tuple[Any, Any]]
    loss: Callable[[Any, Any, Embeddings], tuple[jax.Array, dict]]
    update: Callable[[Any, Embeddings, Any], Any] = lambda state, emb, online: state
    target_network: bool = False


def _gje(m) -> Method:
    def init(key, e):
        d = 2 * e
        if m.estimator == "param":
            return {"mean": jnp.zeros((d,)), "raw": linalg.unconstrained_from_scale_tril(jnp.eye(d), m.floor)}, {}
        if m.estimator == "ema":
            return {}, {"stats": gaussian.GaussianStats.zeros(d)}
        return {}, {}

    def loss(params, state, emb):
        density = None
        if m.estimator == "param":
            density = GaussianMixture(
                jnp.zeros((1,)),
                params["mean"][None],
                linalg.scale_tril_from_unconstrained(params["raw"], m.floor)[None],
            )
        elif m.estimator == "ema":
            density = state["stats"]
        return losses.gje_loss(
            emb.a,
            emb.b,
            estimator=m.estimator,
            density=density,
            lambda_geo=m.lambda_geo,
            eps_rel=m.eps_rel,
            eps_abs=m.eps_abs,
        )

    def update(state, emb, online):
        if m.estimator != "ema":
            return state
        return {"stats": state["stats"].update(jnp.concatenate([emb.a, emb.b], -1), m.momentum)}

    return Method("gje", init, loss, update)


def _gmje(m) -> Method:
    def init(key, e):
        d, k = 2 * e, m.num_components
        params = {
            "logits": jnp.zeros((k,)),
            "means": jax.random.normal(key, (k, d)),
            "raw": jnp.broadcast_to(linalg.unconstrained_from_scale_tril(jnp.eye(d), m.floor), (k, d, d)),
        }
        return params, {}

    def loss(params, state, emb):
        mix = GaussianMixture.from_unconstrained(params["logits"], params["means"], params["raw"], m.floor)
        return losses.gmje_loss(
            emb.a,
            emb.b,
            mix,
            objective=m.objective,
            lambda_geo=m.lambda_geo,
            lambda_bal=m.lambda_bal,
            eps_rel=m.eps_rel,
            eps_abs=m.eps_abs,
        )

    return Method("gmje", init, loss)


def _simclr(m) -> Method:
    return Method(
        "simclr", lambda key, e: ({}, {}), lambda p, s, emb: losses.infonce(emb.a, emb.b, tau=m.tau, symmetric=True)
    )


def _vicreg(m) -> Method:
    return Method(
        "vicreg",
        lambda key, e: ({}, {}),
        lambda p, s, emb: losses.vicreg_loss(
            emb.a, emb.b, sim_weight=m.vicreg_sim, var_weight=m.vicreg_var, cov_weight=m.vicreg_cov
        ),
    )


def _predictor(m) -> Method:
    # Layer-norm keeps the head stateless (no batch statistics to thread through).
    def head(e):
        return Predictor(hidden=tuple(m.predictor_hidden), out_dim=e, norm="ln")

    def init(key, e):
        return {"predictor": head(e).init(key, jnp.zeros((1, e)))["params"]}, {}

    def loss(params, state, emb):
        e = emb.a.shape[1]
        pred = lambda x: head(e).apply({"params": params["predictor"]}, x)
        la, ma = losses.predictor_loss(pred(emb.a), emb.b_target, kind=m.predictor_loss)
        lb, _ = losses.predictor_loss(pred(emb.b), emb.a_target, kind=m.predictor_loss)
        loss = 0.5 * (la + lb)
        return loss, {"loss": loss}

    return Method("predictor", init, loss, target_network=True)


# Explicit registry (a typo fails with the valid names; see `get_method`).
METHODS: dict[str, Callable[[Any], Method]] = {
    "gje": _gje,
    "gmje": _gmje,
    "simclr": _simclr,
    "vicreg": _vicreg,
    "predictor": _predictor,
}


def get_method(method_config) -> Method:
    name = method_config.name
    if name not in METHODS:
        raise ValueError(f"config.method.name={name!r} is unknown; valid methods: {sorted(METHODS)}.")
    return METHODS[name](method_config)


def ema_update(target, online, momentum: float):
    """target <- momentum * target + (1 - momentum) * online, leaf by leaf."""
    return optax.incremental_update(online, target, 1.0 - momentum)
