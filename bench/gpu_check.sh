#!/usr/bin/env bash
# The GPU checks in one call, within 8 minutes, on a CUDA machine that may have no package index:
# the GPU tests, then bench/gpu.py's cell queries and fit. Each step runs under its own time
# limit (their sum is 440 s), so the call ends in time whatever a step does; what a step printed
# before its limit is kept.
#
#   OUT=DIR bash bench/gpu_check.sh          run from the checkout (OUT defaults to bench/out/gpu)
#   bash bench/gpu_check.sh --wheels DIR     beforehand, where an index answers: the pure-Python
#                                            wheels the checks import (pytest, lazy_loader,
#                                            threadpoolctl), for a machine that lacks them
#
# Optional, in .gpu/ beside this checkout's sources: setup.sh (sourced first: it may provide
# FAISS, e.g. a faiss-gpu build for a machine without one) and wheels/ (installed from with
# --no-index when a module is missing). Writes to OUT:
#   steps.jsonl          one line per step: {"step", "rc", "seconds", "limit"}; rc 124 = timed out
#   setup.txt            the install's output
#   env.json             python, torch, CUDA, GPU, FAISS (GPUs it sees), triton, cell index backends
#   pytest.txt           tests/test_fused.py, test_device_stats.py, test_index.py (GPU tests included)
#   bench-queries.jsonl  bench/gpu.py cell queries, the GPU backends side by side, N 10,000 and 60,000
#   bench-fit.jsonl      bench/gpu.py fit: the default method and the Adam baseline, 30 s each
#   stderr.txt           the benchmarks' standard error
set -uo pipefail
cd "$(dirname "$0")/.."
PURE_WHEELS=(pytest pluggy iniconfig packaging lazy_loader threadpoolctl)

usage="usage: OUT=DIR bash bench/gpu_check.sh | bash bench/gpu_check.sh --wheels DIR"
case "${1:-}" in
    -h | --help)
        echo "$usage"
        sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "" | --wheels) ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
if [ "${1:-}" = --wheels ]; then
    exec python3 -m pip download -q --only-binary :all: --no-deps -d "${2:?usage: --wheels DIR}" \
        "${PURE_WHEELS[@]}"
fi

out="${OUT:-bench/out/gpu}"
mkdir -p "$out"
: >"$out/steps.jsonl"

# step NAME LIMIT COMMAND...: run COMMAND under `timeout LIMIT`, log its exit code and seconds.
step() {
    local name=$1 limit=$2 started=$SECONDS rc
    shift 2
    timeout "$limit" "$@"
    rc=$?
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' \
        "$name" "$rc" $((SECONDS - started)) "$limit" >>"$out/steps.jsonl"
    return "$rc"
}

setup() {
    local missing
    missing=$(python3 - <<'EOF'
import importlib.util
names = {"pytest": "pytest", "lazy_loader": "lazy_loader", "threadpoolctl": "threadpoolctl"}
print(" ".join(wheel for wheel, module in names.items() if importlib.util.find_spec(module) is None))
EOF
)
    if [ -n "$missing" ] && [ -d .gpu/wheels ]; then
        python3 -m pip install -q --no-index --find-links .gpu/wheels $missing
    fi
    # The checkout, with its C search kernel (no index: the machine's own setuptools builds it).
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
        || echo "gpu_check: the editable install failed; the checks import the checkout" >&2
}

environment() {
    python3 - >"$out/env.json" <<'EOF'
import json, platform, sys
import torch
found = {"python": sys.version.split()[0], "platform": platform.platform(),
         "torch": torch.__version__, "cuda": torch.version.cuda,
         "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
try:
    import faiss
    found.update(faiss=faiss.__version__, faiss_gpus=faiss.get_num_gpus())
except ImportError as exc:
    found["faiss"] = f"missing: {exc}"
try:
    import triton
    found["triton"] = triton.__version__
except ImportError as exc:
    found["triton"] = f"missing: {exc}"
from solver import available_backends
found["backends"] = available_backends()
print(json.dumps(found))
EOF
}

if [ -f .gpu/setup.sh ]; then
    # shellcheck disable=SC1091  # optional, brought along with the checkout
    source .gpu/setup.sh || echo "gpu_check: .gpu/setup.sh failed" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export out
export -f setup environment
step setup 60 bash -c setup >"$out/setup.txt" 2>&1
step environment 30 bash -c environment
# The suite's addopts load pytest-xdist, which such a machine may lack: one process instead.
step tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts=-ra \
    tests/test_fused.py tests/test_device_stats.py tests/test_index.py >"$out/pytest.txt" 2>&1
# The GPU backends only: FAISS and torch on the host cores would take most of the limit.
step queries 120 python3 bench/gpu.py --skip model fit --n 10000 60000 --d 16 64 \
    --queries 262144 --no-cpu-backends >"$out/bench-queries.jsonl" 2>>"$out/stderr.txt"
step fit 80 python3 bench/gpu.py --skip queries model --fit-budget 30 \
    >"$out/bench-fit.jsonl" 2>>"$out/stderr.txt"
cat "$out/steps.jsonl"
