#!/usr/bin/env bash
# Everything that needs a CUDA device, as one run: the CUDA tests, the eager
# tests on this machine's torch, the recording-overhead benchmark, and
# torchtitan's models on meta against a real backward (benchmarks/gpu_titan.py).
#
#     bash benchmarks/gpu_check.sh        # in the repository root, with torch, typer,
#                                         # rich and pytest importable by python3
# The log is also written to $OUT/gpu_check.log when OUT is set.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log=${OUT:-/tmp}/gpu_check.log
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_eager.py tests/test_record.py
    "$PY" benchmarks/bench_gpu.py --breakdown
    "$PY" benchmarks/gpu_titan.py
    "$PY" benchmarks/gpu_memory.py
} 2>&1 | tee "$log"
