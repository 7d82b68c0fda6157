"""Validation of a resolved config before anything is compiled. Messages name the field."""

from __future__ import annotations

from gje_jax.losses.gaussian import ESTIMATORS
from gje_jax.losses.mixture import OBJECTIVES
from gje_jax.train.methods import METHODS


def _positive(cfg, path: str, integer: bool = False, allow_zero: bool = False):
    val = cfg
    for part in path.split("."):
        val = getattr(val, part)
    ok = isinstance(val, int) if integer else isinstance(val, (int, float))
    if not ok or isinstance(val, bool) or (val < 0 if allow_zero else val <= 0):
        kind = "integer" if integer else "number"
        raise ValueError(f"config.{path} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {val!r}.")


def validate(config, num_devices: int = 1) -> None:
    m = config.method
    if m.name not in METHODS:
        raise ValueError(f"config.method.name={m.name!r} is unknown; valid methods: {sorted(METHODS)}.")
    if m.estimator not in ESTIMATORS:
        raise ValueError(f"config.method.estimator={m.estimator!r} is unknown; valid: {list(ESTIMATORS)}.")
    if m.objective not in OBJECTIVES:
        raise ValueError(f"config.method.objective={m.objective!r} is unknown; valid: {list(OBJECTIVES)}.")
    if m.predictor_loss not in ("mse", "cosine"):
        raise ValueError(f"config.method.predictor_loss={m.predictor_loss!r} is unknown; valid: ['cosine', 'mse'].")
    for path in (
        "batch_size",
        "num_steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "method.num_components",
        "data.num_examples",
    ):
        _positive(config, path, integer=True)
    for path in ("optim.lr", "method.tau", "method.floor"):
        _positive(config, path)
    for path in (
        "method.lambda_geo",
        "method.lambda_bal",
        "method.eps_rel",
        "method.eps_abs",
        "optim.weight_decay",
        "optim.grad_clip",
    ):
        _positive(config, path, allow_zero=True)
    for path in ("method.momentum", "method.target_momentum"):
        val = eval(f"config.{path}")  # noqa: S307 -- a fixed dotted path of ours
        if not 0.0 <= val < 1.0:
            raise ValueError(f"config.{path} must be in [0, 1), got {val!r}.")
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({num_devices}) for data parallelism."
        )
    if config.batch_size > config.data.num_examples:
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds config.data.num_examples={config.data.num_examples}."
        )
    if m.name == "gje" and m.estimator == "batch" and m.eps_rel == 0 and m.eps_abs == 0:
        raise ValueError(
            "config.method.eps_rel and eps_abs are both 0: the batch covariance cannot be factorised "
            "safely; set eps_abs > 0."
        )
