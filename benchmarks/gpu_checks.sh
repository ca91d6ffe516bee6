#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one prepared script for the device machine (one H200;
# see the device tool's README): issue 15 (exact near-duplicate search, 4M x 512 at report 0.5,
# goal <= 20 s, recall 1.0, bf16 scores = the fp32 search) and issue 13 (the three walkthrough
# models in one pass, GPU JPEG decoding), plus the CUDA-only test. Logs go to $OUT (or /tmp/vdc_gpu_checks).
#
# That machine has torch, torchvision, numpy, scipy, pyarrow, pillow, click and pytest, but no
# duckdb, usearch, birder or polars: carry them as wheels for its Python 3.12, in two calls on
# the warm machine (64 MiB travel per call; polars alone is ~55 MB). Here, once:
#
#   echo /.whl/ >> .git/info/exclude
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
#   python3 -m pip download $P -d .whl/a duckdb==2.0.1 usearch==2.26.6 numkong==7.8.6 birder==0.8.4 \
#       torchinfo==1.8.0 webdataset==1.0.2 braceexpand==0.1.7                       # 38 MB
#   python3 -m pip download $P -d .whl/b polars==2.1.0 polars-runtime-32==2.1.0     # 53 MB
# (the versions of this project's venv; birder's other needs are there already, or unused here)
#
# then, with the device tool's `run` (carry names the folder):
#   1. carry [".whl/a"]:  bash benchmarks/gpu_checks.sh install .whl/a
#   2. carry [".whl/b"]:  bash benchmarks/gpu_checks.sh install .whl/b && bash benchmarks/gpu_checks.sh run
#      (timeout_s ~ 540: the steps below are each capped so that one stuck step cannot take the rest)
#
# Here, on the CPU, `bash benchmarks/gpu_checks.sh run --small` runs the same steps at toy sizes
# (a smoke test of this script, not a figure).
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/site
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-${TMPDIR:-/tmp}/vdc_gpu_checks}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}

case "${1:-}" in
install)
    shift
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$1"/*.whl
    exit $?
    ;;
run) shift ;;
*) echo "usage: $0 install WHEEL_DIR | run [--small]" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--small" ]; then
    DEVICE=cpu; N_DEDUP=(20000 40000); N_IMAGES=32; WORKERS=2; CAP=300; REAL_SIZE=""
else
    DEVICE=cuda; N_DEDUP=(1000000 4000000); N_IMAGES=4000; WORKERS=12; CAP=240; REAL_SIZE=--real-size
fi

step() {  # step NAME SECONDS COMMAND...: run one check, log it, never stop the others
    local name=$1 seconds=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: rc $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/machine.txt"

# Issue 13: the CUDA-only test (GPU JPEG decode against the CPU decode).
step cuda_test "$CAP" $PY -m pytest -q -x tests/test_multi_predict.py tests/test_models.py -k "gpu or cuda"
# Issue 15, item 3: exact range search, default precision (bf16 on CUDA, fp32 re-check near the
# threshold), first at 1M (also warms the kernels), then the goal's 4M.
for n in "${N_DEDUP[@]}"; do
    step "dedup_$n" "$CAP" $PY benchmarks/bench_dedup.py --n "$n" --device "$DEVICE" --no-ann
done
# The same 1M search with fp32 scores: the pairs must be the same as bf16's (printed recall and count).
step "dedup_${N_DEDUP[0]}_fp32" "$CAP" $PY benchmarks/bench_dedup.py --n "${N_DEDUP[0]}" --device "$DEVICE" \
    --no-ann --precision fp32
# Issue 13: the three walkthrough models in one pass vs separate passes vs birder's script.
step predict_multi "$CAP" $PY benchmarks/bench_predict.py --multi $REAL_SIZE --n "$N_IMAGES" --megapixels 0.25 \
    --device "$DEVICE" --amp --workers "$WORKERS" --compare-birder --repeat 1
cat "$OUT/summary.txt"
