#!/usr/bin/env bash
# Rebuild requirements/lock.txt (`make lock`): every package the kit installs, pinned and hashed, resolved from
# pyproject.toml's dependencies with the dev and mpi extras, plus the build tools, for Python 3.10 and later on any
# platform (markers pick per interpreter: the Gaudi image has 3.10, CI and the lab image 3.11, the CUDA image 3.12).
# torch is resolved at TORCH_VERSION, so its own dependencies are locked, but torch and its CUDA libraries are left
# out: torch comes from its own index (CPU or CUDA build) by version, installed by scripts/bootstrap.sh and the images.
#   UV         the uv to run (default: the one in .venv, from the dev extra)
#   LOCK       output (default requirements/lock.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
LOCK=${LOCK:-requirements/lock.txt}
TORCH_VERSION=2.13.0
BUILD_TOOLS="pip setuptools wheel build"
if ! [ -x "$UV" ]; then echo "lock.sh: no uv at $UV: pass UV=/path/to/uv (pip install uv), or make install first" >&2; exit 2; fi
compile() {
  # --index-url: PyPI only (uv reads no pip.conf), so the hashes are PyPI's.
  printf '%s\n' "torch==$TORCH_VERSION" $BUILD_TOOLS | "$UV" pip compile pyproject.toml - --extra dev --extra mpi \
    --universal --python-version 3.10 --generate-hashes --index-url https://pypi.org/simple \
    --custom-compile-command "make lock" --quiet "$@"
}
draft=$(mktemp)
trap 'rm -f "$draft"' EXIT
compile -o "$draft" --no-emit-package torch
# torch's CUDA runtime (nvidia-* but nvidia-ml-py, cuda-*, triton) belongs to the torch build, not the lock.
mapfile -t cuda < <(grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$draft" | tr -d '=' | grep -vx nvidia-ml-py | sort -u)
args=(--no-emit-package torch)
for name in "${cuda[@]}"; do args+=(--no-emit-package "$name"); done
compile -o "$LOCK" "${args[@]}"
echo "wrote $LOCK: $(grep -cE '^[a-z0-9]' "$LOCK") pins; left to torch's own index: torch ${cuda[*]}"
