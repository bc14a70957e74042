#!/usr/bin/env bash
# The GPU checks and measurements of issue 13 in one call: at most 9.5 minutes (timeouts 330 +
# 150 + 90 s), expected 6-8 on an H100/H200
# (Triton compiles the kernels for each shape the tests use; torch.compile of the reference takes
# 1-2 minutes). Run from the repository root on a machine with a CUDA GPU, torch and Triton
# (the device machine's python3, nothing to install); writes into $OUT (default results/gpu):
#   gpu.txt      the card, driver, torch and triton
#   bench.md     throughput, peak memory, launch configurations, epoch times (bench.json: raw)
#   tests.txt    the CUDA tests: Triton kernels, the operator, CUDA graphs, training
#   quick.txt    eqpdenet reproduce --quick --device cuda, if $EQPDENET_DATA holds mnist/
#                (quick_results.jsonl: its runs)
# The benchmark runs first (its agreement check compares the kernel with the reference at the
# production shape), then the tests.
set -uo pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 OMP_WAIT_POLICY=PASSIVE
start=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 330 python3 benchmarks/bench_gpu.py --out "$OUT" --sweep 2>&1 | tee "$OUT/bench.log"
echo "benchmark done after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -x tests/kernels/test_triton_kernel.py \
    tests/kernels/test_cuda_operator.py tests/app/test_accelerate.py \
    -k "(cuda or test_triton_kernel) and not compile_for_hopper" 2>&1 | tee "$OUT/tests.txt"
echo "tests done after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
if [ -d "${EQPDENET_DATA:-/nonexistent}/mnist" ]; then
    ( time timeout 90 python3 -m eqpdenet reproduce --quick --device cuda --no-progress \
        --out /tmp/eqpdenet-quick --cache-dir /tmp/eqpdenet-cache ) > "$OUT/quick.txt" 2>&1
    cp /tmp/eqpdenet-quick/results.jsonl "$OUT/quick_results.jsonl" 2>/dev/null
    tail -8 "$OUT/quick.txt"
fi
echo "all done after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
