"""Model registry: `build_network(model_config)` from a config section."""

from __future__ import annotations

import jax.numpy as jnp

from gje_jax.models.encoders import MLP, Network, Predictor, Projector, ResNet, SmallConvNet, resnet18, resnet50
from gje_jax.models.heads import MDNHead

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

BACKBONES = {
    "mlp": lambda m, dt: MLP(hidden=tuple(m.hidden), out_dim=m.feature_dim, norm=m.norm, dtype=dt),
    "convnet_small": lambda m, dt: SmallConvNet(widths=tuple(m.widths), patch=m.patch, dtype=dt),
    "resnet18": lambda m, dt: resnet18(stem=m.stem, width=m.width, dtype=dt),
    "resnet50": lambda m, dt: resnet50(stem=m.stem, width=m.width, dtype=dt),
}


def build_network(m) -> Network:
    """m: the `config.model` section (encoder, feature_dim, hidden, widths, stem, width,
    projector ('none' | 'bn' | 'ln'), projector_hidden, projector_out_norm, embed_dim, dtype).

    Example:
      >>> from experiments.configs.common import base_config
      >>> model = base_config().model                              # config.model: encoder, sizes, projector
      >>> net = gje_jax.models.build_network(model)
      >>> type(net).__name__
      'Network'
    """
    if m.encoder not in BACKBONES:
        raise ValueError(f"config.model.encoder={m.encoder!r} is unknown; valid: {sorted(BACKBONES)}.")
    if m.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={m.dtype!r} is unknown; valid: {sorted(DTYPES)}.")
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
    return Network(BACKBONES[m.encoder](m, dt), proj)


__all__ = [
    "MDNHead",
    "MLP",
    "Network",
    "Predictor",
    "Projector",
    "ResNet",
    "SmallConvNet",
    "build_network",
    "resnet18",
    "resnet50",
]
