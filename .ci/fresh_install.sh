#!/usr/bin/env bash
# A plain (non-editable) install, as a user or Colab has it: build the wheel, install it with
# its extras into a fresh virtual environment, then from an empty directory
#   1. run the main job's smoke config by name (gje-train --config=alignment:runlocal), and
#   2. run the quickstart notebook, whose first cell installs the wheel (GJE_JAX_SOURCE).
# Usage: .ci/fresh_install.sh [PYTHON]   (default python3; the repository's venv is not used)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${1:-python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
python -m pip wheel -q --no-deps -w "$W/dist" .
WHEEL=$(ls "$W"/dist/gje_jax-*.whl)
# Checked in Python, not with `unzip -l | grep -q`: under pipefail grep's early exit can kill
# unzip with SIGPIPE and fail the check on a wheel that is fine (seen in CI).
"$PY" - "$WHEEL" <<'PY'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
if "gje_experiments/configs/alignment.py" not in names:
    sys.exit("wheel lacks the configs")
if any(n.startswith("experiments/") for n in names):
    sys.exit("wheel installs a top-level 'experiments'")
PY
"$PY" -m venv "$W/venv"
"$W/venv/bin/python" -m pip install -q --upgrade pip
# The notebook runner first (as Colab has it), without gje_jax.
"$W/venv/bin/python" -m pip install -q nbclient nbformat ipykernel
mkdir "$W/empty"
cd "$W/empty"
GJE_JAX_SOURCE="$WHEEL" GJE_COLAB_SMALL=1 MPLBACKEND=Agg JAX_PLATFORMS=cpu "$W/venv/bin/python" - "$ROOT/colabs/01_quickstart.ipynb" <<'PY'
import sys

import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "."}}).execute()
print("quickstart notebook: ran, installing", __import__("os").environ["GJE_JAX_SOURCE"])
PY
"$W/venv/bin/python" -c "import gje_jax, importlib.util; assert importlib.util.find_spec('experiments') is None; print('gje_jax', gje_jax.__version__, gje_jax.__file__)"
JAX_PLATFORMS=cpu "$W/venv/bin/gje-train" --config=alignment:runlocal --workdir=out
test -s out/alignment_results.md
echo "fresh install: the main job's smoke config ran from an empty directory"
