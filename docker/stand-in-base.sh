#!/bin/bash
# Builds a local stand-in for the `python:3.11-slim` base image from Debian's own packages, for
# machines that reach Debian's and PyPI's package servers but no container registry (the
# project's CI machines, for one). A host that can pull the real image never needs it.
# It is Debian 12 with its Python 3.11 (+ headers, venv, pip), `python` on PATH, no PEP 668
# marker, this machine's TLS trust store, and the wheels of this machine's pip find-links folders
# (PIP_FIND_LINKS, if set), so `pip install torch==2.13.0` inside a build takes a local wheel as
# it does on the machine.
#   usage: docker/stand-in-base.sh [TAG]      (default TAG: python:3.11-slim)
# Needs root, a running dockerd (Debian package docker.io), and debootstrap (installed if
# missing). Does nothing when TAG already exists.
set -euo pipefail
tag="${1:-python:3.11-slim}"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "stand-in-base: $tag already present"; exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,libpython3.11-dev,ca-certificates bookworm "$root" >/dev/null
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/wheels"
for d in ${PIP_FIND_LINKS:-}; do [ -d "$d" ] && cp "$d"/*.whl "$root/wheels/" 2>/dev/null; done; true
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin' \
    --change 'ENV PIP_FIND_LINKS=/wheels' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "stand-in-base: built $tag from Debian packages"
