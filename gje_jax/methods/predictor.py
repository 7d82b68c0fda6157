"""The deterministic predictor baseline (JEPA/BYOL): a head on the online embeddings,
regressed on the EMA target network's embeddings of the other view."""

from __future__ import annotations

import jax.numpy as jnp

from gje_jax import losses
from gje_jax.methods.base import Method
from gje_jax.models import Predictor
from gje_jax.settings import choice, fraction, widths

TITLE = "predictor"
SETTINGS = {
    "predictor_loss": choice("cosine", "distance to the target: mse | cosine (BYOL's 2 - 2 cos)", ("mse", "cosine")),
    "predictor_hidden": widths((256,), "hidden layer widths of the predictor head"),
    "predictor_norm": choice("ln", "norm of the head's hidden layers: ln | bn (BYOL's) | none", ("ln", "bn", "none")),
    "target_momentum": fraction(0.99, "EMA momentum of the target network"),
}
SMOKE = {"predictor_hidden": (16,)}
IDENTITY = ("predictor_norm", "predictor_hidden")


def build(s) -> Method:
    """The predictor Method for settings s (see SETTINGS).

    With predictor_norm = 'bn' (BYOL's head) the head always normalises with the current
    batch's statistics: it only runs in training, so running averages would never be read,
    and flax creates (then the loss discards) its batch_stats on each call: no state.

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("predictor", predictor_hidden=(8,)))
      >>> params, _ = method.init(jax.random.key(0), 4, 4)
      >>> x = jnp.ones((2, 4))
      >>> method.target_network, method.loss(params, {}, methods.Embeddings(x, x, x, x))[0].shape
      (True, ())
    """

    def head(e):
        return Predictor(hidden=tuple(s.predictor_hidden), out_dim=e, norm=s.predictor_norm)

    def init(key, e, _):
        return {"predictor": head(e).init(key, jnp.zeros((1, e)), train=False)["params"]}, {}

    def loss(params, state, emb):
        e = emb.context.shape[1]

        def pred(x):
            return head(e).apply({"params": params["predictor"]}, x, train=True, mutable=["batch_stats"])[0]

        la, _ = losses.predictor_loss(pred(emb.context), emb.target_ema, kind=s.predictor_loss)
        lb, _ = losses.predictor_loss(pred(emb.target), emb.context_ema, kind=s.predictor_loss)
        loss = 0.5 * (la + lb)
        return loss, {"loss": loss}

    return Method("predictor", init, loss, target_momentum=s.target_momentum)
