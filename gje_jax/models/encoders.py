"""Encoders, projectors and predictors (flax.linen). Thin modules; maths lives elsewhere.

Every module maps [B, ...] inputs to [B, F] features and takes `train` so batch-norm
layers know whether to use batch statistics. `dtype` is the compute dtype (bf16 for the
matmuls/convolutions where configured); parameters stay float32 and outputs are cast
back to float32 so the density maths always runs in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _bn(train: bool, dtype, name: str | None = None, **kw) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=dtype, name=name, **kw)


def _norm(kind: str, train: bool, dtype, name: str | None = None):
    if kind == "bn":
        return _bn(train, dtype, name)
    if kind == "ln":
        return nn.LayerNorm(dtype=dtype, name=name)
    if kind == "none":
        return lambda x: x
    raise ValueError(f"norm must be 'bn', 'ln' or 'none', got {kind!r}.")


class MLP(nn.Module):
    """[B, ...] -> [B, out_dim]: flatten, hidden Dense + norm + ReLU layers, linear output.

    Example:
      >>> mlp = gje_jax.models.MLP(hidden=(32,), out_dim=8)
      >>> variables = mlp.init(jax.random.key(0), jnp.zeros((2, 5)))
      >>> mlp.apply(variables, jnp.ones((3, 5))).shape
      (3, 8)
    """

    hidden: Sequence[int] = (256, 256)
    out_dim: int = 128
    norm: str = "ln"
    dtype: Any = jnp.float32
    # An affine-free batch-norm on the output: every output dimension has mean 0 and
    # variance 1 over the batch. Fixes the embeddings' scale, which scale-invariant
    # density losses leave free to drift (and with it Adam's effective step).
    out_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(x)
            x = nn.relu(_norm(self.norm, train, self.dtype, name=f"norm_{i}")(x))
        x = nn.Dense(self.out_dim, dtype=self.dtype, name="out")(x).astype(jnp.float32)
        if self.out_norm:
            # float32 (dtype None keeps the input's): the density maths downstream is float32.
            x = _bn(train, None, "out_norm", use_bias=False, use_scale=False)(x)
        return x


class Conv3x3(nn.Module):
    """A 3x3 'SAME' convolution written as one matmul over the 9 shifted copies of the input
    (im2col by slicing). Same function as nn.Conv(features, (3, 3)); on CPU its gradient is
    faster than XLA's convolution gradient (experiments/benchmarks/choices.py).
    [B, H, W, C] -> [B, H, W, features]."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[1], x.shape[2]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        patches = jnp.concatenate([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
        return nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="kernel")(patches)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C]: non-overlapping p x p patches as channels."""
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}.")
    return x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def _max_pool2(x: jax.Array) -> jax.Array:
    # 2x2 max pool as a reshape (its gradient is a cheap select, unlike reduce_window's).
    b, h, w, c = x.shape
    return jnp.max(x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class SmallConvNet(nn.Module):
    """A ConvNet sized for CPU runs: [B, H, W, C] -> [B, widths[-1]] (global average pool).

    An optional patch stem (space-to-depth by `patch`) first, then per width a 3x3 conv,
    batch-norm and ReLU, with a 2x2 max pool between blocks.

    Example:
      >>> net = gje_jax.models.SmallConvNet(widths=(8, 16), patch=2)
      >>> variables = jax.jit(net.init, static_argnames="train")(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
      >>> jax.jit(net.apply, static_argnames="train")(variables, jnp.zeros((2, 32, 32, 3)), train=False).shape
      (2, 16)
    """

    widths: Sequence[int] = (32, 64, 128, 256)
    patch: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        if self.patch > 1:
            x = space_to_depth(x, self.patch)
        for i, w in enumerate(self.widths):
            x = Conv3x3(w, dtype=self.dtype, name=f"conv_{i}")(x)
            x = nn.relu(_bn(train, self.dtype, f"bn_{i}")(x))
            if i < len(self.widths) - 1:
                x = _max_pool2(x)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class _Block(nn.Module):
    """Fields shared by the residual blocks."""

    filters: int
    strides: int
    dtype: Any


class _BasicBlock(_Block):
    @nn.compact
    def __call__(self, x, train):
        bn = lambda name: _bn(train, self.dtype, name)
        y = nn.Conv(self.filters, (3, 3), self.strides, use_bias=False, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = bn("bn2")(y)
        if x.shape != y.shape:
            x = bn("bn_proj")(
                nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, dtype=self.dtype, name="proj")(x)
            )
        return nn.relu(x + y)


class _Bottleneck(_Block):
    @nn.compact
    def __call__(self, x, train):
        bn = lambda name: _bn(train, self.dtype, name)
        y = nn.relu(bn("bn1")(nn.Conv(self.filters, (1, 1), use_bias=False, dtype=self.dtype, name="conv1")(x)))
        y = nn.relu(
            bn("bn2")(nn.Conv(self.filters, (3, 3), self.strides, use_bias=False, dtype=self.dtype, name="conv2")(y))
        )
        y = bn("bn3")(nn.Conv(4 * self.filters, (1, 1), use_bias=False, dtype=self.dtype, name="conv3")(y))
        if x.shape != y.shape:
            x = bn("bn_proj")(
                nn.Conv(4 * self.filters, (1, 1), self.strides, use_bias=False, dtype=self.dtype, name="proj")(x)
            )
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet backbone: [B, H, W, C] -> [B, F] (F = 512 for ResNet-18, 2048 for ResNet-50).

    stem='cifar': 3x3 stride-1 first conv, no max-pool (32x32 inputs);
    stem='imagenet': 7x7 stride-2 conv and 3x3 stride-2 max-pool.

    Example:
      >>> net = gje_jax.models.ResNet(stage_sizes=(1, 1), width=8, stem="cifar")
      >>> variables = jax.jit(net.init, static_argnames="train")(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
      >>> jax.jit(net.apply, static_argnames="train")(variables, jnp.zeros((2, 16, 16, 3)), train=False).shape   # pooled
      (2, 16)
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    stem: str = "cifar"
    width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        if self.stem == "cifar":
            x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        elif self.stem == "imagenet":
            x = nn.Conv(
                self.width, (7, 7), 2, padding=[(3, 3), (3, 3)], use_bias=False, dtype=self.dtype, name="stem_conv"
            )(x)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}.")
        x = nn.relu(_bn(train, self.dtype, "stem_bn")(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        block = _Bottleneck if self.bottleneck else _BasicBlock
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                x = block(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, self.dtype, name=f"stage{i}_block{j}")(
                    x, train
                )
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


def resnet18(**kw) -> ResNet:
    """ResNet-18 (basic blocks, stages 2-2-2-2): [B, H, W, 3] -> [B, 8 * width] features.
    kw: stem ('cifar': 3x3 conv, no pool | 'imagenet': 7x7/2 + max pool), width, dtype.

    Example: `resnet18(stem="cifar").init(key, jnp.zeros((2, 32, 32, 3)))`.

    Example:
      >>> net = gje_jax.models.resnet18(stem="cifar")
      >>> net.stage_sizes
      (2, 2, 2, 2)
    """
    return ResNet(stage_sizes=(2, 2, 2, 2), bottleneck=False, **kw)


def resnet50(**kw) -> ResNet:
    """ResNet-50 (bottleneck blocks, stages 3-4-6-3): [B, H, W, 3] -> [B, 32 * width] features.
    kw as for resnet18.

    Example:
      >>> net = gje_jax.models.resnet50()
      >>> net.stage_sizes, net.bottleneck
      ((3, 4, 6, 3), True)
    """
    return ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True, **kw)


class Projector(MLP):
    """Projector head: [B, F] -> [B, out_dim], hidden layers with batch- or layer-norm.

    Example:
      >>> proj = gje_jax.models.Projector(hidden=(16,), out_dim=4, norm="ln")
      >>> proj.apply(proj.init(jax.random.key(0), jnp.zeros((2, 8)), train=False), jnp.ones((3, 8)), train=False).shape
      (3, 4)
    """

    hidden: Sequence[int] = (512,)
    norm: str = "bn"


class Predictor(MLP):
    """Predictor MLP of the deterministic baselines: [B, E] -> [B, E].

    Example:
      >>> pred = gje_jax.models.Predictor(hidden=(16,), out_dim=4, norm="ln")
      >>> pred.apply(pred.init(jax.random.key(0), jnp.zeros((2, 4)), train=False), jnp.ones((3, 4)), train=False).shape
      (3, 4)
    """

    hidden: Sequence[int] = (512,)
    norm: str = "bn"


class Network(nn.Module):
    """Backbone + optional projector: the encoder f applied to each view.

    `__call__` returns the projector output [B, E] (the embedding the losses see);
    `features` returns the backbone output [B, F] (what evaluation probes).

    Example:
      >>> net = gje_jax.models.Network(gje_jax.models.MLP(hidden=(16,), out_dim=8), gje_jax.models.Projector(hidden=(16,), out_dim=4, norm="ln"))
      >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 5)), train=False)
      >>> out, feats = net.apply(variables, jnp.ones((3, 5)), train=False, return_features=True)
      >>> out.shape, feats.shape                                   # projector output, backbone features
      ((3, 4), (3, 8))
    """

    backbone: nn.Module
    projector: nn.Module | None = None
    # 'shared': one encoder for both views (siamese). 'identity': the target view is its
    # own embedding (synthetic pairs whose target is given in embedding space).
    target: str = "shared"

    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
        """-> embedding [B, E], or (embedding, backbone features [B, F]) with return_features."""
        h = self.backbone(x, train=train)
        z = h if self.projector is None else self.projector(h, train=train)
        return (z, h) if return_features else z

    def pair(self, a: jax.Array, b: jax.Array, *, train: bool = False):
        """Context view a [B, ...], target view b [B, ...] -> (context embedding [B, E_c],
        target embedding [B, E_t], context backbone features [B, F]).

        Example:
          >>> net = gje_jax.models.Network(gje_jax.models.MLP(hidden=(16,), out_dim=4), target="identity")
          >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 5)))
          >>> [x.shape for x in net.apply(variables, jnp.ones((3, 5)), jnp.ones((3, 2)), method="pair")]
          [(3, 4), (3, 2), (3, 4)]
        """
        if self.target == "identity":
            z, h = self(a, train=train, return_features=True)
            return z, b, h
        if self.target != "shared":
            raise ValueError(f"Network.target must be 'shared' or 'identity', got {self.target!r}.")
        # One pass: batch-norm sees both views together.
        n = a.shape[0]
        z, h = self(jnp.concatenate([a, b]), train=train, return_features=True)
        return z[:n], z[n:], h[:n]

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.backbone(x, train=train)
