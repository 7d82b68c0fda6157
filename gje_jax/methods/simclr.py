"""SimCLR: the symmetric InfoNCE loss between the two views (the contrastive baseline;
METHOD section 8 shows it is GMJE's degenerate limit)."""

from __future__ import annotations

from gje_jax import losses
from gje_jax.methods.base import Method, stateless_init
from gje_jax.settings import positive

TITLE = "SimCLR"
SETTINGS = {"tau": positive(0.1, "softmax temperature")}
SMOKE = {}
IDENTITY = ()


def build(s) -> Method:
    """The SimCLR Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("simclr", tau=0.2))
      >>> emb = methods.Embeddings(jnp.eye(4), jnp.eye(4))
      >>> bool(method.loss({}, {}, emb)[0] > 0), method.probabilistic
      (True, False)
    """
    return Method(
        "simclr", stateless_init, lambda p, st, emb: losses.infonce(emb.context, emb.target, tau=s.tau, symmetric=True)
    )
