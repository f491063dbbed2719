#!/usr/bin/env bash
# The cupy backend on a lent GPU machine, in one prepared run of under 5 minutes.
#
# Made for the project's device machine (one NVIDIA H200, CUDA 13, with CuPy, PyTorch and
# JAX installed; nothing outside it reachable). tinymeta is pure Python and runs from this
# checkout on PYTHONPATH; nothing is installed. Run from anywhere:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Phases, each under its own time limit (the sum stays under 5 minutes):
#   1. nvidia-smi and the versions of Python, NumPy, CuPy (its CUDA), PyTorch, JAX;
#   2. the gpu-marked tests on the cupy backend (TINYMETA_BACKEND=cupy pytest -m gpu);
#   3. the kernel check: every kernel against the NumPy reference on fresh random inputs,
#      float64 and float32, outputs poisoned with NaN (benchmarks/gpu_bench.py --check-only);
#   4. the benchmarks: fused kernels against cupy's unfused expressions, and second-order
#      MAML end to end (sinusoid, and the Omniglot-shaped configuration at T = 5, 20, 40),
#      against PyTorch torch.func+vmap and JAX jit+vmap where they import.
# Results in $OUT (7 files): env.txt, pytest_gpu.txt, kernel_check.json, bench.json,
# bench.md, log.txt (what phases 3 and 4 printed), summary.txt (each phase's exit status
# and time). TM_GPU_FULL_SUITE=1 adds an 8th, full_suite.txt: the whole test suite on the
# cupy backend (up to 2 more minutes, so over the 5-minute budget: off by default).
# The exit status is non-zero when a phase failed.

set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false # JAX beside cupy's and PyTorch's pools
start=$(date +%s)
failed=0
: >"$OUT/summary.txt"

elapsed() { echo $(($(date +%s) - start)); }

record() { # phase name, exit status
    echo "$1: exit $2 at $(elapsed) s" | tee -a "$OUT/summary.txt"
    if [ "$2" -ne 0 ]; then failed=1; fi
}

echo "== 1. device and versions"
{
    nvidia-smi || echo "nvidia-smi failed"
    echo
    "$PY" - <<'EOF'
import platform
import numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion(),
          "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as e:  # noqa: BLE001  (printed: this file says what the machine has)
    print("cupy unusable:", type(e).__name__, e)
for name in ("torch", "jax", "numba", "pytest", "hypothesis"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError as e:
        print(name, "not importable:", e)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
record "1 env" 0

echo "== 2. gpu-marked tests on the cupy backend"
if "$PY" -c "import pytest" 2>/dev/null; then
    if "$PY" -c "import hypothesis" 2>/dev/null; then
        targets=(tests)
    else # the project's conftest needs hypothesis; the cupy tests do not
        targets=(--noconftest tests/test_cupy_backend.py)
    fi
    TINYMETA_BACKEND=cupy timeout 80 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
        --continue-on-collection-errors "${targets[@]}" >"$OUT/pytest_gpu.txt" 2>&1
    rc=$?
    tail -n 30 "$OUT/pytest_gpu.txt"
else
    echo "pytest is not installed here: the gpu tests did not run" | tee "$OUT/pytest_gpu.txt"
    rc=1
fi
record "2 pytest -m gpu" "$rc"

echo "== 3. kernel check"
TINYMETA_BACKEND=cupy timeout 45 "$PY" benchmarks/gpu_bench.py --check-only --out "$OUT" \
    2>&1 | tee "$OUT/log.txt" | tail -n 15
record "3 kernel check" "${PIPESTATUS[0]}"

echo "== 4. benchmarks"
TINYMETA_BACKEND=cupy timeout 155 "$PY" benchmarks/gpu_bench.py --out "$OUT" --budget-s 105 \
    2>&1 | tee -a "$OUT/log.txt"
record "4 benchmarks" "${PIPESTATUS[0]}"

if [ "${TM_GPU_FULL_SUITE:-0}" = 1 ]; then
    echo "== 5. the whole test suite on the cupy backend"
    TINYMETA_BACKEND=cupy timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests \
        >"$OUT/full_suite.txt" 2>&1
    rc=$?
    tail -n 30 "$OUT/full_suite.txt"
    record "5 full suite" "$rc"
fi

echo "done in $(elapsed) s; results in $OUT" | tee -a "$OUT/summary.txt"
exit "$failed"
