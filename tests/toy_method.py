"""A toy method, added the way README's "Adding a method" says (this module, one registry
line, its tests): the views' mean squared distance against a learned scale, with a running
mean of the embeddings as non-gradient state. tests/test_methods_generic.py registers it and
runs the generic checks on it."""

import jax.numpy as jnp

from gje_jax.methods.base import Method
from gje_jax.settings import fraction, positive

TITLE = "toy"
SETTINGS = {
    "weight": positive(1.0, "weight of the distance term"),
    "momentum": fraction(0.9, "EMA momentum of the running mean"),
}
SMOKE = {}
IDENTITY = ()


def build(s) -> Method:
    def init(key, dc, dt):
        return {"log_scale": jnp.zeros(())}, {"mean": jnp.zeros((dc + dt,))}

    def loss(params, state, emb):
        scale = jnp.exp(params["log_scale"])
        d2 = jnp.mean(jnp.sum((emb.context - emb.target) ** 2, axis=-1))
        # A scale-free distance plus a hinge that keeps the embeddings from collapsing.
        spread = jnp.mean(jnp.maximum(0.0, 1.0 - jnp.std(emb.joint(), axis=0)))
        loss = s.weight * d2 / scale + params["log_scale"] + spread
        return loss, {"loss": loss, "distance": d2}

    def update(state, emb, online, key):
        mean = s.momentum * state["mean"] + (1 - s.momentum) * jnp.mean(emb.joint(), axis=0)
        return {"mean": mean}, {"mean_norm": jnp.linalg.norm(mean)}

    return Method("toy", init, loss, update)
