"""Image datasets through tensorflow-datasets' ArrayRecord data sources (no TensorFlow).

Datasets are read either by registered name (`tfds.builder(name, data_dir=...)`, prepared
beforehand in ArrayRecord format) or from a prepared directory
(`tfds.builder_from_directory(path)`), decoded once into uint8 arrays held in memory and
cached as .npy next to nothing else the run owns. On several hosts each process decodes and
holds only its own share (every process_count-th example), and batches it by index.

Example:
    data = load_split(config.data, "train")            # {'image': uint8 [N, 32, 32, 3], 'label': int32 [N]}
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

# Image shape and number of classes of the datasets the configs know by name.
KNOWN = {
    "cifar10": ((32, 32, 3), 10),
    "cifar10_jpeg": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "stl10": ((96, 96, 3), 10),
}

_HOW_TO = (
    "Provide it in TFDS ArrayRecord format, either (a) prepared under a TFDS data_dir "
    "(`tfds build {name} --file_format=array_record --data_dir=DIR`, then --config.data.data_dir=DIR), or "
    "(b) as a prepared copy: --config.data.directory=PATH/{name}/VERSION (the folder holding dataset_info.json)."
)


class DatasetNotFoundError(FileNotFoundError):
    """The configured dataset cannot be found; the message says how to provide it.

    Example:
      >>> from gje_jax.data import images
      >>> import ml_collections
      >>> d = ml_collections.ConfigDict(dict(name="", directory="/no/such/dir", image_shape=(32, 32, 3), cache_dir=""))
      >>> try:
      ...     images.load_split(d, "train")
      ... except images.DatasetNotFoundError as e:
      ...     print("DatasetNotFoundError")
      DatasetNotFoundError
    """


def _builder(d):
    import tensorflow_datasets as tfds

    if d.directory:
        if not os.path.exists(os.path.join(d.directory, "dataset_info.json")):
            raise DatasetNotFoundError(
                f"config.data.directory={d.directory!r} holds no prepared TFDS dataset (no dataset_info.json). "
                + _HOW_TO.format(name=d.name)
            )
        return tfds.builder_from_directory(d.directory)
    try:
        builder = tfds.builder(d.name, data_dir=d.data_dir or None)
    except Exception as e:  # unknown name or registry errors
        raise DatasetNotFoundError(f"TFDS has no dataset {d.name!r} ({e}). " + _HOW_TO.format(name=d.name)) from e
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"Dataset {d.name!r} is not prepared in {builder.data_dir!r} and this library never downloads. "
            + _HOW_TO.format(name=d.name)
        )
    return builder


def cache_path(d, split: str, process_index: int, process_count: int) -> str | None:
    """Where load_split caches this process's share of `split` as .npz (None without
    d.cache_dir): one file per dataset, source, split and process share.

    Example:
      >>> from gje_jax.data import images
      >>> from ml_collections import ConfigDict
      >>> d = ConfigDict(dict(name="cifar10", directory="", data_dir="/data", cache_dir="/tmp/c"))
      >>> images.cache_path(d, "train", 0, 1).startswith("/tmp/c/cifar10-train-"), images.cache_path(dict(cache_dir=""), "train", 0, 1)
      (True, None)
    """
    if not d["cache_dir"]:
        return None
    ident = f"{d.name}|{os.path.abspath(d.directory) if d.directory else d.data_dir}|{split}|{process_index}/{process_count}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(d.cache_dir), f"{d.name}-{split}-{digest}.npz")


def load_split(d, split: str, process_index: int = 0, process_count: int = 1, progress: bool = False):
    """This process's share of one split: {'image': uint8 [n, H, W, C], 'label': int32 [n]}.

    d: config.data (name, directory, data_dir, cache_dir, image_shape). Examples
    process_index, process_index + process_count, ... are this process's share.
    Raises DatasetNotFoundError (how to provide it) or ValueError (wrong image shape).

    Example:
      >>> from gje_jax.data import images
      >>> # d: config.data of an image config (e.g. experiments/configs/cifar10_small.py)
      >>> data = images.load_split(d, "test")   # doctest: +SKIP
      >>> data["image"].shape, data["label"].shape                                  # doctest: +SKIP
      ((10000, 32, 32, 3), (10000,))
    """
    path = cache_path(d, split, process_index, process_count)
    if path and os.path.exists(path):
        with np.load(path) as f:
            data = {"image": f["image"], "label": f["label"]}
    else:
        builder = _builder(d)
        if split not in builder.info.splits:
            raise DatasetNotFoundError(
                f"Dataset {d.name!r} has no split {split!r}; it has {sorted(builder.info.splits)}."
            )
        source = builder.as_data_source(split=split)
        idx = list(range(process_index, len(source), process_count))
        images, labels = [], []
        chunks = range(0, len(idx), 1000)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"decoding {d.name}/{split}", unit="k images")
        for s in chunks:
            rows = source.__getitems__(idx[s : s + 1000])
            images.append(np.stack([np.asarray(r["image"], np.uint8) for r in rows]))
            labels.append(np.asarray([r["label"] for r in rows], np.int32))
        data = {"image": np.concatenate(images), "label": np.concatenate(labels)}
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **data)
            os.replace(tmp, path)  # atomic: an interrupted write never leaves a half cache
    check_images(data["image"], d, split)
    return data


def check_images(images: np.ndarray, d, split: str = "") -> None:
    """Raises ValueError unless images are uint8 [n, *d.image_shape].

    Example:
      >>> from gje_jax.data import images
      >>> import ml_collections
      >>> d = ml_collections.ConfigDict(dict(name="cifar10", image_shape=(32, 32, 3)))
      >>> images.check_images(np.zeros((2, 32, 32, 3), np.uint8), d)    # fine: returns None
      >>> try:
      ...     images.check_images(np.zeros((2, 28, 28, 1), np.uint8), d)
      ... except ValueError as e:
      ...     print("image_shape" in str(e))
      True
    """
    want = tuple(d.image_shape)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"Dataset {d.name!r} split {split!r} has images {images.dtype} {images.shape[1:]}, the config expects "
            f"uint8 {want} (config.data.image_shape). Set image_shape to match or use the right dataset."
        )


def channel_stats(images: np.ndarray, max_images: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std [C] of uint8 images scaled to [0, 1] (on at most max_images).

    Example:
      >>> from gje_jax.data import images
      >>> mean, std = images.channel_stats(np.full((4, 8, 8, 3), 255, np.uint8))
      >>> mean.tolist(), std.tolist()
      ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    x = images[:max_images].astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)).astype(np.float32), x.std(axis=(0, 1, 2)).astype(np.float32)
