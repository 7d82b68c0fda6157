"""Image data through TFDS (tiny local fixture, never the network), on-device augmentations,
kNN and linear-probe evaluation, and a small end-to-end image run with the online probe."""

import colorsys
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy.ndimage import gaussian_filter1d
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from gje_jax import evaluation
from gje_jax.data import augment, images

_SHAPE = (32, 32, 3)


class GjeTinyImages(tfds.core.GeneratorBasedBuilder):
    """Random 32x32 uint8 images, labels i % 3 (stored as a Tensor feature: writing it needs no TF)."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for the builder's source file through importlib_resources (not installed);
    # None is its own answer for builders defined outside a package (as in Colab).
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 40), "test": self._generate_examples(1, 12)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, _SHAPE, dtype=np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = GjeTinyImages(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return data_dir, builder.data_dir


def _data_config(**kw):
    d = dict(
        name="gje_tiny_images",
        directory="",
        data_dir="",
        cache_dir="",
        train_split="train",
        test_split="test",
        image_shape=_SHAPE,
        num_classes=3,
        augment="simclr_cifar",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        online_probe=True,
        probe_lr=1e-3,
    )
    d.update(kw)
    return ml_collections.ConfigDict(d)


# ---- data -----------------------------------------------------------------------------


def test_load_by_directory_and_by_name_agree(tiny_dir):
    data_dir, prepared = tiny_dir
    by_dir = images.load_split(_data_config(directory=prepared), "train")
    by_name = images.load_split(_data_config(data_dir=data_dir), "train")
    assert by_dir["image"].shape == (40, *_SHAPE) and by_dir["image"].dtype == np.uint8
    np.testing.assert_array_equal(by_dir["image"], by_name["image"])
    np.testing.assert_array_equal(np.sort(by_dir["label"]), np.sort(np.arange(40) % 3))


def test_process_shares_partition_the_split(tiny_dir):
    _, prepared = tiny_dir
    d = _data_config(directory=prepared)
    full = images.load_split(d, "train")
    shares = [images.load_split(d, "train", p, 3) for p in range(3)]
    assert sum(len(s["label"]) for s in shares) == 40
    for p, s in enumerate(shares):
        np.testing.assert_array_equal(s["image"], full["image"][p::3])


def test_cache_is_written_atomically_and_reused(tiny_dir, tmp_path):
    _, prepared = tiny_dir
    d = _data_config(directory=prepared, cache_dir=str(tmp_path))
    first = images.load_split(d, "test")
    cached = [f for f in os.listdir(tmp_path) if f.endswith(".npz")]
    assert len(cached) == 1 and not any(f.endswith(".tmp.npz") for f in os.listdir(tmp_path))
    # The cache is read back: corrupting the source path does not matter any more.
    again = images.load_split(d, "test")
    np.testing.assert_array_equal(first["image"], again["image"])


def test_missing_dataset_errors_say_how_to_provide_it(tmp_path, tiny_dir):
    with pytest.raises(images.DatasetNotFoundError, match="ArrayRecord"):
        images.load_split(_data_config(directory=str(tmp_path / "nowhere")), "train")
    with pytest.raises(images.DatasetNotFoundError, match="not prepared"):
        images.load_split(_data_config(data_dir=str(tmp_path)), "train")
    with pytest.raises(images.DatasetNotFoundError, match="no dataset"):
        images.load_split(_data_config(name="no_such_dataset_xyz", data_dir=str(tmp_path)), "train")
    _, prepared = tiny_dir
    with pytest.raises(images.DatasetNotFoundError, match="no split"):
        images.load_split(_data_config(directory=prepared), "validation")


def test_wrong_image_shape_is_refused(tiny_dir):
    _, prepared = tiny_dir
    with pytest.raises(ValueError, match=r"image_shape"):
        images.load_split(_data_config(directory=prepared, image_shape=(96, 96, 3)), "train")


# ---- augmentations -----------------------------------------------------------------------


def _ramp(h=16, w=16):
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = np.stack([0.02 * i + 0.01 * j, 0.03 * j, 0.5 + 0 * i], -1)
    return jnp.asarray(x, jnp.float32)


def test_crop_and_resize_is_exact_on_linear_images():
    x = _ramp()
    out = np.asarray(augment.crop_and_resize(x, 2.0, 3.0, 8.0, 8.0, 16))
    o = np.arange(16)
    src = lambda start: start + (o + 0.5) * 0.5 - 0.5  # noqa: E731  (pixel centres)
    want0 = 0.02 * src(2.0)[:, None] + 0.01 * src(3.0)[None, :]
    np.testing.assert_allclose(out[..., 0], want0, atol=1e-5)
    # The full box at the same size is the identity.
    np.testing.assert_allclose(augment.crop_and_resize(x, 0.0, 0.0, 16.0, 16.0, 16), x, atol=1e-6)


def test_hsv_matches_colorsys_and_round_trips():
    rgb = np.random.default_rng(0).uniform(size=(200, 3)).astype(np.float32)
    hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(rgb)))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, want, atol=1e-5)
    np.testing.assert_allclose(augment.hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-5)


def test_colour_adjustments_known_values():
    x = jax.random.uniform(jax.random.key(0), (8, 8, 3))
    np.testing.assert_allclose(augment.adjust_hue(x, 0.0), x, atol=1e-5)
    np.testing.assert_allclose(augment.adjust_saturation(x, 0.0), augment.grayscale(x), atol=1e-6)
    np.testing.assert_allclose(augment.adjust_brightness(x, 0.5), 0.5 * x, atol=1e-7)
    gray_mean = float(jnp.mean(x @ jnp.array([0.299, 0.587, 0.114])))
    np.testing.assert_allclose(augment.adjust_contrast(x, 0.0), jnp.full_like(x, gray_mean), atol=1e-6)
    np.testing.assert_allclose(augment.solarize(jnp.array([0.2, 0.5, 0.9])), [0.2, 0.5, 0.1], atol=1e-7)


def test_blur_matches_scipy_away_from_borders():
    x = np.asarray(jax.random.uniform(jax.random.key(1), (32, 32, 3)))
    sigma, radius = 1.3, 4
    out = np.asarray(augment.gaussian_blur(jnp.asarray(x), jnp.float32(sigma), radius))
    want = gaussian_filter1d(
        gaussian_filter1d(x, sigma, axis=0, truncate=radius / sigma), sigma, axis=1, truncate=radius / sigma
    )
    inner = slice(radius, 32 - radius)
    np.testing.assert_allclose(out[inner, inner], want[inner, inner], atol=2e-3)
    const = jnp.full((32, 32, 3), 0.3)
    np.testing.assert_allclose(augment.gaussian_blur(const, jnp.float32(2.0), radius), const, atol=1e-6)


def test_augment_shapes_range_and_determinism_per_key():
    x = jax.random.uniform(jax.random.key(2), (32, 32, 3))
    # jit: eager, each of the recipe's small ops is one dispatch (a 4x slower test).
    aug = jax.jit(augment.augment, static_argnums=(2, 3))
    for name, recipe in augment.RECIPES.items():
        for view in (0, 1):
            a = aug(jax.random.key(3), x, recipe, view)
            assert a.shape == (recipe.size, recipe.size, 3), name
            assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0, name
            np.testing.assert_array_equal(a, aug(jax.random.key(3), x, recipe, view))
            assert not np.allclose(a, aug(jax.random.key(4), x, recipe, view))


@pytest.mark.parametrize(
    "field,p,detect",
    [
        ("gray_p", 0.2, lambda out, x: np.allclose(out[..., 0], out[..., 1], atol=1e-6)),
        ("flip_p", 0.5, lambda out, x: np.allclose(out, x[:, ::-1], atol=1e-5)),
        ("solarize_p", (0.0, 0.3), lambda out, x: np.allclose(out, np.where(x >= 0.5, 1 - x, x), atol=1e-5)),
    ],
)
def test_augment_probabilities(field, p, detect):
    # scale (1, 1): no candidate crop fits unless the aspect is 1, so the crop is the whole image.
    base = dict(scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    recipe = augment.Recipe(size=16, **{**base, field: p})
    x = jax.random.uniform(jax.random.key(5), (16, 16, 3))
    n = 1000
    keys = jax.random.split(jax.random.key(6), n)
    view = 1 if isinstance(p, tuple) else 0
    outs = np.asarray(jax.jit(jax.vmap(lambda k: augment.augment(k, x, recipe, view)))(keys))
    rate = np.mean([detect(o, np.asarray(x)) for o in outs])
    want = p[view] if isinstance(p, tuple) else p
    assert abs(rate - want) < 4 * np.sqrt(want * (1 - want) / n) + 1e-9, (rate, want)


def test_views_do_not_depend_on_batch_composition():
    imgs = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    views = jax.jit(augment.make_views(augment.RECIPES["byol_cifar"], (0.5,) * 3, (0.25,) * 3))
    a8, b8 = views({"image": imgs}, jax.random.key(0))
    a4, b4 = views({"image": imgs[:4]}, jax.random.key(0))
    assert a8.shape == (8, 32, 32, 3) and a8.dtype == jnp.float32
    np.testing.assert_allclose(a8[:4], a4, atol=1e-5)
    np.testing.assert_allclose(b8[:4], b4, atol=1e-5)
    assert not np.allclose(a8, b8)


# ---- evaluation ---------------------------------------------------------------------------


def _blobs(seed, n, centres, spread):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(centres), n)
    return (centres[y] + spread * rng.normal(size=(n, centres.shape[1]))).astype(np.float32), y


def test_knn_matches_sklearn_weighted_cosine():
    centres = np.random.default_rng(1).normal(size=(5, 16))
    xtr, ytr = _blobs(2, 600, centres, 1.0)
    xte, _ = _blobs(3, 200, centres, 1.0)
    for k, t in ((20, 0.1), (50, 0.5)):
        ours = evaluation.knn_predict(xtr, ytr, xte, num_classes=5, k=k, temperature=t, chunk=64)
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights=lambda d, t=t: np.exp((1 - d) / t))
        theirs = ref.fit(xtr, ytr).predict(xte)
        assert np.mean(ours == theirs) >= 0.99


def test_knn_separated_clusters_are_classified_perfectly():
    centres = 10 * np.eye(4, 8)
    xtr, ytr = _blobs(4, 400, centres, 0.1)
    xte, yte = _blobs(5, 100, centres, 0.1)
    assert evaluation.knn_accuracy(xtr, ytr, xte, yte, num_classes=4, k=20) == 1.0
    with pytest.raises(ValueError, match="k="):
        evaluation.knn_predict(xtr, ytr, xte, 4, k=10_000)
    with pytest.raises(ValueError, match=r"\[Q, F\]"):
        evaluation.knn_predict(xtr, ytr, xte[:, :3], 4)


def test_linear_probe_matches_sklearn_logistic_regression():
    centres = 1.2 * np.random.default_rng(6).normal(size=(4, 10))
    xtr, ytr = _blobs(7, 2000, centres, 1.0)
    xte, yte = _blobs(8, 1000, centres, 1.0)
    wd = 1e-3
    ours = evaluation.linear_probe(
        xtr, ytr, xte, yte, num_classes=4, epochs=60, batch_size=256, lr=3e-2, weight_decay=wd
    )
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    # Same objective: mean cross-entropy + wd/2 ||W||^2  <=>  C = 1 / (n wd).
    ref = LogisticRegression(C=1.0 / (len(xtr) * wd), max_iter=2000).fit((xtr - mu) / sd, ytr)
    ref_acc = ref.score((xte - mu) / sd, yte)
    assert abs(ours["test_accuracy"] - ref_acc) < 0.02, (ours["test_accuracy"], ref_acc)
    agree = np.mean(ours["predict"](xte) == ref.predict((xte - mu) / sd))
    assert agree > 0.95
    # Separable toy: a perfect probe.
    centres = 10 * np.eye(3, 6)
    xs, ys = _blobs(9, 300, centres, 0.1)
    assert evaluation.linear_probe(xs, ys, xs, ys, 3, epochs=30, batch_size=32, lr=5e-2)["test_accuracy"] == 1.0


def test_embed_pads_the_last_batch():
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    out = evaluation.embed(lambda b: 2.0 * b, x, batch_size=5)
    np.testing.assert_allclose(out, 2 * x)


# ---- end to end ---------------------------------------------------------------------------


def test_image_training_with_online_probe_and_report(tiny_dir, tmp_path, one_device):
    from experiments import report_vision
    from experiments.configs import cifar10_small
    from gje_jax.train import config_check, loop

    _, prepared = tiny_dir
    c = cifar10_small.get_config("gmje,runlocal")
    c.unlock()
    c.data.update(dict(_data_config(directory=prepared)))
    c.batch_size = 8
    c.eval.knn_k = (3,)
    c.lock()
    row = report_vision.run_method(
        c, str(tmp_path / "gmje"), *[images.load_split(c.data, s) for s in ("train", "test")]
    )
    assert 0.0 <= row["knn_k3"] <= 1.0 and 0.0 <= row["linear"] <= 1.0
    assert np.isfinite(row["online_probe"]) and row["images_per_s"] > 0
    with open(tmp_path / "gmje" / "metrics.jsonl") as f:
        assert "probe_accuracy" in f.readline()
    # Data errors are caught before compilation, naming the field.
    c.unlock()
    c.data.augment = "simclr_imagenet"
    with pytest.raises(ValueError, match="config.data.augment"):
        config_check.validate(c)
    c.data.augment = "simclr_cifar"
    c.data.directory = str(tmp_path / "missing")
    with pytest.raises(images.DatasetNotFoundError):
        loop.setup(c)


def test_matmul_conv_equals_lax_convolution():
    from gje_jax.models.encoders import Conv3x3, space_to_depth

    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 5))
    conv = Conv3x3(7)
    v = conv.init(jax.random.key(1), x)
    kernel = v["params"]["kernel"]["kernel"].reshape(3, 3, 5, 7)  # rows of the matmul: (dy, dx, c)
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply(v, x), want, atol=1e-5)
    s = np.asarray(space_to_depth(x, 2))
    assert s.shape == (2, 4, 3, 20)
    np.testing.assert_array_equal(s[1, 2, 1].reshape(2, 2, 5), np.asarray(x)[1, 4:6, 2:4])


def test_report_helpers_import_next_to_the_main_entry_point():
    # experiments.sampling uses report_vision's helpers inside `python -m experiments.main`:
    # importing it must not define a second --config flag.
    import experiments.main  # noqa: F401
    from experiments import report_vision

    assert callable(report_vision.method_config)


def test_report_overrides_set_typed_fields_and_reject_unknown_paths():
    from absl import flags
    from ml_collections import config_flags

    from experiments import report_vision
    from experiments.configs import cifar10_small

    # The command line: ml_collections overrides, parsed against the config string's method;
    # a value may hold commas and parentheses.
    argv = [
        "report_vision",
        "--workdir=w",
        "--config=experiments/configs/cifar10_small.py:gmje_em,runlocal",
        "--config.model.widths=(4,8)",
        "--config.method.pooled_eps_rel=1",
        "--config.optim.name=sgd",
        "--config.num_steps=7",
    ]
    fv = flags.FlagValues()
    report_vision._define_flags(fv, argv)
    fv(argv)
    overrides = config_flags.get_override_values(fv["config"])
    c = report_vision.method_config(cifar10_small, "gmje_em", "runlocal", overrides)
    assert c.num_steps == 7 and c.method.pooled_eps_rel == 1.0 and isinstance(c.method.pooled_eps_rel, float)
    assert tuple(c.model.widths) == (4, 8) and c.optim.name == "sgd"
    # Applied to another method that has the setting; one without it is refused by name.
    assert report_vision.method_config(cifar10_small, "gmje_gng", "runlocal", overrides).method.pooled_eps_rel == 1.0
    with pytest.raises(ValueError, match=r"--config.method.pooled_eps_rel: the config of 'simclr' has no such field"):
        report_vision.method_config(cifar10_small, "simclr", "runlocal", overrides)
    # A path the parsing config does not hold fails at the command line, naming it.
    argv = ["report_vision", "--workdir=w", "--config=experiments/configs/cifar10_small.py:gmje_em"]
    argv.append("--config.method.pooled_eps=1")
    bad = flags.FlagValues()
    report_vision._define_flags(bad, argv)
    with pytest.raises(Exception, match="pooled_eps"):
        bad(argv)
    # An empty --workdir (a shell variable that was never set) is refused, not the current directory.
    empty = flags.FlagValues()
    report_vision._define_flags(empty)
    with pytest.raises(flags.IllegalFlagValueError, match="--workdir must name a directory"):
        empty(["report_vision", "--workdir="])
