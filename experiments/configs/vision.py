"""Shared pieces of the image configs (cifar10_small, cifar10_resnet18): the data section
and per-method settings. Not a config itself."""

import os

import ml_collections

from gje_jax import methods
from gje_jax.train.configs import base_config, load_sibling

_common = load_sibling(__file__, "common")


def shared_cifar10() -> str:
    """The offline prepared CIFAR-10 copy (ArrayRecord, see shared/data/README.md beside the
    project): $GJE_JAX_CIFAR10_DIR if set, else the copy beside this source checkout, as an
    absolute path; '' when neither exists (TFDS then reads 'cifar10' by name under data_dir)."""
    env = os.environ.get("GJE_JAX_CIFAR10_DIR", "")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    here = os.path.dirname(os.path.abspath(__file__))  # <checkout>/experiments/configs
    path = os.path.normpath(os.path.join(here, "..", "..", "..", "shared", "data", "tfds", "cifar10_jpeg", "1.0.0"))
    return path if os.path.isdir(path) else ""


_DATASETS = {
    # name: (image_shape, num_classes, recipe, channel mean, channel std)
    "cifar10": ((32, 32, 3), 10, "simclr_cifar", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((32, 32, 3), 100, "simclr_cifar", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((96, 96, 3), 10, "simclr_96", (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


def image_data(name: str = "cifar10") -> dict:
    """config.data for a TFDS image dataset. directory: a prepared ArrayRecord copy (used when
    set); else the registered `name` under data_dir (TFDS's default when empty)."""
    shape, classes, recipe, mean, std = _DATASETS[name]
    return dict(
        name=name,
        directory=shared_cifar10() if name == "cifar10" else "",
        data_dir="",
        cache_dir="~/.cache/gje_jax",  # decoded uint8 arrays; '' disables the cache
        train_split="train",
        test_split="test",
        image_shape=shape,
        num_classes=classes,
        augment=recipe,
        mean=mean,
        std=std,
        online_probe=True,
        probe_lr=1e-3,
    )


# Method settings of the image recipes, for every method that reads them.
VISION_TUNING = dict(
    tau=0.2,
    predictor_loss="cosine",
    target_momentum=0.99,
    num_components=16,
    objective="joint",
    lambda_geo=1.0,
    # GJE on images: the batch estimator falls into the trace trap here (a 256-image batch
    # against a 128-D joint: effective rank 1.7 and kNN 30.2 after 800 steps, below the
    # random encoder's 38.4); EMA statistics keep rank ~30 (kNN 45.8); a Gaussian learned
    # by SGD with the encoder does best (kNN 50.6; all measured, docs/results/ablations/index.md).
    estimator="param",
    mdn_hidden=(256,),
    gng_capacity=32,
    gng_insert_every=50,
    bank_size=4096,
    # The image tables were made on a GPU with the density settings before December 2026;
    # no GPU was lent to rerun them (see common.BEFORE_DECEMBER_2026).
    **_common.BEFORE_DECEMBER_2026,
)
# The methods that fit their density to the embeddings' own scale (those with a pooled
# ridge: EM, GNG, MDN). Without a floor relative to the embeddings' spread their mixtures
# reward packing the images into K tight clusters (GNG: embedding std 0.013 and kNN 28.2;
# EM 35.3; MDN 35.6, below the random encoder's 38.4, measured at 800 steps). kNN at
# k = 200 with pooled_eps_rel 0.5 / 2 / 8: EM 41.9 / 46.0 / 47.2, GNG 41.5 / 46.0 / 47.6,
# MDN 40.8 / 48.2 / 48.5; 32 is no better (docs/results/ablations/index.md). A ridge shaped like
# the total covariance (pooled_shape) at 8 gave EM 47.7, GNG 47.7; at 2400 steps (with the
# fixed output scale of set_method_model) it beat the isotropic one: EM 48.3 against 47.4,
# GNG 48.3 against 47.1.
# The ridge widens every component about (1 + pooled_eps_rel)-fold, which weakens the NLL's
# pull (aligning the views) against the geometry term's push (decorrelating the dimensions);
# with the fixed output scale, lambda_geo no longer has to be 1 for scale invariance. EM at
# 800 steps, kNN k=200 with lambda_geo 2 / 1 / 0.5 / 0.25 / 0.125: 47.2 / 48.3 / 48.9 /
# 49.0 / 49.1 (0: the NLL fell without bound, NaN at step 225). At 2400 steps, 0.125
# against 1: EM 51.8 / 48.3, GNG 49.6 / 48.3, MDN 53.7 / 48.5.
POOLED_TUNING = dict(pooled_eps_rel=8.0, pooled_shape="covariance", lambda_geo=0.125)


def _pooled(c) -> bool:
    return "pooled_eps_rel" in c.method


def set_method(c: ml_collections.ConfigDict, method: str) -> None:
    """config.method for `method` with the image recipes' settings."""
    c.method = methods.tuned(method, VISION_TUNING)
    if _pooled(c):
        c.method = methods.tuned(method, {**VISION_TUNING, **POOLED_TUNING})


def set_method_model(c: ml_collections.ConfigDict, expander: int) -> None:
    """Per-method model settings, applied after a recipe sets its model.

    VICReg's recipe regularises the covariance of a wide expander (Bardes et al. use 8192;
    the common CIFAR recipes 2048): with the 64-D embeddings of cifar10_small it reached
    kNN 44.4 after 800 steps, with a 1024-wide expander 50.0 (docs/results/ablations/index.md); every
    method that declares WIDE_EMBEDDING (Barlow Twins too) gets the expander. The density methods
    keep the recipe's embedding size: their joint covariance is (2E)^2.
    """
    if methods.wide_embedding(c.method.name):
        c.model.embed_dim = expander
        c.model.projector_hidden = (expander,)
    # EM, GNG and MDN fit their density to the embeddings' own scale (the pooled ridge), so
    # their loss is scale-invariant and nothing holds the scale: over 2400 steps the embedding
    # std grew from 1 to about 250 while the loss rose, and kNN fell below its 800-step value
    # (EM 47.2 -> 44.7, MDN 48.5 -> 46.2, GNG 47.6 -> 44.9). A batch-norm output without
    # affine parameters fixes the scale: EM 47.4, MDN 48.5, GNG 47.1 with the isotropic ridge
    # (docs/results/ablations/index.md).
    if _pooled(c):
        c.model.projector_out_norm = True


def vision_base(method: str, dataset: str = "cifar10") -> ml_collections.ConfigDict:
    c = base_config()
    c.data = image_data(dataset)
    c.eval = dict(
        knn_k=(200, 20), knn_temperature=0.1, probe_epochs=100, probe_lr=1e-2, probe_weight_decay=1e-4, embed_batch=500
    )
    set_method(c, method)
    return c
