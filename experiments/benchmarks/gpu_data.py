r"""A CIFAR-10 subset that travels to a machine without tensorflow-datasets or the data copy.

  python -m experiments.benchmarks.gpu_data pack --out=.gpu_data [--train=12000 --test=2000]
  python -m experiments.benchmarks.gpu_data install --src=.gpu_data --root=DIR

`pack` (here, where the prepared TFDS copy and tensorflow-datasets are) decodes the splits
through `gje_jax.data.images.load_split` and keeps a seeded random subset of each (the copy
is sorted by class, so a prefix would hold few classes), saved compressed: 12000 + 2000
images are about 38 MiB, which leaves room under the device's 64 MiB for the checkout and
the missing packages' wheels.

`install` (there) writes the subset where `load_split` looks for its decoded cache, for a
config whose `data.directory` is DIR/cifar10 and `data.cache_dir` DIR/cache; the loader then
reads the cache and never imports tensorflow-datasets. It prints the two `--config.` overrides
that point a config there.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _data_config(root: str | None = None):
    from ..configs import cifar10_resnet18

    d = cifar10_resnet18.get_config("gmje").data.copy_and_resolve_references()
    if root is not None:
        d.directory = os.path.join(os.path.abspath(root), "cifar10")
        d.cache_dir = os.path.join(os.path.abspath(root), "cache")
    return d


def overrides(root: str) -> list[str]:
    """The report_vision --config overrides that read the installed subset."""
    d = _data_config(root)
    return [f"data.directory={d.directory}", f"data.cache_dir={d.cache_dir}"]


def pack(out: str, num_train: int, num_test: int, seed: int = 0) -> dict[str, int]:
    from gje_jax.data import images

    d = _data_config()
    os.makedirs(out, exist_ok=True)
    sizes = {}
    for split, n in (("train", num_train), ("test", num_test)):
        data = images.load_split(d, split, progress=True)
        if n > len(data["label"]):
            raise ValueError(f"{split} has {len(data['label'])} images, {n} were asked for.")
        idx = np.sort(np.random.default_rng(seed).permutation(len(data["label"]))[:n])
        path = os.path.join(out, f"cifar10_{split}.npz")
        np.savez_compressed(path, image=data["image"][idx], label=data["label"][idx])
        sizes[split] = os.path.getsize(path)
    return sizes


def install(src: str, root: str) -> list[str]:
    from gje_jax.data import images

    d = _data_config(root)
    for split in ("train", "test"):
        target = images.cache_path(d, split, 0, 1)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with np.load(os.path.join(src, f"cifar10_{split}.npz")) as f:
            np.savez(target, image=f["image"], label=f["label"])
    return overrides(root)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--out", default=".gpu_data")
    a.add_argument("--train", type=int, default=12000)
    a.add_argument("--test", type=int, default=2000)
    b = sub.add_parser("install")
    b.add_argument("--src", default=".gpu_data")
    b.add_argument("--root", required=True)
    args = p.parse_args()
    if args.cmd == "pack":
        sizes = pack(args.out, args.train, args.test)
        print({k: f"{v / 2**20:.1f} MiB" for k, v in sizes.items()})
    else:
        print(" ".join(f"--config.{o}" for o in install(args.src, args.root)))


if __name__ == "__main__":
    main()
