#!/usr/bin/env bash
# Create or update the kit's virtual environment. Called by `make` targets; safe to re-run.
#   VENV            where to install (default .venv)
#   TORCH_SPEC      the torch requirement to install first (default torch==2.13.0, a CPU build on CPU-only machines)
#   TORCH_INDEX_URL optional extra index for torch (e.g. the PyTorch CPU wheel index on a machine without a local wheel)
#   LABKIT_SYSTEM_TORCH=1  reuse the torch already installed in the base Python (GPU machines): venv sees system site-packages
#   LABKIT_NO_APT=1 never call apt-get (Open MPI then has to be present already for the mpi4py extra)
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
DEEPSPEED_SPEC=${DEEPSPEED_SPEC:-deepspeed==0.19.8}
say() { printf '[labkit setup] %s\n' "$*"; }

# 1. System packages: Open MPI for DeepSpeed's real `--launcher openmpi` path.
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1; then
  if [ "${LABKIT_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Open MPI (openmpi-bin libopenmpi-dev) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
  else
    say "WARNING: mpirun/mpicc not found and apt-get not usable: the openmpi launcher path will be unavailable"
  fi
fi

# 1b. Debian's Chromium for the browser tests (make e2e, part of make test): Playwright drives it; its own browser
#     download is never used.
if [ ! -x /usr/bin/chromium ]; then
  if [ "${LABKIT_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing chromium with apt-get (browser tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    say "WARNING: /usr/bin/chromium not found and apt-get not usable: the browser tests (make e2e) cannot run"
  fi
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  if [ "${LABKIT_SYSTEM_TORCH:-0}" = 1 ]; then
    say "creating $VENV (with system site-packages, reusing the installed torch)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade "pip>=24" setuptools wheel

# 3. torch first, so nothing later pulls a multi-GB CUDA build on a CPU-only machine.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  say "installing $TORCH_SPEC"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then "${PIP[@]}" "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"; else "${PIP[@]}" "$TORCH_SPEC"; fi
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
# Pin the installed torch for every later step so no resolver replaces it.
CONSTRAINTS="$VENV/labkit-constraints.txt"
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
export PIP_CONSTRAINT="$CONSTRAINTS"

# 4. DeepSpeed ships only an sdist whose setup imports torch: build it against the torch just installed.
if ! "$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
  say "building $DEEPSPEED_SPEC against torch $TORCH_VERSION (about a minute)"
  "${PIP[@]}" ninja packaging py-cpuinfo hjson psutil pydantic msgpack
  DS_BUILD_OPS=0 "${PIP[@]}" --no-build-isolation "$DEEPSPEED_SPEC"
fi

# 5. The kit itself with its extras (mpi4py only where Open MPI's compiler wrapper exists).
EXTRAS=dev
if command -v mpicc >/dev/null 2>&1; then EXTRAS="dev,mpi"; fi
say "installing labkit[$EXTRAS]"
"${PIP[@]}" -e ".[$EXTRAS]"

# 6. A Jupyter kernel that runs this environment, for `make lab` and papermill; JupyterLab's workshop settings (no
#    news or update pop-ups) as this environment's defaults.
"$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name labkit --display-name "Python (labkit)" >/dev/null
mkdir -p "$VENV/share/jupyter/lab/settings"
cp scripts/jupyterlab-overrides.json "$VENV/share/jupyter/lab/settings/overrides.json"
say "ready: $("$VENV/bin/python" -c 'import torch, deepspeed; print("torch", torch.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null | tail -n 1)"
