#!/usr/bin/env bash
# Every benchmark on CUDA, then the test suite, on one GPU machine in under 10 minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # or: make bench-gpu
#
# Writes one table per benchmark, the device and the test summary under OUT_DIR (default
# $OUT when set, else benchmarks/gpu-out), to be copied into benchmarks/RESULTS.md with the
# device named. The GPU targets of issue 21: flatlab/limit <= 1.5 (step_time), batched per-node
# curvature <= 0.3x sequential (curvature), 1024 ResNet-20-GN nodes at >= 5 steps/s.
# Each command has its own time limit so that one slow benchmark cannot eat the others'.
# It runs on the machine's own python3 and CUDA torch ($PYTHON to choose another), with
# flatlab importable (PYTHONPATH=<checkout>, as `make bench-gpu` sets) and its dependencies
# (numpy, scipy, pandas, pyarrow, pyyaml, tqdm, pytest) installed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-$here/gpu-out}}"
py="${PYTHON:-python3}"
dev="${DEVICE:-cuda}"  # DEVICE=cpu tries the script on a machine without a GPU
mkdir -p "$out"
cd "$here"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; } | tee "$out/device.txt"
run() {  # run NAME SECONDS ARGS...: one benchmark, its output kept whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee "$out/$name.txt"
  PYTHONUNBUFFERED=1 timeout "$limit" "$py" "$@" 2>&1 | tee -a "$out/$name.txt"
}
run step_time 120 step_time.py --device "$dev" --sizes 32,256,1024 --quick
run mix 60 mix.py --device "$dev" --sizes 32,256,1024
run curvature 120 curvature.py --device "$dev" --train-steps 100
run ngpd 60 ngpd.py --device "$dev" --quick
run compress 45 compress.py --device "$dev" --quick
run scale 120 scale.py --device "$dev" --sizes 256,1024 --steps 20
run resnet 90 scale.py --device "$dev" --sizes 1024 --steps 10 --model resnet20 --batch 16
cd "$here/.."
echo "== tests" | tee "$out/tests.txt"
PYTHONUNBUFFERED=1 timeout 240 "$py" -m pytest -q -x -m "not slow" -p no:cacheprovider \
    tests/engine tests/comm tests/curvature tests/algorithms tests/measures 2>&1 \
    | tail -n 30 | tee -a "$out/tests.txt"
