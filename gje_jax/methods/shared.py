"""Settings and loss pieces that several methods read (declared once, so a setting means
the same thing wherever it appears)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gje_jax import losses
from gje_jax._validation import is_zero
from gje_jax.gaussian import POOLED_SHAPES
from gje_jax.losses.mixture import OBJECTIVES
from gje_jax.methods.base import Embeddings
from gje_jax.mixture import GaussianMixture
from gje_jax.settings import choice, fraction, integer, nonnegative, positive

LAMBDA_GEO = nonnegative(1.0, "weight of the geometry term (1 makes the NLL scale-invariant; 0 is the naive loss)")
EPS_REL = nonnegative(1e-4, "ridge of every covariance estimate, relative to its average variance")
EPS_ABS = nonnegative(1e-6, "absolute ridge of every covariance estimate")
FLOOR = positive(1e-3, "minimum Cholesky diagonal of a learned density")
NUM_COMPONENTS = integer(8, "number of mixture components K")
OBJECTIVE = choice("joint", "what the mixture NLL scores: the joint [c ; t] or p(t | c)", OBJECTIVES)
MOMENTUM = fraction(0.99, "EMA momentum of running statistics")
DEAD_THRESHOLD = nonnegative(0.0, "weight below which a component is re-seeded; 0 = 1 / (10 K)")
EM_MOMENTUM = fraction(0.9, "EMA momentum of the mixture's sufficient statistics")
POOLED_EPS_REL = nonnegative(
    0.0,
    "ridge on every component of pooled_eps_rel x the average variance of the embeddings: a floor on how "
    "tight a component may get relative to the embeddings' spread (0: none)",
)
POOLED_SHAPE = choice(
    "isotropic",
    "shape of the pooled ridge: isotropic (average variance x I) | covariance (the mixture's total "
    "covariance: keeps the views' correlation, so the direction in which aligned views differ stays tight)",
    POOLED_SHAPES,
    when=(lambda s: s.pooled_eps_rel > 0, "pooled_eps_rel > 0"),
)


def geometry_settings(**overrides) -> dict:
    """{'lambda_geo', 'eps_rel', 'eps_abs'}: the geometry term's settings (overrides replace a spec).

    Example:
      >>> from gje_jax.methods.shared import geometry_settings
      >>> sorted(geometry_settings())
      ['eps_abs', 'eps_rel', 'lambda_geo']
    """
    return {"lambda_geo": LAMBDA_GEO, "eps_rel": EPS_REL, "eps_abs": EPS_ABS, **overrides}


def mixture_loss(s, emb: Embeddings, mixture: GaussianMixture, lambda_bal: float = 0.0):
    """gmje_loss of the two views against `mixture` with the method's settings s
    (objective, lambda_geo, eps_rel, eps_abs) -> (loss, metrics).

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.shared import mixture_loss
      >>> s = methods.default_settings("gmje_em", num_components=2)
      >>> gm = gje_jax.GaussianMixture(jnp.zeros(2), jnp.zeros((2, 4)), jnp.broadcast_to(jnp.eye(4), (2, 4, 4)))
      >>> loss, metrics = mixture_loss(s, methods.Embeddings(jnp.ones((8, 2)), jnp.zeros((8, 2))), gm)
      >>> loss.shape
      ()
    """
    return losses.gmje_loss(
        emb.context,
        emb.target,
        mixture,
        objective=s.objective,
        lambda_geo=s.lambda_geo,
        lambda_bal=lambda_bal,
        eps_rel=s.eps_rel,
        eps_abs=s.eps_abs,
    )


def target_geometry(s, t: jax.Array, weight) -> jax.Array:
    """The target-block geometry term of t [N, d_t] when `weight` is not zero, else 0 -> [].

    A conditional NLL (MDN, the SMC kernel NLL) pairs with this term for scale invariance.

    Example:
      >>> from gje_jax import methods
      >>> from gje_jax.methods.shared import target_geometry
      >>> s = methods.default_settings("gmje_mdn")
      >>> float(target_geometry(s, jnp.ones((8, 2)), 0.0))
      0.0
    """
    if is_zero(weight):
        return jnp.zeros((), t.dtype)
    return losses.target_geometry_term(t, eps_rel=s.eps_rel, eps_abs=s.eps_abs)
