"""TrainState, optimiser and the pure train step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from gje_jax.train.methods import Embeddings, Method, ema_update


class TrainState(train_state.TrainState):
    """params = {'encoder': ..., 'method': ...}; batch_stats of the encoder's batch-norm
    layers; method_state = everything non-gradient (EMA statistics, EMA target network,
    later the GNG graph and the SMC bank). All of it is checkpointed."""

    batch_stats: Any
    method_state: Any


def make_optimizer(o, num_steps: int) -> optax.GradientTransformation:
    """o: config.optim (name adamw|lars|sgd, lr, weight_decay, warmup_steps, schedule
    cosine|constant, grad_clip, momentum)."""
    warmup = min(o.warmup_steps, max(num_steps - 1, 0))
    if o.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(num_steps, warmup + 1))
    elif o.schedule == "constant":
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, max(warmup, 1)), optax.constant_schedule(o.lr)], [max(warmup, 1)]
        )
    else:
        raise ValueError(f"config.optim.schedule={o.schedule!r} is unknown; valid: ['constant', 'cosine'].")
    if o.name == "adamw":
        opt = optax.adamw(lr, weight_decay=o.weight_decay)
    elif o.name == "lars":
        opt = optax.lars(lr, weight_decay=o.weight_decay, momentum=o.momentum)
    elif o.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(lr, momentum=o.momentum))
    else:
        raise ValueError(f"config.optim.name={o.name!r} is unknown; valid: ['adamw', 'lars', 'sgd'].")
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), opt) if o.grad_clip else opt


def with_probe_optimizer(tx: optax.GradientTransformation, probe_lr: float) -> optax.GradientTransformation:
    """tx for everything but params['probe'], which gets its own Adam (so the probe's
    gradients never enter the method's clipping or schedule)."""

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: "probe" if k == "probe" else "ssl", v) for k, v in params.items()}

    return optax.multi_transform({"ssl": tx, "probe": optax.adam(probe_lr)}, labels)


def create_state(
    key: jax.Array,
    network: nn.Module,
    method: Method,
    example_input: jax.Array,
    tx: optax.GradientTransformation,
    num_classes: int = 0,
) -> TrainState:
    """Initialises every pytree of the state. example_input: [B, ...] one view.

    num_classes > 0 adds an online linear probe, params['probe'] ({'kernel' [F, C],
    'bias' [C]}), trained on stop-gradient backbone features of the labelled batches."""
    k_enc, k_method = jax.random.split(key)
    variables = network.init(k_enc, example_input, train=False)
    emb, feats = jax.eval_shape(lambda v: network.apply(v, example_input, train=False, return_features=True), variables)
    embed_dim = emb.shape[-1]
    method_params, method_state = method.init(k_method, embed_dim, embed_dim)
    if method.target_network:
        method_state = dict(method_state, target=variables["params"])
    params = {"encoder": variables["params"], "method": method_params}
    if num_classes:
        f = feats.shape[-1]
        params["probe"] = {"kernel": jnp.zeros((f, num_classes)), "bias": jnp.zeros((num_classes,))}
    return TrainState.create(
        apply_fn=network.apply,
        params=params,
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        method_state=method_state,
    )


def probe_loss(probe_params, features: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy of the online linear probe on stop-gradient features [B, F]; labels int [B]."""
    logits = jax.lax.stop_gradient(features) @ probe_params["kernel"] + probe_params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return ce, {"probe_loss": ce, "probe_accuracy": acc}


def loss_and_updates(
    params, state: TrainState, view_a: jax.Array, view_b: jax.Array, method: Method, labels: jax.Array | None = None
):
    """The differentiable part of a step: -> (loss, (metrics, new batch_stats, Embeddings)).

    With params['probe'] and labels [B], the online probe's cross-entropy is added to the
    loss; its input is stop-gradient, so it trains only the probe."""
    n = view_a.shape[0]
    x = jnp.concatenate([view_a, view_b])  # One pass: batch-norm sees both views together.
    has_bn = bool(jax.tree.leaves(state.batch_stats))
    variables = {"params": params["encoder"], **({"batch_stats": state.batch_stats} if has_bn else {})}
    if has_bn:
        (out, feats), mutated = state.apply_fn(variables, x, train=True, mutable=["batch_stats"], return_features=True)
        new_bs = mutated["batch_stats"]
    else:
        out, feats = state.apply_fn(variables, x, train=True, return_features=True)
        new_bs = state.batch_stats
    a_t = b_t = None
    if method.target_network:
        tvars = {"params": state.method_state["target"], **({"batch_stats": state.batch_stats} if has_bn else {})}
        tout = jax.lax.stop_gradient(state.apply_fn(tvars, x, train=False))
        a_t, b_t = tout[:n], tout[n:]
    emb = Embeddings(out[:n], out[n:], a_t, b_t)
    loss, metrics = method.loss(params["method"], state.method_state, emb)
    if "probe" in params and labels is not None:
        ce, probe_metrics = probe_loss(params["probe"], feats[:n], labels)
        metrics = dict(metrics, **probe_metrics)
        return loss + ce, (metrics, new_bs, emb)
    return loss, (metrics, new_bs, emb)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    method: Method,
    views_fn: Callable,
    target_momentum: float = 0.99,
) -> tuple[TrainState, dict]:
    """One update; a pure function of (state, batch, key).

    batch: the global batch (e.g. {'x': [B, dim]} or {'image': [B, H, W, C]}).
    key: the run's seed key; the step's key is fold_in(key, state.step).
    Returns (new state, metrics dict of [] float32).
    """
    step_key = jax.random.fold_in(key, state.step)
    view_a, view_b = views_fn(batch, step_key)
    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)
    (loss, (metrics, new_bs, emb)), grads = grad_fn(state.params, state, view_a, view_b, method, batch.get("label"))
    new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    emb = jax.tree.map(jax.lax.stop_gradient, emb)
    method_state, update_metrics = method.update(
        state.method_state, emb, new_state.params, jax.random.fold_in(step_key, 1)
    )
    if method.target_network:
        method_state = dict(
            method_state, target=ema_update(method_state["target"], new_state.params["encoder"], target_momentum)
        )
    new_state = new_state.replace(method_state=method_state)
    metrics = dict(
        metrics,
        **update_metrics,
        loss=loss - metrics.get("probe_loss", 0.0),  # the method's loss, without the probe's
        grad_norm=jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))),
        embedding_std=jnp.mean(jnp.std(emb.a, axis=0)),
    )
    return new_state, metrics
