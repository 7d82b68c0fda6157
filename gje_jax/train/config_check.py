"""Validation of a resolved config before anything is compiled. Messages name the field."""

from __future__ import annotations

import math

from gje_jax import methods
from gje_jax.data import synthetic
from gje_jax.data.augment import RECIPES
from gje_jax.models import resolve_model
from gje_jax.settings import resolve
from gje_jax.train import configs
from gje_jax.train.optim import resolve_optim


def _get(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _positive(cfg, path: str, integer: bool = False, allow_zero: bool = False):
    val = _get(cfg, path)
    ok = isinstance(val, int) if integer else isinstance(val, (int, float))
    if not ok or isinstance(val, bool) or not math.isfinite(val) or (val < 0 if allow_zero else val <= 0):
        kind = "integer" if integer else "number"
        raise ValueError(f"config.{path} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {val!r}.")


def _validate_data(config) -> None:
    d = config.data
    if d.name == "alignment":
        if d.task not in synthetic.TASKS:
            raise ValueError(f"config.data.task={d.task!r} is unknown; valid: {sorted(synthetic.TASKS)}.")
        for path in ("data.num_examples", "data.context_dim", "data.target_dim"):
            _positive(config, path, integer=True)
        _positive(config, "data.noise")
        if config.model.get("target") != "identity":
            raise ValueError(
                "config.data.name='alignment' gives pairs whose target is its own embedding: "
                "set config.model.target='identity'."
            )
        if config.batch_size > d.num_examples:
            raise ValueError(
                f"config.batch_size={config.batch_size} exceeds config.data.num_examples={d.num_examples}."
            )
        return
    if d.name == "clustered":
        for path in ("data.num_examples", "data.dim", "data.num_clusters"):
            _positive(config, path, integer=True)
        _positive(config, "data.noise", allow_zero=True)
        if config.batch_size > d.num_examples:
            raise ValueError(
                f"config.batch_size={config.batch_size} exceeds config.data.num_examples={d.num_examples}."
            )
        return
    # An image dataset read through TFDS (gje_jax.data.images).
    if d.augment not in RECIPES:
        raise ValueError(f"config.data.augment={d.augment!r} is unknown; valid: {sorted(RECIPES)}.")
    shape = tuple(d.image_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise ValueError(f"config.data.image_shape must be three positive integers (H, W, C), got {shape!r}.")
    _positive(config, "data.num_classes", integer=True)
    _positive(config, "data.probe_lr")
    for path in ("data.mean", "data.std"):
        val = tuple(_get(config, path))
        if val and len(val) != shape[2]:
            raise ValueError(f"config.{path} needs one value per channel ({shape[2]}) or none, got {val!r}.")
    if d.std and min(d.std) <= 0:
        raise ValueError(f"config.data.std must be positive, got {tuple(d.std)!r}.")
    if not d.directory and not d.name:
        raise ValueError("config.data.name is empty; name a TFDS dataset or set config.data.directory.")


def validate(config, num_devices: int = 1) -> None:
    """Checks a train config before anything is compiled; messages name the field.

    Every section holds only settings its component reads (the method's, the encoder's,
    the optimiser's), each typed, in range and finite; see gje_jax.settings.

    Example:
      >>> from gje_jax.train import config_check
      >>> from gje_jax.train.configs import smoke_config
      >>> c = smoke_config("gje").unlock(); c.optim.warmup_steps = -1
      >>> try:
      ...     config_check.validate(c)
      ... except ValueError as e:
      ...     print(e)
      config.optim.warmup_steps must be in [0, inf), got -1.
    """
    known = set(configs.SETTINGS) | set(configs.SECTIONS) | {"eval"}
    unknown = sorted(k for k in config.keys() if k not in known)
    if unknown:
        raise ValueError(f"config.{unknown[0]} is not a setting of a train config; valid: {sorted(known)}.")
    top = {k: config[k] for k in configs.SETTINGS if k in config}
    resolve(top, configs.SETTINGS, "config", reserved=(), owner="a train config")
    methods.resolve(config.method, config)
    resolve_model(config.model)
    resolve_optim(config.optim)
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({num_devices}) for data parallelism."
        )
    if config.model.get("target") == "identity" and config.data.name != "alignment":
        raise ValueError(
            f"config.model.target='identity' takes the target view as its own embedding; only "
            f"config.data.name='alignment' gives such views, not {config.data.name!r}."
        )
    _validate_data(config)
