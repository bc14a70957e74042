#!/usr/bin/env bash
# The GPU checks and measurements of issues 13 and 18 in one call, within $BUDGET seconds (default
# 570: the device machine's 10-minute limit per call, with margin). The parts run in order of
# priority, each under its own time limit and never past the deadline (a part left with under
# 20 s is skipped and says so); on the H200 of 2026-12-04 the parts took about 99, 191, 100 and 13
# s, before part 3 had the device-parity tests (Triton compiles the kernels for each shape):
#   1. benchmarks/bench_gpu.py --sweep: the PDE layer and EqPdeNet (issue 13), at most 330 s
#   2. benchmarks/bench_gpu_m2.py --cpu: LiftedPDENet, Triton vs reference on the GPU and the C++
#      kernel on the host's CPU (issue 18), at most 240 s (191 s on the H200, 2026-12-04)
#   3. the CUDA tests (Triton kernels of both, the operators, CUDA graphs, training, every model
#      on the GPU against the CPU in float64: Triton compiles each shape), at most 240 s
#   4. eqpdenet reproduce --quick --device cuda, if $EQPDENET_DATA holds mnist/, at most 90 s
#   5. training images/s side by side (the G-CNN where e2cnn imports) and a profile of the
#      lifted model's training step, at most 120 + 60 s (left for a later call when the budget
#      is spent: run the two commands alone)
# Run from the repository root on a machine with a CUDA GPU, torch and Triton (the device
# machine's python3, nothing to install); takes no argument but -h/--help (prints this and exits);
# writes into $OUT (default results/gpu):
#   gpu.txt      the card, driver, torch and triton, and when each part ended
#   bench.md     PDE layer: throughput, peak memory, launch configurations, epoch times (bench.json)
#   m2.md        LiftedPDENet: agreement, fwd+bwd images/s and peak memory at batch 64 and 1024,
#                Triton vs reference, and the C++ kernel on the CPU (m2.json: raw)
#   tests.txt    the CUDA tests
#   quick.txt    the quick reproduction (quick_results.jsonl: its runs)
#   train_throughput_cuda.md, profile_cuda.txt   part 5
# Each benchmark checks its kernels against the reference at production shapes before timing:
# a relative difference above 1e-4 or a fallback from the fused path (a kernel that did not load
# or compile) fails that part before any timing, naming the cause in its report.
# Without a CUDA GPU visible to torch it stops at once (one line, exit 2, nothing written). A part
# that fails or is stopped at its time limit does not stop the others, but the session then ends
# with "FAILED: <parts>" and exit 1 (a part skipped for want of budget says so and is no failure).
set -uo pipefail
usage() {
    echo "usage: benchmarks/gpu_session.sh [-h | --help]"
    echo "  environment: OUT (default results/gpu), BUDGET (seconds, default 570), EQPDENET_DATA"
    echo
    # the header above, without its first line and the comment marks
    sed -n '2,/^set -uo pipefail$/{/^#/s/^# \{0,1\}//p}' "$0"
}
# checked before the GPU is: on a GPU machine, an argument taken for a request to run (--help)
# would start the whole session and write into $OUT
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_session.sh: error: unknown argument: $arg (it takes none; see --help)" >&2
           exit 2 ;;
    esac
done
OUT=${OUT:-results/gpu}
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_session.sh: error: no CUDA GPU visible to torch (or torch does not import): nothing run" >&2
    exit 2
fi
mkdir -p "$OUT"
failed=()
export PYTHONPATH=src PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 OMP_WAIT_POLICY=PASSIVE
start=$(date +%s)
deadline=$(( start + ${BUDGET:-570} ))
# part LIMIT NAME COMMAND...: run COMMAND for at most min(LIMIT, seconds left)
part() {
    local limit=$1 name=$2 left=$(( deadline - $(date +%s) ))
    shift 2
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "$name skipped: ${left} s left of the budget" | tee -a "$OUT/gpu.txt"
        return 0
    fi
    timeout "$limit" "$@"
    local rc=$? how="done"
    [ "$rc" -eq 124 ] && how="stopped at its limit" || { [ "$rc" -ne 0 ] && how="failed (exit $rc)"; }
    echo "$name $how after $(( $(date +%s) - start )) s (limit ${limit} s)" | tee -a "$OUT/gpu.txt"
    return "$rc"
}
# Each call below ends with `|| failed+=(NAME)`: a part piped into tee runs in a subshell, so its
# status comes back through pipefail, not through a variable set inside it.
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"
part 330 "PDE-layer benchmark" python3 benchmarks/bench_gpu.py --out "$OUT" --sweep \
    2>&1 | tee "$OUT/bench.log" || failed+=("PDE-layer benchmark")
part 240 "LiftedPDENet benchmark" python3 benchmarks/bench_gpu_m2.py --out "$OUT" --cpu \
    2>&1 | tee "$OUT/m2.log" || failed+=("LiftedPDENet benchmark")
part 240 "CUDA tests" python3 -m pytest -q -p no:cacheprovider -x \
    tests/kernels/test_triton_kernel.py tests/kernels/test_cuda_operator.py \
    tests/kernels/test_triton_m2_kernel.py tests/app/test_accelerate.py tests/models/test_devices.py \
    -k "(cuda or test_triton_kernel or depend_on_the_programs) and not compile_for_hopper" \
    2>&1 | tee "$OUT/tests.txt" || failed+=("CUDA tests")
if [ -d "${EQPDENET_DATA:-/nonexistent}/mnist" ]; then
    part 90 "quick reproduction" bash -c "time python3 -m eqpdenet reproduce --quick \
        --device cuda --no-progress --out /tmp/eqpdenet-quick --cache-dir /tmp/eqpdenet-cache" \
        > "$OUT/quick.txt" 2>&1 || failed+=("quick reproduction")
    cp /tmp/eqpdenet-quick/results.jsonl "$OUT/quick_results.jsonl" 2>/dev/null
    tail -8 "$OUT/quick.txt"
fi
# 5. (never run yet) training images/s side by side on the GPU, eager mode for every model, and
#    where the lifted model's step goes (kernels by CUDA time). The device machine has no e2cnn:
#    copy the local one (pure Python, 1 MB; it needs NumPy and SciPy there) into an ignored
#    folder carried with the call and put that folder on PYTHONPATH, or the G-CNN is left out.
models="lifted-centered invariant-pde"
python3 -c "import e2cnn" 2>/dev/null && models="gcnn gcnn-centered $models"
part 120 "training throughput" python3 benchmarks/train_throughput.py $models \
    --recipe configs/benchmark-full.toml --device cuda --threads 1 --batch 64 1024 --steps 10 \
    --repeats 3 --json "$OUT/train_throughput_cuda.json" 2>&1 | tee "$OUT/train_throughput_cuda.md" \
    || failed+=("training throughput")
part 60 "profile" python3 benchmarks/profile_train_step.py lifted-centered --device cuda \
    --batch 64 1024 --rows 25 > "$OUT/profile_cuda.txt" 2>&1 || failed+=("profile")
if [ "${#failed[@]}" -gt 0 ]; then
    printf -v list '%s, ' "${failed[@]}"
    echo "FAILED: ${list%, } (the other parts done or skipped; $(( $(date +%s) - start )) s)" \
        | tee -a "$OUT/gpu.txt"
    exit 1
fi
echo "all done after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
