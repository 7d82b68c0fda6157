"""The optimiser: config.optim's settings, the learning-rate schedule, and the probe's own Adam."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import jax
import ml_collections
import optax

from gje_jax.settings import choice, defaults, integer, nonnegative, positive, resolve

SETTINGS = {
    "name": choice("adamw", "optimiser: adamw | lars | sgd", ("adamw", "lars", "sgd")),
    "lr": positive(1e-3, "peak learning rate"),
    "weight_decay": nonnegative(1e-4, "decoupled weight decay"),
    "warmup_steps": integer(50, "linear warm-up steps from 0", low=0),
    "schedule": choice("cosine", "after warm-up: cosine (to 0 at num_steps) | constant", ("cosine", "constant")),
    "grad_clip": nonnegative(1.0, "clip the global gradient norm to this (0: no clipping)"),
    "momentum": positive(0.9, "momentum of lars / sgd").only_when(lambda o: o.name != "adamw", "name='lars' or 'sgd'"),
}


def optim_config(**values) -> ml_collections.ConfigDict:
    """config.optim: every setting at its default, then `values`.

    Example:
      >>> from gje_jax.train.optim import optim_config
      >>> optim_config(lr=3e-4).lr
      0.0003
    """
    section = defaults(SETTINGS)
    for k, v in values.items():
        section[k] = v
    return resolve_optim(section)


def resolve_optim(o) -> ml_collections.ConfigDict:
    """Checks config.optim (known fields, types, ranges, finiteness, effect) -> the full settings.

    Example:
      >>> from gje_jax.train.optim import optim_config, resolve_optim
      >>> o = optim_config(); o.lr = float("nan")
      >>> try:
      ...     resolve_optim(o)
      ... except ValueError as e:
      ...     print(e)
      config.optim.lr must be finite, got nan.
    """
    return resolve(o, SETTINGS, "config.optim", reserved=(), owner="the optimiser")


def make_schedule(o, num_steps: int) -> optax.Schedule:
    """The learning rate of update number `count` (0-based): linear warm-up from 0 over
    o.warmup_steps, then cosine decay to 0 at num_steps or constant.

    Example:
      >>> from gje_jax.train.optim import make_schedule, optim_config
      >>> o = optim_config(warmup_steps=10, schedule="constant")
      >>> [round(float(make_schedule(o, 100)(n)), 6) for n in (0, 5, 50)]
      [0.0, 0.0005, 0.001]
    """
    warmup = min(o.warmup_steps, max(num_steps - 1, 0))
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(num_steps, warmup + 1))
    if o.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, o.lr, max(warmup, 1)), optax.constant_schedule(o.lr)], [max(warmup, 1)]
        )
    raise ValueError(f"config.optim.schedule={o.schedule!r} is unknown; valid: ['constant', 'cosine'].")


def make_optimizer(o, num_steps: int) -> optax.GradientTransformation:
    """o: config.optim (name adamw|lars|sgd, lr, weight_decay, warmup_steps, schedule
    cosine|constant, grad_clip, momentum).

    Example:
      >>> from gje_jax.train.optim import make_optimizer, optim_config
      >>> tx = make_optimizer(optim_config(), num_steps=100)   # an optax GradientTransformation
      >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)})
      >>> updates["w"].shape
      (2,)
    """
    lr = make_schedule(o, num_steps)
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
    gradients never enter the method's clipping or schedule).

    Example:
      >>> import optax
      >>> from gje_jax.train.optim import with_probe_optimizer
      >>> tx = with_probe_optimizer(optax.sgd(0.0), probe_lr=0.1)  # the method's lr is 0; the probe's is not
      >>> params = {"encoder": jnp.ones(2), "probe": jnp.ones(2)}
      >>> updates, _ = tx.update({"encoder": jnp.ones(2), "probe": jnp.ones(2)}, tx.init(params), params)
      >>> abs(float(updates["encoder"][0])), float(updates["probe"][0]) < 0
      (0.0, True)
    """

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: "probe" if k == "probe" else "ssl", v) for k, v in params.items()}

    return optax.multi_transform({"ssl": tx, "probe": optax.adam(probe_lr)}, labels)


def scale_method_lr(tx: optax.GradientTransformation, scale) -> optax.GradientTransformation:
    """tx, with the updates of params['method'] (the method's own parameters: prototypes,
    heads) multiplied by `scale`; tx itself when scale is 1. The parameters must be a dict
    of top-level parts ('encoder', 'method', ...), as the train state holds them. `scale`
    may also be a dict {name: factor} over the top-level entries of params['method'] (each
    entry's whole subtree gets its factor; entries not named keep 1); a name that is not
    there is an error when the optimiser state is built.

    Example:
      >>> import optax
      >>> from gje_jax.train.optim import scale_method_lr
      >>> tx = scale_method_lr(optax.sgd(0.1), 30.0)
      >>> params = {"encoder": jnp.ones(2), "method": jnp.ones(2)}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> [round(float(updates[k][0]), 4) for k in ("encoder", "method")]
      [-0.1, -3.0]
      >>> tx = scale_method_lr(optax.sgd(0.1), {"means": 30.0, "raw": 3.0})
      >>> params = {"encoder": jnp.ones(1), "method": {"means": jnp.ones(1), "raw": jnp.ones(1)}}
      >>> updates, _ = tx.update(params, tx.init(params), params)
      >>> [round(float(updates["method"][k][0]), 4) for k in ("means", "raw")]
      [-3.0, -0.3]
    """
    per_part = dict(scale) if isinstance(scale, dict) else {None: scale}
    for name, factor in per_part.items():
        if isinstance(factor, bool) or not (isinstance(factor, numbers.Real) and factor > 0):
            raise ValueError(
                f"lr_scale{'' if name is None else f'[{name!r}]'} must be a positive number, got {factor!r}."
            )
    per_part = {name: float(f) for name, f in per_part.items() if f != 1.0}
    if not per_part:
        return tx

    def mask(name):
        # A prefix of the parameter tree: one flag per top-level part (per entry of
        # params['method'] when a name is given) covers its whole subtree.
        def prefix(params):
            if name is None:
                return {k: k == "method" for k in params}
            part = params.get("method")
            if not isinstance(part, Mapping) or name not in part:
                found = sorted(part) if isinstance(part, Mapping) else type(part).__name__
                raise ValueError(f"lr_scale names {name!r}, which params['method'] does not hold ({found}).")
            return {k: {e: e == name for e in part} if k == "method" else False for k in params}

        return prefix

    return optax.chain(tx, *(optax.masked(optax.scale(f), mask(name)) for name, f in per_part.items()))
