"""GMJE by online EM: the prototypes are stop-gradient state fitted by EM on the joint
embeddings; only the encoder is trained (its loss is the mixture NLL of the batch)."""

from __future__ import annotations

from gje_jax.methods.base import Method
from gje_jax.methods.shared import (
    DEAD_THRESHOLD,
    EM_MOMENTUM,
    NUM_COMPONENTS,
    OBJECTIVE,
    POOLED_EPS_REL,
    POOLED_SHAPE,
    geometry_settings,
    mixture_loss,
)
from gje_jax.remedies import em
from gje_jax.remedies.reseed import PLACES
from gje_jax.settings import Setting, choice

TITLE = "GMJE online EM"
SETTINGS = {
    "num_components": NUM_COMPONENTS,
    "objective": OBJECTIVE,
    **geometry_settings(),
    "em_momentum": EM_MOMENTUM,
    "dead_threshold": DEAD_THRESHOLD,
    "reseed_at": choice(
        "best",
        "where a dead component is re-seeded: best (both of the below, keeping the one under which the batch "
        "is more likely) | split (it and the live component that best explains a badly explained sample become "
        "that component's two halves) | sample (at a badly explained batch sample, with the live components' "
        "average covariance)",
        ("best",) + PLACES,
    ),
    "reseed_weight": choice(
        "earned",
        "prior weight of a component re-seeded at a sample: earned (its mean responsibility on the batch) | "
        "uniform (1 / K, the behaviour before December 2026, kept so the image tables made with it reproduce)",
        em.RESEED_WEIGHTS,
        when=(lambda s: s.reseed_at != "split", "reseed_at='sample' or 'best'"),
    ),
    "split_merge": Setting(
        False,
        "when no component is dead: every step, merge the lightest component into its nearest and split the "
        "one that best explains a badly explained sample (proposed and placed on half of the batch, kept where "
        "the other half is more likely than under the unmoved mixture given the same refit). A component "
        "spanning two clusters is never dead, so re-seeding alone leaves it. Off by default: with an encoder "
        "trained against the mixture it helped on the full-size k_branch task at 2 of 3 seeds and hurt on "
        "two_branch and ring (README, 'The density a method hands out')",
        "bool",
    ),
    "pooled_eps_rel": POOLED_EPS_REL,
    "pooled_shape": POOLED_SHAPE,
}
SMOKE = {"num_components": 3}
IDENTITY = ("num_components",)


def build(s) -> Method:
    """The online-EM GMJE Method for settings s (see SETTINGS).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje_em", num_components=2))
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> params, method.density(params, state).num_components    # no gradient parameters
      ({}, 2)
    """

    def init(key, dc, dt):
        return {}, {"em": em.EMState.create(key, s.num_components, dc + dt)}

    def density(params, state):
        return state["em"].mixture()

    def update(state, emb, online, key):
        new, metrics = em.update(
            state["em"],
            emb.joint(),
            key,
            momentum=s.em_momentum,
            dead_threshold=s.dead_threshold or None,
            eps_rel=s.eps_rel,
            eps_abs=s.eps_abs,
            pooled_eps_rel=s.pooled_eps_rel,
            pooled_shape=s.pooled_shape,
            reseed_at=s.reseed_at,
            reseed_weight=s.reseed_weight,
            split_merge=s.split_merge,
        )
        return {"em": new}, metrics

    def loss(params, state, emb):
        return mixture_loss(s, emb, density(params, state))

    return Method("gmje_em", init, loss, update, density=density)
