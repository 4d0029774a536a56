#!/usr/bin/env bash
# The GPU issue's device checks in one run, on an NVIDIA machine whose python3 has numba-cuda,
# numpy, pyarrow, pytest and hypothesis (the device tool's 'cuda' image). Prepare here with
# `make gpu-wheels` (orjson and cachetools, which that python lacks), then run from the repo root
# there with `.whl` carried:  bash tests/tools/gpu_check.sh   (about 6 minutes; results in $OUT)
#
# 1. the CUDA backend's tests on the real device (bit-identical maps, defined casts, radix select,
#    pipelined batches, device-resident chains, the million-row MAD chain vs the CPU);
# 2. benchmarks/accel.py --backend gpu at 1e6, 1e7 and 1e8 rows: ceilings, end-to-end, pipelined and
#    device-resident times vs the CPU backend on one core.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "run 'make gpu-wheels' here first and carry .whl"; exit 1; }
mkdir -p /tmp/sc
cat > /tmp/sc/sitecustomize.py <<'PY'
import numpy
if not hasattr(numpy, "row_stack"):  # the image's numba-cuda overloads it; numpy 2.5 removed it
    numpy.row_stack = numpy.vstack
PY
export PYTHONPATH=/tmp/sc:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
python3 -c "import numba, numpy; from numba import cuda; print(numba.__version__, numpy.__version__, cuda.is_available())" \
  | tee "$OUT/versions.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/unit/test_accel_cuda.py tests/unit/test_accel_fmath.py \
  2>&1 | tail -40 | tee "$OUT/tests.txt"
timeout 300 python3 benchmarks/accel.py --backend gpu --sizes 1e6,1e7,1e8 --bandwidth-gb 2 --json \
  2> "$OUT/bench.err" | tee "$OUT/accel_gpu.json"
tail -5 "$OUT/bench.err"
