"""The method protocol: `Method` (what the train step calls) and `Embeddings` (what it sees).

A method module (one per registered method, see gje_jax/methods/__init__.py) declares
SETTINGS (gje_jax.settings specs), SMOKE (the values that shrink it for a smoke run),
IDENTITY (settings whose change makes a checkpoint unusable), optionally `check(settings,
config)` for rules across sections, and `build(settings) -> Method`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gje_jax.conditional import ConditionalMixture, DiagonalConditionalMixture
from gje_jax.mixture import GaussianMixture


class Embeddings(NamedTuple):
    """What a method's loss sees: context / target view embeddings [N, E] of the online
    network, and the same two views through the EMA target network (None without one).

    Example:
      >>> from gje_jax.methods import Embeddings
      >>> emb = Embeddings(jnp.zeros((4, 8)), jnp.ones((4, 8)))   # the two views' embeddings
      >>> emb.context.shape, emb.context_ema is None
      ((4, 8), True)
    """

    context: jax.Array
    target: jax.Array
    context_ema: jax.Array | None = None
    target_ema: jax.Array | None = None

    def joint(self) -> jax.Array:
        """[N, 2E] the joint embedding [context ; target].

        Example:
          >>> from gje_jax.methods import Embeddings
          >>> Embeddings(jnp.zeros((4, 2)), jnp.ones((4, 3))).joint().shape
          (4, 5)
        """
        return jnp.concatenate([self.context, self.target], axis=-1)


def _no_update(state, emb, online, key):
    return state, {}


@dataclasses.dataclass(frozen=True)
class Method:
    """A training objective, the state it carries and what it can be asked.

    init(key, d_c, d_t) -> (method params, method state), for embeddings of the context
      and target views of widths d_c and d_t (equal in the shared-encoder setting);
    loss(params, state, emb) -> (loss, metrics);
    update(state, emb, online_params, key) -> (state, metrics), after the optimiser step,
      on stop-gradient embeddings of the global batch.
    Capabilities (read by experiments instead of method names):
    density(params, state) -> the GaussianMixture over [c ; t] the method holds; None when
      it holds none;
    conditional(params, state, c) -> p(t | c) for c [N, d_c], a ConditionalMixture or a
      DiagonalConditionalMixture (gje_jax.conditional); None when
      p(t | c) is density(...).condition(c) or there is no density;
    batch_density: its density is the Gaussian of the embeddings themselves (fitted to
      whatever embeddings it is asked about; GJE's batch estimator);
    sampler(params, state, key, n, e) -> [n, e] samples of the context marginal, when the
      method has a cheaper way than density(...).marginal(0, e).sample;
    predict(params, state, c) -> [N, d_t]: a point prediction of the target embedding from
      context embeddings c [N, d_c] (a deterministic predictor's head); None when absent;
    target_momentum: the EMA momentum of a target network the loss reads (None: none);
    lr_scale: multiplier of the learning rate of the method's own parameters
      (params['method']) relative to the encoder's, or a dict of multipliers per entry of
      params['method'] (`gje_jax.train.optim.scale_method_lr`).

    Example:
      >>> from gje_jax import methods
      >>> method = methods.build(methods.default_settings("gmje", num_components=3))
      >>> params, state = method.init(jax.random.key(0), 2, 2)
      >>> emb = methods.Embeddings(jnp.zeros((16, 2)), jnp.ones((16, 2)))
      >>> loss, metrics = method.loss(params, state, emb)
      >>> loss.shape, method.density(params, state).means.shape, method.probabilistic
      ((), (3, 4), True)
    """

    name: str
    init: Callable[[jax.Array, int, int], tuple[Any, Any]]
    loss: Callable[[Any, Any, Embeddings], tuple[jax.Array, dict]]
    update: Callable[[Any, Embeddings, Any, jax.Array], tuple[Any, dict]] = _no_update
    density: Callable[[Any, Any], GaussianMixture] | None = None
    conditional: Callable[[Any, Any, jax.Array], ConditionalMixture | DiagonalConditionalMixture] | None = None
    batch_density: bool = False
    sampler: Callable[[Any, Any, jax.Array, int, int], jax.Array] | None = None
    predict: Callable[[Any, Any, jax.Array], jax.Array] | None = None
    target_momentum: float | None = None
    lr_scale: float | dict[str, float] = 1.0

    @property
    def target_network(self) -> bool:
        return self.target_momentum is not None

    @property
    def probabilistic(self) -> bool:
        """Whether the method gives a density of its embeddings (learned or the batch Gaussian)."""
        return self.density is not None or self.conditional is not None or self.batch_density


def stateless_init(key, d_c: int, d_t: int):
    """init of a method with neither parameters nor state -> ({}, {}).

    Example:
      >>> from gje_jax.methods.base import stateless_init
      >>> stateless_init(jax.random.key(0), 4, 4)
      ({}, {})
    """
    return {}, {}


def ema_update(target, online, momentum: float):
    """target <- momentum * target + (1 - momentum) * online, leaf by leaf.

    Example:
      >>> from gje_jax.methods import ema_update
      >>> np.asarray(ema_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, momentum=0.9)["w"], float).round(4).tolist()   # 0.9 * 0 + 0.1 * 1
      [0.1, 0.1]
    """
    return optax.incremental_update(online, target, 1.0 - momentum)
