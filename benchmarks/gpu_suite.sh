#!/usr/bin/env bash
# One pass of every GPU benchmark, for a short lease on one H100/H200: correctness-checked GPU tests first,
# then each benchmark under its own time limit, results as JSON under OUT (default benchmarks/results/gpu).
# Usage: bash benchmarks/gpu_suite.sh [OUT [STEP...]]   STEP: gpu_tests attention train_step decode train_32k
# (default all; the limits add up to under 10 minutes: one device call). The device machine has jax, flax, optax,
# orbax, torch and transformers;
# no TensorFlow or SeqIO is needed: the data-pipeline benchmark is the CPU host's and is not run here.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:-${OUT:-benchmarks/results/gpu}}
shift || true
wanted=" ${*:-gpu_tests attention train_step decode train_32k} "
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python -c 'import jax, flax, optax, torch, transformers; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$out/device.txt"

status=0
step() {  # step NAME SECONDS CMD...: run one item, keep going if it fails or times out
  local name=$1 limit=$2; shift 2
  [[ $wanted == *" $name "* ]] || return 0
  echo "=== $name (limit ${limit}s)"
  if ! timeout "$limit" "$@" > "$out/$name.log" 2>&1; then
    echo "!!! $name failed or timed out (see $out/$name.log)"; status=1
  fi
  tail -n 25 "$out/$name.log"
}

step gpu_tests 100 python -m pytest -q -m "gpu" tests/test_attention.py -p no:cacheprovider
step attention 120 python -m benchmarks.attention --out "$out/attention.json"
step train_step 150 python -m benchmarks.train_step --out "$out/train_step.json"
step decode 120 python -m benchmarks.decode --out "$out/decode.json"
step train_32k 90 python -m benchmarks.train_step --seq 32768 --batch 1 --remat full --systems jax --out "$out/train_32k.json"
exit $status
