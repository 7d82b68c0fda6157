"""Image augmentations as pure JAX functions on device, one key per example.

Every op maps one image x [H, W, C] float32 in [0, 1] (and a key) to an image in
[0, 1]; `augment` composes them into the SimCLR / BYOL recipes and `make_views` vmaps
a recipe over a batch with per-example keys. Crop-and-resize and blur are written as
two small matrix products per image (rows, then columns), so their cost is matmul on
every backend and no gather is involved.

Example:
    recipe = RECIPES["simclr_cifar"]
    views = make_views(recipe, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    a, b = views({"image": images_uint8}, jax.random.key(0))   # [B, 32, 32, 3] each
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_GRAY = jnp.array([0.299, 0.587, 0.114], jnp.float32)


def _interp_matrix(start: jax.Array, length: jax.Array, size_in: int, size_out: int) -> jax.Array:
    """[size_out, size_in] bilinear weights sampling [start, start + length) at size_out
    pixel centres (edge pixels repeated beyond the border)."""
    centres = start + (jnp.arange(size_out, dtype=jnp.float32) + 0.5) * length / size_out - 0.5
    centres = jnp.clip(centres, 0.0, size_in - 1.0)
    lo = jnp.floor(centres)
    frac = centres - lo
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, size_in - 1)
    eye = jnp.eye(size_in, dtype=jnp.float32)
    return (1.0 - frac)[:, None] * eye[lo] + frac[:, None] * eye[hi]


def crop_and_resize(x: jax.Array, top, left, height, width, out_size: int) -> jax.Array:
    """Bilinear resize of the box (top, left, height, width) (pixels, floats) of x [H, W, C]
    to [out_size, out_size, C].

    Example:
      >>> from gje_jax.data import augment
      >>> x = jnp.ones((32, 32, 3))
      >>> augment.crop_and_resize(x, 4, 4, 16, 16, out_size=8).shape
      (8, 8, 3)
    """
    h_in, w_in = x.shape[0], x.shape[1]
    rows = _interp_matrix(top, height, h_in, out_size)
    cols = _interp_matrix(left, width, w_in, out_size)
    return jnp.einsum("oh,hwc,pw->opc", rows, x, cols)


def random_resized_crop(
    key: jax.Array,
    x: jax.Array,
    out_size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    tries: int = 10,
) -> jax.Array:
    """Inception-style crop: area fraction ~ U(scale), log aspect ~ U(log ratio); the first
    of `tries` candidates that fits is used, else the whole image. -> [out, out, C].

    Example:
      >>> from gje_jax.data import augment
      >>> augment.random_resized_crop(jax.random.key(0), jnp.ones((32, 32, 3)), out_size=24).shape
      (24, 24, 3)
    """
    h_in, w_in = x.shape[0], x.shape[1]
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = h_in * w_in * jax.random.uniform(k_area, (tries,), minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(k_ratio, (tries,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    r = jnp.exp(log_r)
    w = jnp.round(jnp.sqrt(area * r))
    h = jnp.round(jnp.sqrt(area / r))
    fits = (w >= 1) & (w <= w_in) & (h >= 1) & (h <= h_in)
    first = jnp.argmax(fits)
    ok = fits[first]
    h = jnp.where(ok, h[first], h_in)
    w = jnp.where(ok, w[first], w_in)
    top = jnp.floor(jax.random.uniform(k_y) * (h_in - h + 1))
    left = jnp.floor(jax.random.uniform(k_x) * (w_in - w + 1))
    return crop_and_resize(x, top, left, h, w, out_size)


def flip(key: jax.Array, x: jax.Array, p: float = 0.5) -> jax.Array:
    """Horizontal flip with probability p.

    Example:
      >>> from gje_jax.data import augment
      >>> x = jnp.arange(3.0).reshape(1, 3, 1)
      >>> augment.flip(jax.random.key(0), x, p=1.0)[0, :, 0].tolist()
      [2.0, 1.0, 0.0]
    """
    return jnp.where(jax.random.bernoulli(key, p), x[:, ::-1], x)


def grayscale(x: jax.Array) -> jax.Array:
    """Luma (ITU-R 601) replicated over the channels.

    Example:
      >>> from gje_jax.data import augment
      >>> np.asarray(augment.grayscale(jnp.array([[[1.0, 1.0, 1.0]]])), float).round(4).tolist()   # white stays white
      [[[1.0, 1.0, 1.0]]]
    """
    return jnp.broadcast_to((x @ _GRAY)[..., None], x.shape)


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn).

    Example:
      >>> from gje_jax.data import augment
      >>> np.asarray(augment.rgb_to_hsv(jnp.array([[[0.0, 0.0, 1.0]]])), float).round(4).tolist()   # blue: hue 2/3
      [[[0.6667, 1.0, 1.0]]]
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    c = v - jnp.min(x, axis=-1)
    s = jnp.where(v > 0, c / jnp.where(v > 0, v, 1.0), 0.0)
    safe_c = jnp.where(c > 0, c, 1.0)
    h = jnp.where(v == r, (g - b) / safe_c, jnp.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
    return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """Inverse of rgb_to_hsv.

    Example:
      >>> from gje_jax.data import augment
      >>> augment.hsv_to_rgb(jnp.array([[[0.0, 1.0, 1.0]]])).tolist()   # hue 0, full saturation: red
      [[[1.0, 0.0, 0.0]]]
    """
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    k = (jnp.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    return v[..., None] - (v * s)[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_brightness(x, factor):
    """x [H, W, C] in [0, 1] times factor, clipped to [0, 1].

    Example:
      >>> from gje_jax.data import augment
      >>> augment.adjust_brightness(jnp.full((1, 1, 3), 0.4), 2.0).tolist()
      [[[0.800000011920929, 0.800000011920929, 0.800000011920929]]]
    """
    return jnp.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x, factor):
    """Blend with the mean grey level: (x - m) * factor + m, clipped.

    Example:
      >>> from gje_jax.data import augment
      >>> x = jnp.array([[[0.2, 0.2, 0.2]], [[0.6, 0.6, 0.6]]])
      >>> np.asarray(augment.adjust_contrast(x, 0.0), float).round(4).tolist()[0][0]  # factor 0: the mean grey
      [0.4, 0.4, 0.4]
    """
    mean = jnp.mean(x @ _GRAY)
    return jnp.clip((x - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(x, factor):
    """Blend with the greyscale image: g + (x - g) * factor, clipped.

    Example:
      >>> from gje_jax.data import augment
      >>> x = augment.adjust_saturation(jnp.array([[[1.0, 0.0, 0.0]]]), 0.0)   # factor 0: grey
      >>> bool(jnp.allclose(x, x[..., :1]))
      True
    """
    gray = grayscale(x)
    return jnp.clip(gray + (x - gray) * factor, 0.0, 1.0)


def adjust_hue(x, delta):
    """Rotate the hue by delta turns (HSV), clipped to [0, 1].

    Example:
      >>> from gje_jax.data import augment
      >>> np.asarray(augment.adjust_hue(jnp.array([[[1.0, 0.0, 0.0]]]), 1 / 3), float).round(4).tolist()   # red -> green
      [[[0.0, 1.0, 0.0]]]
    """
    hsv = rgb_to_hsv(x)
    return jnp.clip(hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0)), 0.0, 1.0)


def color_jitter(key: jax.Array, x: jax.Array, brightness, contrast, saturation, hue) -> jax.Array:
    """Brightness, contrast, saturation (factors ~ U[1 - s, 1 + s]) and hue (shift ~ U[-h, h]
    turns), applied in a random order as in torchvision's ColorJitter.

    Example:
      >>> from gje_jax.data import augment
      >>> x = jax.random.uniform(jax.random.key(0), (8, 8, 3))
      >>> y = augment.color_jitter(jax.random.key(1), x, 0.4, 0.4, 0.4, 0.1)
      >>> y.shape, float(y.min()) >= 0.0 and float(y.max()) <= 1.0
      ((8, 8, 3), True)
    """
    k_perm, k_b, k_c, k_s, k_h = jax.random.split(key, 5)
    params = jnp.stack(
        [
            jax.random.uniform(k_b, minval=1 - brightness, maxval=1 + brightness),
            jax.random.uniform(k_c, minval=1 - contrast, maxval=1 + contrast),
            jax.random.uniform(k_s, minval=1 - saturation, maxval=1 + saturation),
            jax.random.uniform(k_h, minval=-hue, maxval=hue),
        ]
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    order = jax.random.permutation(k_perm, 4)

    def body(i, img):
        j = order[i]
        return jax.lax.switch(j, ops, img, params[j])

    return jax.lax.fori_loop(0, 4, body, x)


def _blur_matrix(size: int, sigma: jax.Array, radius: int) -> jax.Array:
    """[size, size] Gaussian smoothing along one axis, taps within `radius`, rows renormalised
    at the borders."""
    i = jnp.arange(size, dtype=jnp.float32)
    d = i[:, None] - i[None, :]
    w = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / sigma) ** 2), 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur of x [H, W, C] with standard deviation sigma (pixels).

    Example:
      >>> from gje_jax.data import augment
      >>> x = jnp.zeros((9, 9, 1)).at[4, 4].set(1.0)
      >>> y = augment.gaussian_blur(x, jnp.asarray(1.0), radius=3)
      >>> round(float(y.sum()), 2), bool(y[4, 4, 0] < 1.0)        # mass kept (to the truncation), spread out
      (1.0, True)
    """
    rows = _blur_matrix(x.shape[0], sigma, radius)
    cols = _blur_matrix(x.shape[1], sigma, radius)
    return jnp.einsum("oh,hwc,pw->opc", rows, x, cols)


def solarize(x: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Pixels at or above the threshold are inverted.

    Example:
      >>> from gje_jax.data import augment
      >>> np.asarray(augment.solarize(jnp.array([0.2, 0.8]), threshold=0.5), float).round(4).tolist()   # above the threshold: 1 - x
      [0.2, 0.2]
    """
    return jnp.where(x >= threshold, 1.0 - x, x)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One augmentation pipeline; per-view probabilities are (view_a, view_b) pairs.

    Example:
      >>> from gje_jax.data import augment
      >>> r = augment.Recipe(size=32, solarize_p=(0.0, 0.2))
      >>> r.size, r.solarize_p
      (32, (0.0, 0.2))
    """

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (0.0, 0.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.0)

    @property
    def blur_radius(self) -> int:
        # Kernel width about 10% of the image side, as in SimCLR.
        return max(1, int(round(0.1 * self.size)) // 2)


RECIPES = {
    # SimCLR for CIFAR (32x32): no blur.
    "simclr_cifar": Recipe(size=32),
    # SimCLR for STL-10 / 96x96: blur with p = 0.5 on both views.
    "simclr_96": Recipe(size=96, blur_p=(0.5, 0.5)),
    # BYOL: asymmetric blur and solarisation, weaker saturation.
    "byol_cifar": Recipe(size=32, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
    "byol_96": Recipe(size=96, jitter=(0.4, 0.4, 0.2, 0.1), blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
}


def get_recipe(name: str) -> Recipe:
    """The Recipe registered as `name` in RECIPES (a clear error lists the valid names).

    Example:
      >>> from gje_jax.data import augment
      >>> augment.get_recipe("byol_96").size
      96
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown augmentation recipe {name!r}; valid: {sorted(RECIPES)}.")
    return RECIPES[name]


def augment(key: jax.Array, x: jax.Array, recipe: Recipe, view: int = 0) -> jax.Array:
    """One augmented view of x [H, W, C] in [0, 1] -> [size, size, C] in [0, 1].
    view (0 or 1, static) selects the per-view probabilities of asymmetric recipes.

    Example:
      >>> from gje_jax.data import augment
      >>> x = jax.random.uniform(jax.random.key(0), (32, 32, 3))
      >>> aug = jax.jit(augment.augment, static_argnames=("recipe", "view"))  # jit it: one program, not op by op
      >>> view = aug(jax.random.key(1), x, augment.get_recipe("simclr_cifar"), view=0)
      >>> view.shape, 0.0 <= float(view.min()) and float(view.max()) <= 1.0
      ((32, 32, 3), True)
    """
    keys = jax.random.split(key, 9)
    x = random_resized_crop(keys[0], x, recipe.size, recipe.scale)
    x = flip(keys[1], x, recipe.flip_p)
    jittered = color_jitter(keys[2], x, *recipe.jitter)
    x = jnp.where(jax.random.bernoulli(keys[3], recipe.jitter_p), jittered, x)
    x = jnp.where(jax.random.bernoulli(keys[4], recipe.gray_p), grayscale(x), x)
    if recipe.blur_p[view] > 0:
        sigma = jax.random.uniform(keys[5], minval=recipe.blur_sigma[0], maxval=recipe.blur_sigma[1])
        blurred = gaussian_blur(x, sigma, recipe.blur_radius)
        x = jnp.where(jax.random.bernoulli(keys[6], recipe.blur_p[view]), blurred, x)
    if recipe.solarize_p[view] > 0:
        x = jnp.where(jax.random.bernoulli(keys[7], recipe.solarize_p[view]), solarize(x), x)
    return x


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [..., H, W, C] -> float32 in [0, 1].

    Example:
      >>> from gje_jax.data import augment
      >>> augment.to_float(jnp.array([0, 255], jnp.uint8)).tolist()
      [0.0, 1.0]
    """
    return images.astype(jnp.float32) / 255.0


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Per-channel standardisation of [..., C] images in [0, 1].

    Example:
      >>> from gje_jax.data import augment
      >>> augment.normalize(jnp.full((1, 1, 3), 0.75), (0.5,) * 3, (0.25,) * 3).tolist()
      [[[1.0, 1.0, 1.0]]]
    """
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def make_views(recipe: Recipe, mean: Sequence[float], std: Sequence[float]):
    """The view function of the train step: ({'image': uint8 [B, H, W, C]}, key) ->
    (view_a, view_b), each float32 [B, size, size, C], standardised. Each example gets
    its own key (fold_in of the step key with its row), so a view does not depend on the
    batch's size or sharding.

    Example:
      >>> from gje_jax.data import augment
      >>> views = augment.make_views(augment.get_recipe("simclr_cifar"), (0.5,) * 3, (0.25,) * 3)
      >>> a, b = views({"image": jnp.zeros((4, 32, 32, 3), jnp.uint8)}, jax.random.key(0))
      >>> a.shape, a.dtype
      ((4, 32, 32, 3), dtype('float32'))
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def views(batch, key):
        x = to_float(batch["image"])
        rows = jnp.arange(x.shape[0])
        out = []
        for v in range(2):
            keys = jax.vmap(lambda r, v=v: jax.random.fold_in(jax.random.fold_in(key, v), r))(rows)
            out.append(normalize(jax.vmap(lambda k, img, v=v: augment(k, img, recipe, v))(keys, x), mean, std))
        return out[0], out[1]

    return views


def make_eval_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """uint8 [B, H, W, C] -> float32 [B, size, size, C] standardised (resized if H != size).

    Example:
      >>> from gje_jax.data import augment
      >>> transform = augment.make_eval_transform(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
      >>> transform(jnp.full((2, 32, 32, 3), 255, jnp.uint8))[0, 0, 0].tolist()   # (1 - 0.5) / 0.25
      [2.0, 2.0, 2.0]
    """

    def transform(images):
        x = to_float(images)
        if x.shape[1] != size or x.shape[2] != size:
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
        return normalize(x, mean, std)

    return transform
