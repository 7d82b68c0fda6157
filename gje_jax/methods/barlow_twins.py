"""Barlow Twins: the two views' cross-correlation matrix pushed to the identity."""

from __future__ import annotations

from gje_jax import losses
from gje_jax.methods.base import Method, stateless_init
from gje_jax.settings import nonnegative

TITLE = "Barlow Twins"
SETTINGS = {
    "lambda_offdiag": nonnegative(
        5e-3, "weight of the off-diagonal (redundancy) term; Zbontar et al. use 5e-3 for 8192-D embeddings"
    ),
}
SMOKE = {}
IDENTITY = ()
# Like VICReg, it decorrelates the dimensions of a wide projector output.
WIDE_EMBEDDING = True


def build(s) -> Method:
    """The Barlow Twins Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("barlow_twins"))
      >>> x = jax.random.normal(jax.random.key(0), (256, 4))
      >>> round(float(method.loss({}, {}, methods.Embeddings(x, x))[1]["on_diagonal"]), 4)
      0.0
    """

    def loss(params, state, emb):
        return losses.barlow_twins_loss(emb.context, emb.target, lambda_offdiag=s.lambda_offdiag)

    return Method("barlow_twins", stateless_init, loss)
