#!/usr/bin/env bash
# Run the images' install and start steps in a fresh virtual environment on CPU and probe
# /readyz: what `docker build` + `docker run` would do, on a machine without a Docker engine.
#   usage: docker/smoke.sh [timeout-seconds]      (exit 0 when /readyz answered 200)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
timeout="${1:-600}"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; wait "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
cd "$work"
APP_DIR="$repo" sh "$repo/docker/install.sh" cpu >"$work/install.log" 2>&1 \
    || { tail -20 "$work/install.log"; exit 1; }
# As in the images: the install built the CPU search kernel.
python -c "from solver.cells import _simd" || { echo "CPU search kernel not built"; exit 1; }

port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export AEOT_HOST=127.0.0.1 AEOT_PORT="$port" AEOT_STORE="$work/store" AEOT_DEVICE=cpu \
       AEOT_LOG_FORMAT=json AEOT_API_KEY=smoke-test-key
sh "$repo/docker/entrypoint.sh" >"$work/serve.log" 2>&1 &
pid=$!
start=$(date +%s)
until python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=2)" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "server exited"; tail -30 "$work/serve.log"; exit 1; fi
    if (( $(date +%s) - start > timeout )); then echo "not ready after ${timeout}s"; tail -30 "$work/serve.log"; exit 1; fi
    sleep 2
done
echo "{\"smoke\": \"ready\", \"seconds_to_ready\": $(( $(date +%s) - start ))}"
kill -TERM "$pid"
wait "$pid" || true
echo '{"smoke": "stopped"}'
