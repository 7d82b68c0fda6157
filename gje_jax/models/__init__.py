"""Model registry: `build_network(model_config)` from a config section.

config.model holds the chosen encoder's settings (ENCODERS) and the projector's (COMMON);
`model_config(encoder, **values)` makes one, `resolve_model(section)` checks one.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from gje_jax.models.encoders import MLP, Network, Predictor, Projector, ResNet, SmallConvNet, resnet18, resnet50
from gje_jax.models.heads import MDNHead
from gje_jax.settings import Setting, choice, defaults, integer, resolve, widths

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_PROJECTED = (lambda m: m.projector != "none", "projector='bn' or 'ln'")
COMMON = {
    "dtype": choice(
        "float32", "compute dtype of the encoder (the density maths stays float32)", ("float32", "bfloat16")
    ),
    "projector": choice("none", "projector head on the backbone features: none | bn | ln", ("none", "bn", "ln")),
    "projector_hidden": widths((256,), "hidden widths of the projector").only_when(*_PROJECTED),
    "projector_out_norm": Setting(
        False, "affine-free batch-norm on the embeddings (fixes their scale)", "bool"
    ).only_when(*_PROJECTED),
    # No default: with projector='none' the embedding is the backbone's output, so a width
    # here would be silently ignored; with a projector it must be said.
    "embed_dim": Setting(
        None, "embedding width (the projector's output); only with a projector", "int", low=1
    ).only_when(*_PROJECTED),
}
ENCODERS = {
    "mlp": {
        "hidden": widths((256, 256), "hidden layer widths"),
        "feature_dim": integer(64, "output width of the backbone (the embedding without a projector)"),
        "norm": choice("ln", "norm of the hidden layers: ln | bn | none", ("ln", "bn", "none")),
        "target": choice(
            "shared",
            "the target view's encoder: shared (the same network on both views) | identity (the "
            "target view is its own embedding, for pairs given in embedding space)",
            ("shared", "identity"),
        ),
    },
    "convnet_small": {
        "widths": widths((32, 64, 128, 256), "channels of each stage"),
        "patch": integer(1, "space-to-depth stem (2 halves the resolution first)"),
    },
    "resnet18": {
        "stem": choice("cifar", "cifar (3x3 conv, no pool) | imagenet (7x7/2 + max pool)", ("cifar", "imagenet")),
        "width": integer(64, "channels of the first stage"),
    },
}
ENCODERS["resnet50"] = ENCODERS["resnet18"]


def model_config(encoder: str = "mlp", **values) -> ml_collections.ConfigDict:
    """config.model for `encoder`: its settings and the projector's at their defaults, then
    `values` (checked by `resolve_model`).

    Example:
      >>> from gje_jax.models import model_config
      >>> m = model_config("mlp", hidden=(32,), feature_dim=8)
      >>> m.encoder, m.feature_dim, m.embed_dim is None
      ('mlp', 8, True)
    """
    if encoder not in ENCODERS:
        raise ValueError(f"config.model.encoder={encoder!r} is unknown; valid: {sorted(ENCODERS)}.")
    section = defaults({**ENCODERS[encoder], **COMMON}, encoder=encoder)
    section.embed_dim = ml_collections.config_dict.placeholder(int)
    for k, v in values.items():
        section[k] = v
    resolve_model(section)
    return section


def resolve_model(m) -> ml_collections.ConfigDict:
    """Checks config.model (every field known to its encoder, typed, in range, with an
    effect) -> the full settings.

    Example:
      >>> from gje_jax.models import model_config, resolve_model
      >>> m = model_config("mlp"); m.embed_dim = 16
      >>> try:
      ...     resolve_model(m)
      ... except ValueError as e:
      ...     print(str(e).split(":")[0])
      config.model.embed_dim=16 has no effect here
    """
    encoder = m["encoder"] if "encoder" in m else None
    if encoder not in ENCODERS:
        raise ValueError(f"config.model.encoder={encoder!r} is unknown; valid: {sorted(ENCODERS)}.")
    out = resolve(
        m,
        {**ENCODERS[encoder], **COMMON},
        "config.model",
        reserved=("encoder",),
        owner=f"the model with encoder {encoder!r}",
    )
    if out.projector != "none" and out.embed_dim is None:
        raise ValueError(f"config.model.embed_dim must be set with config.model.projector={out.projector!r}.")
    return out


BACKBONES = {
    "mlp": lambda m, dt: MLP(hidden=tuple(m.hidden), out_dim=m.feature_dim, norm=m.norm, dtype=dt),
    "convnet_small": lambda m, dt: SmallConvNet(widths=tuple(m.widths), patch=m.patch, dtype=dt),
    "resnet18": lambda m, dt: resnet18(stem=m.stem, width=m.width, dtype=dt),
    "resnet50": lambda m, dt: resnet50(stem=m.stem, width=m.width, dtype=dt),
}


def build_network(m) -> Network:
    """m: the `config.model` section (see `model_config`): the encoder's settings and the
    projector's (projector 'none' | 'bn' | 'ln', projector_hidden, projector_out_norm,
    embed_dim), dtype.

    Example:
      >>> model = gje_jax.models.model_config("mlp", hidden=(16,), feature_dim=4)
      >>> net = gje_jax.models.build_network(model)
      >>> type(net).__name__
      'Network'
    """
    m = resolve_model(m)
    dt = DTYPES[m.dtype]
    proj = None
    if m.projector != "none":
        proj = Projector(
            hidden=tuple(m.projector_hidden),
            out_dim=m.embed_dim,
            norm=m.projector,
            dtype=dt,
            out_norm=m.projector_out_norm,
        )
    return Network(BACKBONES[m.encoder](m, dt), proj, target=m.get("target", "shared"))


__all__ = [
    "MDNHead",
    "MLP",
    "Network",
    "Predictor",
    "Projector",
    "ResNet",
    "SmallConvNet",
    "build_network",
    "model_config",
    "resolve_model",
    "resnet18",
    "resnet50",
]
