"""The TrainState (everything a checkpoint holds), its creation, and encoding with it."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from gje_jax.methods import Method


class TrainState(train_state.TrainState):
    """params = {'encoder': ..., 'method': ...}; batch_stats of the encoder's batch-norm
    layers; method_state = everything non-gradient (EMA statistics, EMA target network,
    later the GNG graph and the SMC bank). All of it is checkpointed.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> sorted(state.params), int(state.step)                   # encoder, method params; step count
      (['encoder', 'method'], 0)
    """

    batch_stats: Any
    method_state: Any
    # -1 while every update was finite. Otherwise the step whose update gave NaN/Inf and the
    # index of its first bad tensor in `guarded_paths` order; the state then stays the last
    # finite one (see train_step's guard), so that is what the loop saves.
    diverged_at: jax.Array
    diverged_tensor: jax.Array

    def checkpointed(self) -> dict:
        """The fields a checkpoint holds: every pytree field but the divergence record (which
        is -1 whenever a state is saved, so checkpoints keep the format they had before it)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("pytree_node", True) and f.name not in ("diverged_at", "diverged_tensor")
        }

    def restored(self, fields: dict) -> TrainState:
        """This state with checkpointed() fields read back, its divergence record reset."""
        # full_like keeps the fields' placement: an uncommitted jnp.int32(-1) is a different
        # input type to the jitted step, which then compiled a second program on resume.
        return self.replace(
            **fields,
            diverged_at=jnp.full_like(self.diverged_at, -1),
            diverged_tensor=jnp.full_like(self.diverged_tensor, -1),
        )

    def encode(self, x: jax.Array, *, features: bool = False) -> jax.Array:
        """Eval-mode embeddings [B, E] of one context-side view x [B, ...] (running batch-norm
        statistics, no augmentation), or the backbone's features [B, F] with features=True.

        Example:
          >>> from gje_jax.train.configs import smoke_config
          >>> from gje_jax.train import loop
          >>> config = smoke_config()
          >>> state, *_ = loop.setup(config)
          >>> x = jnp.zeros((3, config.data.dim))
          >>> state.encode(x).shape, state.encode(x, features=True).shape
          ((3, 8), (3, 8))
        """
        variables = {"params": self.params["encoder"]}
        if jax.tree.leaves(self.batch_stats):
            variables["batch_stats"] = self.batch_stats
        out, feats = self.apply_fn(variables, x, train=False, return_features=True)
        return feats if features else out


def create_state(
    key: jax.Array,
    network: nn.Module,
    method: Method,
    example_input: jax.Array,
    tx: optax.GradientTransformation,
    num_classes: int = 0,
    example_target: jax.Array | None = None,
) -> TrainState:
    """Initialises every pytree of the state. example_input: [B, ...] one (context) view;
    example_target: [B, ...] a target view (default: example_input; it differs only for a
    network whose target view is its own embedding, `Network(target='identity')`).

    num_classes > 0 adds an online linear probe, params['probe'] ({'kernel' [F, C],
    'bias' [C]}), trained on stop-gradient backbone features of the labelled batches.

    Example:
      >>> import optax
      >>> from gje_jax.models import MLP, Network
      >>> from gje_jax.train.state import create_state
      >>> from gje_jax import methods
      >>> state = create_state(jax.random.key(0), Network(MLP(hidden=(16,), out_dim=4)), methods.build({"name": "gje"}),
      ...                      jnp.zeros((2, 6)), optax.adam(1e-3))
      >>> state.params["encoder"]["backbone"]["out"]["kernel"].shape
      (16, 4)
    """
    k_enc, k_method = jax.random.split(key)
    variables = network.init(k_enc, example_input, train=False)
    target = example_input if example_target is None else example_target
    emb_c, emb_t, feats = jax.eval_shape(
        lambda v: network.apply(v, example_input, target, train=False, method="pair"), variables
    )
    method_params, method_state = method.init(k_method, emb_c.shape[-1], emb_t.shape[-1])
    if method.target_network:
        method_state = dict(method_state, target=variables["params"])
    params = {"encoder": variables["params"], "method": method_params}
    if num_classes:
        f = feats.shape[-1]
        params["probe"] = {"kernel": jnp.zeros((f, num_classes)), "bias": jnp.zeros((num_classes,))}
    state = TrainState.create(
        apply_fn=network.apply,
        params=params,
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        method_state=method_state,
        diverged_at=jnp.int32(-1),
        diverged_tensor=jnp.int32(-1),
    )
    # Checkpoints restore every leaf strongly typed; a weak-typed one here (create's python-int
    # step) made a resumed run's step a different program from the fresh run's (compiled anew).
    return jax.tree.map(_strongly_typed, state)


def _strongly_typed(x):
    x = jnp.asarray(x)
    return x.astype(x.dtype) if x.weak_type else x
