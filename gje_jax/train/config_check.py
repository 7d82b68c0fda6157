"""Validation of a resolved config before anything is compiled. Messages name the field."""

from __future__ import annotations

from gje_jax.data.augment import RECIPES
from gje_jax.gaussian import POOLED_SHAPES
from gje_jax.losses.gaussian import ESTIMATORS
from gje_jax.losses.mixture import OBJECTIVES
from gje_jax.models.heads import COVARIANCES
from gje_jax.resampling import SCHEMES
from gje_jax.train.methods import METHODS

_CHOICES = {
    "method.mdn_covariance": COVARIANCES,
    "method.gng_covariance": ("node", "isotropic"),
    "method.resampling": tuple(sorted(SCHEMES)),
    "method.bank_kernel": ("shared", "isotropic"),
    "method.bank_loss": ("nll", "contrastive", "both"),
    "method.pooled_shape": POOLED_SHAPES,
    "method.predictor_norm": ("ln", "bn", "none"),
}


def _get(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _positive(cfg, path: str, integer: bool = False, allow_zero: bool = False):
    val = _get(cfg, path)
    ok = isinstance(val, int) if integer else isinstance(val, (int, float))
    if not ok or isinstance(val, bool) or (val < 0 if allow_zero else val <= 0):
        kind = "integer" if integer else "number"
        raise ValueError(f"config.{path} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {val!r}.")


def _validate_data(config) -> None:
    d = config.data
    if d.name == "clustered":
        for path in ("data.num_examples", "data.dim", "data.num_clusters"):
            _positive(config, path, integer=True)
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
    m = config.method
    if not isinstance(config.get("debug", False), bool):
        raise ValueError(f"config.debug must be True or False, got {config.debug!r}.")
    rfs = config.get("resume_from_step", -1)
    if isinstance(rfs, bool) or not isinstance(rfs, int) or rfs < -1:
        raise ValueError(f"config.resume_from_step must be -1 (the latest checkpoint) or a step >= 0, got {rfs!r}.")
    if m.name not in METHODS:
        raise ValueError(f"config.method.name={m.name!r} is unknown; valid methods: {sorted(METHODS)}.")
    if m.estimator not in ESTIMATORS:
        raise ValueError(f"config.method.estimator={m.estimator!r} is unknown; valid: {list(ESTIMATORS)}.")
    if m.objective not in OBJECTIVES:
        raise ValueError(f"config.method.objective={m.objective!r} is unknown; valid: {list(OBJECTIVES)}.")
    if m.predictor_loss not in ("mse", "cosine"):
        raise ValueError(f"config.method.predictor_loss={m.predictor_loss!r} is unknown; valid: ['cosine', 'mse'].")
    for path, valid in _CHOICES.items():
        val = _get(config, path)
        if val not in valid:
            raise ValueError(f"config.{path}={val!r} is unknown; valid: {list(valid)}.")
    for path in (
        "method.gng_capacity",
        "method.gng_max_age",
        "method.gng_insert_every",
        "method.bank_size",
        "batch_size",
        "num_steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "method.num_components",
    ):
        _positive(config, path, integer=True)
    for path in ("optim.lr", "method.tau", "method.floor", "method.bank_bandwidth"):
        _positive(config, path)
    for path in (
        "method.lambda_geo",
        "method.lambda_bal",
        "method.eps_rel",
        "method.eps_abs",
        "optim.weight_decay",
        "optim.grad_clip",
        "method.dead_threshold",
        "method.rejuvenation",
        "method.age_penalty",
        "method.pooled_eps_rel",
    ):
        _positive(config, path, allow_zero=True)
    for path in ("method.momentum", "method.target_momentum", "method.em_momentum"):
        val = _get(config, path)
        if not 0.0 <= val < 1.0:
            raise ValueError(f"config.{path} must be in [0, 1), got {val!r}.")
    for path in (
        "method.gng_eps_b",
        "method.gng_eps_n",
        "method.gng_alpha",
        "method.gng_decay",
        "method.bank_tempering",
    ):
        val = _get(config, path)
        if not 0.0 <= val <= 1.0:
            raise ValueError(f"config.{path} must be in [0, 1], got {val!r}.")
    if not 0.0 < m.ess_threshold <= 1.0:
        raise ValueError(f"config.method.ess_threshold must be in (0, 1], got {m.ess_threshold!r}.")
    if m.name == "gmje_smc" and m.bank_size < config.batch_size:
        raise ValueError(
            f"config.method.bank_size={m.bank_size} is smaller than config.batch_size={config.batch_size}: "
            "the SMC bank must hold at least one batch (each step inserts the whole batch)."
        )
    if m.name == "gmje_gng" and m.gng_capacity < 2:
        raise ValueError(f"config.method.gng_capacity must be >= 2, got {m.gng_capacity}.")
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of devices "
            f"({num_devices}) for data parallelism."
        )
    _validate_data(config)
    if m.name == "gje" and m.estimator == "batch" and m.eps_rel == 0 and m.eps_abs == 0:
        raise ValueError(
            "config.method.eps_rel and eps_abs are both 0: the batch covariance cannot be factorised "
            "safely; set eps_abs > 0."
        )
