#!/usr/bin/env bash
# The index `make install` takes torch from, printed ("" = pip's own: PyPI, or pip's find-links).
#   torch-index.sh SPEC PIP...   e.g. torch-index.sh torch==2.13.0 .venv/bin/python -m pip install -q
# PyPI's Linux torch is the CUDA build (GBs of CUDA libraries a CPU machine cannot use, and a "CUDA build but no usable
# GPU" warning in labkit check). On Linux without an NVIDIA GPU the CPU build is taken from PyTorch's CPU index,
# unless a wheel pip finds without any index (its find-links) already has the pin: then that one is installed here.
# TORCH_INDEX_URL, when set, always wins.
set -uo pipefail
CPU_INDEX=https://download.pytorch.org/whl/cpu
spec=$1; shift
if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; exit 0; fi
if [ "$(uname -s)" != Linux ] || command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then echo; exit 0; fi
if "$@" --no-index "$spec" >/dev/null 2>&1; then echo; exit 0; fi  # installed from a local wheel: nothing to fetch
echo "$CPU_INDEX"
