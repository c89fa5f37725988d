#!/usr/bin/env bash
# The cuda backend on a real NVIDIA GPU, in one call (issue 16).
#
# Run from the repository root on a machine with an NVIDIA GPU where numba, numba-cuda,
# cupy-cuda13x, torch and torchvision are already installed:
#
#     OUT=/some/dir bash scripts/gpu_check.sh        # default OUT: ./gpu_out
#
# It installs the project without touching those packages, then writes under $OUT:
#   env.txt             the GPU, driver and package versions
#   pytest_gpu.log      `pytest -m gpu` on the device (not the simulator)
#   pytest_cuda.log     every kernel-vs-reference test of the cuda backend, on the device
#   ptx.log             every kernels/cuda/*.cu compiled for this GPU
#   bench.txt/.json     `minirccn bench` (numba, cuda, torchvision CPU and CUDA side by side)
#   nms_sweep.txt/.json NMS from 1k to 200k boxes on numba, cuda and torchvision CUDA
#   train_{numba,cuda}/ a short training run on each backend, same seed
#   train_compare.txt   their losses side by side (the check: equal to float tolerance)
#   summary.txt         one line per step: ok / FAILED
# Each step has its own time limit so that the whole script stays under ~8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export NUMBA_ENABLE_CUDASIM=0 PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS LOGFILE COMMAND...
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    local verdict=ok
    [ $rc -ne 0 ] && verdict="FAILED (exit $rc)"
    [ $rc -eq 124 ] && verdict="FAILED (timed out after ${limit}s)"
    printf '%-14s %-28s %4ss  %s\n' "$name" "$verdict" "$((SECONDS - t0))" "$log" | tee -a "$SUMMARY"
}

step install 120 "$OUT/install.log" pip install --no-build-isolation --no-deps -e .

step env 30 "$OUT/env.txt" bash -c '
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python - <<PY
import importlib, platform
print("python", platform.python_version())
for m in ("numpy", "numba", "numba_cuda", "cupy", "torch", "torchvision"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "not importable:", e)
import cupy
print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion())
from minirccn.core import backend
assert backend.gpu_available(), "minirccn does not see the GPU"
print("minirccn sees the GPU")
PY'

step pytest-gpu 150 "$OUT/pytest_gpu.log" python -m pytest -q -m gpu -p no:cacheprovider tests
step pytest-cuda 150 "$OUT/pytest_cuda.log" python -m pytest -q -k cuda -p no:cacheprovider tests/ops tests/nn tests/detector

step ptx 60 "$OUT/ptx.log" bash -c '
    arch=$(python -c "import cupy; print(\"sm_\" + cupy.cuda.Device().compute_capability)")
    for f in kernels/cuda/*.cu; do
        nvcc -ptx -std=c++14 -arch="$arch" -o /dev/null "$f" || exit 1
        echo "compiled $f for $arch"
    done'

step bench 200 "$OUT/bench.txt" minirccn bench --groups ops,layers,train --backends numba,cuda \
    --json "$OUT/bench.json"

step nms-sweep 120 "$OUT/nms_sweep.txt" python - "$OUT/nms_sweep.json" <<'PY'
import json, sys
from minirccn import bench
devices = [d for d in bench.torch_devices() if d == "cuda"]
rows = []
for n in (1000, 10000, 50000, 100000, 200000):
    # numba's greedy walk is quadratic in the worst case: time it only up to 50k boxes
    backends = ["numba", "cuda"] if n <= 50000 else ["cuda"]
    rows += bench.run_case(bench._case_nms(n, sweep=True), backends, devices, seed=0,
                           min_time=0.2, memory=False)
print(bench.format_table(rows))
json.dump({"machine": bench.machine_description(), "results": rows}, open(sys.argv[1], "w"), indent=1)
PY

ITERS="${ITERS:-60}"
step train-numba 120 "$OUT/train_numba.log" \
    minirccn train --backend numba --iters "$ITERS" --seed 0 --out "$OUT/train_numba"
step train-cuda 120 "$OUT/train_cuda.log" \
    minirccn train --backend cuda --iters "$ITERS" --seed 0 --out "$OUT/train_cuda"
step train-compare 30 "$OUT/train_compare.txt" python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/train_numba/metrics.json"))
b = json.load(open(f"{out}/train_cuda/metrics.json"))
print(f"{'':18} {'numba':>12} {'cuda':>12}  rel. diff")
worst = 0.0
for k, va in a["final_losses"].items():
    vb = b["final_losses"][k]
    rel = abs(va - vb) / max(abs(va), 1e-12)
    worst = max(worst, rel)
    print(f"{k:18} {va:12.6f} {vb:12.6f}  {rel:.2e}")
for k in ("map50", "images_per_second", "train_seconds"):
    print(f"{k:18} {a.get(k)!s:>12} {b.get(k)!s:>12}")
# float32 sums in a different order (atomics, cuBLAS) drift over the steps: 1e-3 relative
sys.exit(0 if worst < 1e-3 else 1)
PY

echo "wrote $OUT (summary: $SUMMARY)"
grep -q FAILED "$SUMMARY" && exit 1 || exit 0
