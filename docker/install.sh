#!/bin/sh
# The install steps of both images, also run by docker/smoke.sh in a fresh virtual environment,
# so what the images install is what the smoke test checks.
#   $1          extra: "cpu" (faiss-cpu) or "gpu" (faiss-gpu-cu12 + triton)
#   TORCH_SPEC  torch requirement (default torch==2.13.0; on GPU hosts PyPI's Linux wheel is a
#               CUDA 12 build; for a small CPU image point PIP_EXTRA_INDEX_URL at a CPU wheel index)
#   APP_DIR     the project checkout (default: the current directory)
set -eu
extra="${1:?usage: install.sh cpu|gpu}"
app="${APP_DIR:-.}"
python -m pip install --no-cache-dir --upgrade pip
python -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install --no-cache-dir "${app}[${extra}]"
