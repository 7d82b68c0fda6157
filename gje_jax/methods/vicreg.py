"""VICReg: invariance, variance and covariance terms on the two views' embeddings."""

from __future__ import annotations

from gje_jax import losses
from gje_jax.methods.base import Method, stateless_init
from gje_jax.settings import nonnegative

TITLE = "VICReg"
SETTINGS = {
    "vicreg_sim": nonnegative(25.0, "weight of the invariance (MSE) term"),
    "vicreg_var": nonnegative(25.0, "weight of the variance hinge"),
    "vicreg_cov": nonnegative(1.0, "weight of the off-diagonal covariance term"),
}
SMOKE = {}
IDENTITY = ()
# Its covariance term regularises a wide expander (Bardes et al. 2022); recipes widen the
# embedding for methods that declare this.
WIDE_EMBEDDING = True


def build(s) -> Method:
    """The VICReg Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("vicreg"))
      >>> x = jax.random.normal(jax.random.key(0), (64, 4))
      >>> float(method.loss({}, {}, methods.Embeddings(x, x))[1]["invariance"])
      0.0
    """

    def loss(params, state, emb):
        return losses.vicreg_loss(
            emb.context, emb.target, sim_weight=s.vicreg_sim, var_weight=s.vicreg_var, cov_weight=s.vicreg_cov
        )

    return Method("vicreg", stateless_init, loss)
