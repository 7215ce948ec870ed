#!/bin/sh
# The install steps of both images, also run by docker/smoke.sh in a fresh virtual environment,
# so what the images install is what the smoke test checks.
#   $1          extra: "cpu" (faiss-cpu) or "gpu" (faiss-gpu-cu12 + triton)
#   TORCH_SPEC  torch requirement (default torch==2.13.0; PyPI's Linux wheel is a CUDA build; for
#               a small CPU image point PIP_EXTRA_INDEX_URL at a CPU wheel index)
#   APP_DIR     the project checkout (default: the current directory)
set -eu
extra="${1:?usage: install.sh cpu|gpu}"
app="${APP_DIR:-.}"
case "$extra" in
    cpu | gpu) ;;
    *) echo "install.sh: the extra must be cpu or gpu, got '$extra'" >&2; exit 2 ;;
esac
if [ "$extra" = gpu ]; then
    # A local CPU build in pip's find-links (2.13.0+cpu) would sort above the index's CUDA
    # build of the same version and win: the GPU install takes torch from the index only.
    unset PIP_FIND_LINKS
fi
python -m pip install --no-cache-dir --upgrade pip
python -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install --no-cache-dir "${app}[${extra}]"
if [ "$extra" = gpu ]; then
    python -c "import sys, torch; sys.exit(torch.version.cuda is None and 'install.sh gpu: torch ' + torch.__version__ + ' is not a CUDA build')"
fi
