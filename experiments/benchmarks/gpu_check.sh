#!/usr/bin/env bash
# First numbers on a GPU, in one call: the kernel benchmark against distrax/TFP, the
# ResNet-18 train-step overhead of every loss against SimCLR, and a short cifar10_resnet18
# run (simclr, gmje, gje) with kNN, linear probe and images/s.
#
#   bash experiments/benchmarks/gpu_check.sh [--tiny] [RESULTS_DIR]      (default: $OUT or gpu_results)
#
# Before the real run, on a machine with the prepared CIFAR-10 copy and pip (see README,
# "First numbers on a GPU"):
#   python -m experiments.benchmarks.gpu_data pack --out=.gpu_data     # ~38 MiB subset
#   bash experiments/benchmarks/gpu_wheels.sh                          # .whl/: what the GPU image lacks
# --tiny is the CPU dry run of the same steps at toy sizes (a few minutes on 2 cores); it
# packs its own small subset and hides tensorflow-datasets, as the GPU machine has none.
# Each step has its own time limit and a failed step does not stop the next; the exit code
# is the number of failed steps. Written to RESULTS_DIR: env.txt, kernels_gpu.md,
# train_step_gpu.md, vision_gpu.md/.csv, gpu_check.md (all of them) and log.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
TINY=0
if [ "${1:-}" = "--tiny" ]; then TINY=1; shift; fi
RESULTS="${1:-${OUT:-gpu_results}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$RESULTS/log.txt") 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gje_site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 100; }
  export PYTHONPATH="/tmp/gje_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

WORK="$(mktemp -d)"
DATA="$WORK/data"
if [ "$TINY" = 1 ]; then
  "$PY" -m experiments.benchmarks.gpu_data pack --out="$WORK/pack" --train=300 --test=100 || exit 101
  SRC="$WORK/pack"
  # The GPU machine has no tensorflow-datasets or array_record: the dry run must not need them.
  mkdir -p "$WORK/block/tensorflow_datasets" "$WORK/block/array_record"
  for m in tensorflow_datasets array_record; do
    echo "raise ImportError('$m is hidden for the dry run (the GPU machine has none)')" >"$WORK/block/$m/__init__.py"
  done
  export PYTHONPATH="$WORK/block:$PYTHONPATH"
  KERNELS=(--quick --repeats=1)
  STEP=(--encoder=convnet_small --batch=32 --embed=32 --dtype=bfloat16)
  TRAIN=(--config.num_steps=3 --config.batch_size=32 --config.optim.warmup_steps=1 --config.eval.probe_epochs=2)
  LIMITS=(300 300 500)
else
  SRC=".gpu_data"
  [ -f "$SRC/cifar10_train.npz" ] || { echo "no $SRC/cifar10_train.npz: run gpu_data pack first"; exit 101; }
  KERNELS=(--repeats=1)
  STEP=(--encoder=resnet18 --batch=512 --embed=128 --dtype=bfloat16)
  # 10 epochs of the 12000-image subset at batch 512; one epoch of warm-up.
  TRAIN=(--config.num_steps=234 --config.optim.warmup_steps=23)
  LIMITS=(170 150 200)
fi
mapfile -t SETS < <("$PY" -m experiments.benchmarks.gpu_data install --src="$SRC" --root="$DATA" | tr ' ' '\n')

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__); print(jax.devices())"
  git rev-parse HEAD 2>/dev/null || true
} >"$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

FAILED=0
step() {  # step NAME LIMIT CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0))s"
  [ $rc = 0 ] || FAILED=$((FAILED + 1))
}

step kernels "${LIMITS[0]}" "$PY" -m experiments.benchmarks.kernels "${KERNELS[@]}" --out="$RESULTS/kernels_gpu.md"
step train_step "${LIMITS[1]}" "$PY" -m experiments.benchmarks.train_step "${STEP[@]}" --out="$RESULTS/train_step_gpu.md"
step train "${LIMITS[2]}" "$PY" -m experiments.report_vision --config=experiments/configs/cifar10_resnet18.py \
  --methods=simclr,gmje,gje --workdir="$WORK/runs" --out="$RESULTS/vision_gpu" "${TRAIN[@]}" "${SETS[@]}"

for f in env.txt kernels_gpu.md train_step_gpu.md vision_gpu.md; do
  [ -f "$RESULTS/$f" ] && { echo; echo "<!-- $f -->"; cat "$RESULTS/$f"; }
done >"$RESULTS/gpu_check.md"
rm -rf "$WORK"
echo "failed steps: $FAILED; results in $RESULTS"
exit "$FAILED"
