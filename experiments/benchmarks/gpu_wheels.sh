#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the Python 3.12 wheels that the GPU image lacks and
# gpu_check.sh needs: ml-collections and tensorboardX (the training run), distrax and TFP
# with TFP's own needs (the kernel benchmark's references). About 8 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in ml-collections tensorboardX distrax tensorflow-probability dm-tree gast decorator; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl "$pkg"
done
ls -la .whl
