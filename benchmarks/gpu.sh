#!/usr/bin/env bash
# The GPU numbers that matter most first, then the CUDA test stage, on one bare GPU machine in
# about 8 minutes (one device command may run 10).
#
#   make gpu-wheels                        # here, once (with network): .whl/ for the GPU machine
#   bash benchmarks/gpu.sh [OUT_DIR]       # there; or: make bench-gpu
#
# Writes one table per benchmark as it finishes, the device and the test summary under OUT_DIR
# (default $OUT when set, else benchmarks/gpu-out), to be copied into benchmarks/RESULTS.md with
# the device named. The GPU targets of issue 21: flatlab/limit <= 1.5 (step_time), batched
# per-node curvature <= 0.3x sequential (curvature), 1024 ResNet-20-GN nodes at >= 5 steps/s.
# Each command has its own time limit so that one slow benchmark cannot eat the others'; the
# limits add to 575 s.
#
# It runs on the machine's own python3 and CUDA torch ($PYTHON to choose another), with this
# checkout on PYTHONPATH (as `make bench-gpu` sets). A GPU machine has no package registry: what
# its image lacks (mnist1d, pyhessian) travels as wheels in .whl/ (`make gpu-wheels`), installed
# here into a private folder, never over the image's own packages.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="${1:-${OUT:-$here/gpu-out}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"  # absolute before any cd
py="${PYTHON:-python3}"
dev="${DEVICE:-cuda}"  # DEVICE=cpu tries the script on a machine without a GPU
if compgen -G "$root/.whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/flatlab-site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$root"/.whl/*.whl || exit 1
  export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c "import flatlab" 2>"$out/import.txt"; then
  echo "flatlab does not import here ($(tail -n 1 "$out/import.txt")); run 'make gpu-wheels'" \
       "where pip works and carry .whl/ along" | tee -a "$out/device.txt"
  exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; } | tee "$out/device.txt"
cd "$here"
run() {  # run NAME SECONDS ARGS...: one benchmark, its output kept whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee "$out/$name.txt"
  PYTHONUNBUFFERED=1 timeout "$limit" "$py" "$@" 2>&1 | tee -a "$out/$name.txt"
}
# most important first: the step against its limit, per-node curvature, 1024 ResNet nodes
run step_time 90 step_time.py --device "$dev" --sizes 32,256 --quick
run curvature 80 curvature.py --device "$dev" --train-steps 100
run resnet 60 scale.py --device "$dev" --sizes 1024 --steps 10 --model resnet20 --batch 16
cd "$root"
echo "== tests" | tee "$out/tests.txt"
PYTHONUNBUFFERED=1 timeout 150 "$py" -m pytest -q -x -m "not slow" -p no:cacheprovider \
    -p no:xdist tests/test_cuda_paths.py 2>&1 | tail -n 30 | tee -a "$out/tests.txt"
cd "$here"
run host_waits 30 host_waits.py --device "$dev"
run mix 35 mix.py --device "$dev" --sizes 32,256,1024
run ngpd 30 ngpd.py --device "$dev" --quick
run scale 30 scale.py --device "$dev" --sizes 256,1024 --steps 20
# the large-batch search's GPU scale (issue 33): its expected hours from steps timed here, on
# random CIFAR-10-shaped files (a step's time depends on the shapes, not on the pixels)
fake="${TMPDIR:-/tmp}/flatlab-fake-cifar"
"$py" -c "import numpy as np, pathlib; d = pathlib.Path('$fake/cifar-10-batches-bin')
d.mkdir(parents=True, exist_ok=True); r = np.random.default_rng(0)
for f in [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']:
    x = r.integers(0, 256, (10000, 3073), dtype=np.uint8); x[:, 0] %= 10; x.tofile(d / f)"
FLATLAB_DATA="$fake" run large_batch_full 70 -m flatlab.studies large_batch --scale full \
    --estimate
