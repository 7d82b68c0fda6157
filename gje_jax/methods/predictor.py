"""The deterministic predictor baseline (JEPA/BYOL): a head on the online embeddings,
regressed on the EMA target network's embeddings of the other view."""

from __future__ import annotations

import jax.numpy as jnp

from gje_jax import losses
from gje_jax.methods.base import Method
from gje_jax.models import Predictor
from gje_jax.settings import Setting, choice, fraction, widths

TITLE = "predictor"
SETTINGS = {
    "predictor_loss": choice("cosine", "distance to the target: mse | cosine (BYOL's 2 - 2 cos)", ("mse", "cosine")),
    "predictor_hidden": widths((256,), "hidden layer widths of the predictor head"),
    "predictor_norm": choice("ln", "norm of the head's hidden layers: ln | bn (BYOL's) | none", ("ln", "bn", "none")),
    "target_momentum": fraction(0.99, "EMA momentum of the target network"),
    "symmetric": Setting(
        True,
        "both directions, averaged (BYOL: each view predicts the other's target); False: the "
        "context predicts the target only (JEPA; for views of different kinds or widths)",
        "bool",
    ),
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

    def head(d_t):
        return Predictor(hidden=tuple(s.predictor_hidden), out_dim=d_t, norm=s.predictor_norm)

    def init(key, d_c, d_t):
        if s.symmetric and d_c != d_t:
            raise ValueError(
                f"method.symmetric=True predicts each view from the other, which needs equal widths; "
                f"got context {d_c} and target {d_t}: set method.symmetric=False."
            )
        return {"predictor": head(d_t).init(key, jnp.zeros((1, d_c)), train=False)["params"]}, {}

    def predict(params, state, context):
        d_t = params["predictor"]["out"]["kernel"].shape[-1]
        return head(d_t).apply({"params": params["predictor"]}, context, train=True, mutable=["batch_stats"])[0]

    def loss(params, state, emb):
        la, _ = losses.predictor_loss(predict(params, state, emb.context), emb.target_ema, kind=s.predictor_loss)
        if not s.symmetric:
            return la, {"loss": la}
        lb, _ = losses.predictor_loss(predict(params, state, emb.target), emb.context_ema, kind=s.predictor_loss)
        loss = 0.5 * (la + lb)
        return loss, {"loss": loss}

    return Method("predictor", init, loss, predict=predict, target_momentum=s.target_momentum)
