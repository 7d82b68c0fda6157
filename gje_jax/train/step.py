"""The pure train step: the loss of a batch (method + online probe), the update, the
finiteness guard and the debug checks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.experimental import checkify

from gje_jax import _validation
from gje_jax.methods import Embeddings, Method, ema_update
from gje_jax.train.state import TrainState


def probe_loss(probe_params, features: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy of the online linear probe on stop-gradient features [B, F]; labels int [B].

    Example:
      >>> from gje_jax.train.step import probe_loss
      >>> probe = {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}
      >>> ce, metrics = probe_loss(probe, jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
      >>> round(float(ce), 4)                                      # log 2: uniform logits
      0.6931
    """
    logits = jax.lax.stop_gradient(features) @ probe_params["kernel"] + probe_params["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == labels)
    return ce, {"probe_loss": ce, "probe_accuracy": acc}


def loss_and_updates(
    params, state: TrainState, view_a: jax.Array, view_b: jax.Array, method: Method, labels: jax.Array | None = None
):
    """The differentiable part of a step: -> (loss, (metrics, new batch_stats, Embeddings)).

    With params['probe'] and labels [B], the online probe's cross-entropy is added to the
    loss; its input is stop-gradient, so it trains only the probe. metrics['loss'] is the
    method's loss alone, metrics['probe_loss'] the probe's.

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> from gje_jax import methods
      >>> from gje_jax.train.step import loss_and_updates
      >>> a = b = jnp.zeros((8, config.data.dim))
      >>> f = jax.jit(loss_and_updates, static_argnames="method")
      >>> loss, (metrics, batch_stats, emb) = f(state.params, state, a, b, method=methods.build(config.method))
      >>> emb.context.shape[0], bool(jnp.isfinite(loss))
      (8, True)
    """
    has_bn = bool(jax.tree.leaves(state.batch_stats))
    variables = {"params": params["encoder"], **({"batch_stats": state.batch_stats} if has_bn else {})}
    if has_bn:
        (za, zb, feats), mutated = state.apply_fn(
            variables, view_a, view_b, train=True, mutable=["batch_stats"], method="pair"
        )
        new_bs = mutated["batch_stats"]
    else:
        za, zb, feats = state.apply_fn(variables, view_a, view_b, train=True, method="pair")
        new_bs = state.batch_stats
    a_t = b_t = None
    if method.target_network:
        tvars = {"params": state.method_state["target"], **({"batch_stats": state.batch_stats} if has_bn else {})}
        # The target normalises with the current batch's statistics, as the online network
        # does (BYOL): running averages belong to the online weights, not the EMA ones.
        # Its batch-norm updates are discarded.
        (a_t, b_t, _), _ = state.apply_fn(tvars, view_a, view_b, train=True, mutable=["batch_stats"], method="pair")
        a_t, b_t = jax.lax.stop_gradient((a_t, b_t))
    emb = Embeddings(za, zb, a_t, b_t)
    loss, metrics = method.loss(params["method"], state.method_state, emb)
    # metrics['loss'] is the method's loss alone; the probe reports its own.
    metrics = dict(metrics, loss=loss)
    if "probe" in params and labels is not None:
        ce, probe_metrics = probe_loss(params["probe"], feats, labels)
        return loss + ce, (dict(metrics, **probe_metrics), new_bs, emb)
    return loss, (metrics, new_bs, emb)


def check_finite(tree, name: str, step: jax.Array) -> None:
    """`checkify.check` that every floating leaf of `tree` is finite, naming the leaf.

    Only meaningful inside a function wrapped by `checkify.checkify`. Leaves that may
    legitimately hold -inf (log-weights of empty slots or inactive components) are
    checked for NaN and +inf only.

    Example:
      >>> from jax.experimental import checkify
      >>> from gje_jax.train.step import check_finite
      >>> def f(x):
      ...     check_finite({"x": x}, "inputs", step=jnp.int32(7))
      ...     return x
      >>> err, _ = checkify.checkify(f)(jnp.array([1.0, jnp.nan]))
      >>> "inputs['x']" in err.get() and "step 7" in err.get()
      True
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        where = name + jax.tree_util.keystr(path)
        ok = ~jnp.isnan(leaf) & (leaf != jnp.inf) if _validation.may_hold_neg_inf(where) else jnp.isfinite(leaf)
        bad = jnp.sum(~ok)
        checkify.check(
            jnp.all(ok),
            f"non-finite values in {where} (shape {tuple(leaf.shape)}): {{bad}} bad at step {{step}}",
            bad=bad,
            step=step,
        )


def _guarded(state: TrainState, loss: jax.Array) -> dict:
    return {"loss": loss, **state.checkpointed()}


def guarded_paths(state: TrainState) -> list[str]:
    """The names of the tensors train_step's guard checks, in the order of diverged_tensor.

    Example:
      >>> from gje_jax.train.step import guarded_paths
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> state, *_ = loop.setup(smoke_config())
      >>> guarded_paths(state)[0], guarded_paths(state)[-1]
      ("['loss']", "['params']['encoder']['backbone']['out']['kernel']")
    """
    return _validation.finite_flags(_guarded(state, jnp.float32(0)))[0]


def keep_if_finite(old: TrainState, new: TrainState, loss: jax.Array) -> TrainState:
    """`new` if it and the loss are finite (log-weights may hold -inf) and no earlier update
    diverged; otherwise `old`, with diverged_at / diverged_tensor set by the first bad update.

    One reduction per tensor and one select per leaf; where(True, new, old) is new bitwise.

    Example:
      >>> from gje_jax.train.step import keep_if_finite
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> old, *_ = loop.setup(smoke_config())
      >>> bad = old.replace(step=old.step + 1, params=jax.tree.map(lambda x: x * jnp.nan, old.params))
      >>> kept = keep_if_finite(old, bad, jnp.float32(1.0))
      >>> int(kept.step), int(kept.diverged_at)                 # the old state, flagged at step 1
      (0, 1)
    """
    _, ok = _validation.finite_flags(_guarded(new, loss))
    accept = jnp.all(ok) & (old.diverged_at < 0)
    kept = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)
    first = ~jnp.all(ok) & (old.diverged_at < 0)
    return kept.replace(
        diverged_at=jnp.where(first, old.step + 1, old.diverged_at).astype(jnp.int32),
        diverged_tensor=jnp.where(first, jnp.argmin(ok), old.diverged_tensor).astype(jnp.int32),
    )


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    method: Method,
    views_fn: Callable,
    debug: bool = False,
    guard: bool = True,
) -> tuple[TrainState, dict]:
    """One update; a pure function of (state, batch, key).

    batch: the global batch (e.g. {'x': [B, dim]} or {'image': [B, H, W, C]}).
    key: the run's seed key; the step's key is fold_in(key, state.step).
    debug: add a named finiteness check (`checkify.check`) on every tensor the step reads
      or makes: params and method state on entry, views, embeddings, loss, metrics,
      gradients, updated params and method state, in that order. The step must then be
      wrapped in `checkify.checkify`; the first failing check names the tensor and the step.
    guard: keep the state unchanged when the update is non-finite, from then on
      (`keep_if_finite`): the state stays the last finite one and records the step and
      the tensor that failed, for the loop to save and report.
    Returns (new state, metrics dict of [] float32).

    Example:
      >>> from gje_jax.train.configs import smoke_config
      >>> from gje_jax.train import loop
      >>> config = smoke_config()
      >>> state, step_fn, source, sharding = loop.setup(config)
      >>> batch = loop.global_batch(source, config, 0, sharding)
      >>> new_state, metrics = step_fn(state, batch, jax.random.key(0))   # jitted functools.partial(train_step, ...)
      >>> int(new_state.step), bool(jnp.isfinite(metrics["loss"]))
      (1, True)
    """
    check = functools.partial(check_finite, step=state.step) if debug else lambda tree, name: None
    check(state.params, "params (on entry)")
    check(state.method_state, "method_state (on entry)")
    step_key = jax.random.fold_in(key, state.step)
    view_a, view_b = views_fn(batch, step_key)
    check({"a": view_a, "b": view_b}, "views")
    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)
    (loss, (metrics, new_bs, emb)), grads = grad_fn(state.params, state, view_a, view_b, method, batch.get("label"))
    check(emb, "embeddings")
    check(loss, "loss")
    check(metrics, "metrics")
    check(grads, "gradients")
    new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    check(new_state.params, "params (after the update)")
    emb = jax.tree.map(jax.lax.stop_gradient, emb)
    method_state, update_metrics = method.update(
        state.method_state, emb, new_state.params, jax.random.fold_in(step_key, 1)
    )
    check(method_state, "method_state (after the update)")
    if method.target_network:
        method_state = dict(
            method_state, target=ema_update(method_state["target"], new_state.params["encoder"], method.target_momentum)
        )
    new_state = new_state.replace(method_state=method_state)
    if guard:
        new_state = keep_if_finite(state, new_state, loss)
    metrics = dict(
        metrics,
        **update_metrics,
        grad_norm=jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))),
        embedding_std=jnp.mean(jnp.std(emb.context, axis=0)),
    )
    return new_state, metrics
