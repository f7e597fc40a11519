#!/usr/bin/env bash
# Create or update the kit's virtual environment. Called by `make` targets; safe to re-run.
#   VENV            where to install (default .venv)
#   PYTHON          the interpreter the venv is made from (default python3, or an existing venv's; requires-python's)
#   TORCH_SPEC      the torch pin (default torch==2.13.0; without an NVIDIA GPU its CPU build); == only
#   TORCH_INDEX_URL optional index torch alone comes from (--index-url), e.g. https://download.pytorch.org/whl/cpu
#   Everything else is installed from requirements/lock.txt, hash-checked (scripts/pip-locked.sh; `make lock` rebuilds it).
#   LABKIT_SYSTEM_TORCH=1  reuse the torch already installed in the base Python (GPU machines): venv sees system site-packages
#   LABKIT_NO_APT=1 never call apt-get (Open MPI then has to be present already for the mpi4py extra)
set -euo pipefail
VENV=${VENV:-.venv}
ASKED_PYTHON=${PYTHON:-}  # set by the user; unset: an existing venv's own Python, else python3
PYTHON=${PYTHON:-python3}
if [ -z "$ASKED_PYTHON" ] && [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; fi
ASKED_TORCH=${TORCH_SPEC:-}  # set by the user (else the default below)
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
say() { printf '[labkit setup] %s\n' "$*"; }
# The oldest Python the kit runs on: pyproject.toml's requires-python, the one place it is written.
PY_FLOOR=$(sed -n 's/^requires-python *= *">=\([0-9]*\.[0-9]*\)".*/\1/p' pyproject.toml)
py_too_old() { # MAJOR MINOR
  (( $1 < ${PY_FLOOR%.*} || ($1 == ${PY_FLOOR%.*} && $2 < ${PY_FLOOR#*.}) ))
}

# 0. Every input, checked before anything is installed: each error names the variable and the fix.
for flag in LABKIT_SYSTEM_TORCH LABKIT_NO_APT; do
  case "${!flag:-0}" in 0|1) ;; *) say "ERROR: $flag=${!flag} is neither 1 nor 0: pass $flag=1, or leave it unset"; exit 2 ;; esac
done
# A Python that does not run: its own first error line says why (bash's "No such file", pyenv's "command not found"),
# and the fix names one that runs: the version pyenv says has it (unless older than the floor, which would be refused
# next), else the first Python on PATH that meets the floor.
pyver=$("$PYTHON" -c 'import sys; print("%d %d" % sys.version_info[:2])' 2>/dev/null) || {
  said=$("$PYTHON" -c pass 2>&1 || true)
  why=$(printf '%s\n' "$said" | sed -e '/^ *$/d' -e 's/^.*: line [0-9]*: //' | head -n 1)
  has=$(printf '%s\n' "$said" | sed -n '/exists in these Python versions:/{n;s/^ *//p;q;}')
  too_old=""
  if [[ "$has" =~ ^([0-9]+)\.([0-9]+) ]] && py_too_old "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"; then
    too_old="pyenv's $has is older than $PY_FLOOR (requires-python), so "
  fi
  fix="install Python $PY_FLOOR or newer, then pass its full path: PYTHON=/path/to/python3"
  if [ -n "$has" ] && [ -z "$too_old" ]; then
    fix="pass PYTHON=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$has/bin/${PYTHON##*/}, or run \`pyenv shell $has\` first"
  else
    for name in python3.13 python3.12 python3.11 python3.10 python3; do
      found=$(command -v "$name") && pv=$("$found" -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null) &&
        ! py_too_old "${pv% *}" "${pv#* }" &&
        { fix="pass the full path of one that runs here, e.g. PYTHON=$found"; break; }
    done
  fi
  say "ERROR: PYTHON=$PYTHON does not run here (${why:-no error said}): $too_old$fix"; exit 2; }
read -r major minor <<< "$pyver"
if py_too_old "$major" "$minor"; then
  say "ERROR: PYTHON=$PYTHON is Python $major.$minor, older than $PY_FLOOR (requires-python): pass PYTHON=python$PY_FLOOR or newer"; exit 2
fi
at_least() { "$PYTHON" -c "import re, sys; v = [[int(x) for x in re.findall(r'\d+', a)[:2]] for a in sys.argv[1:]]; sys.exit(v[0] < v[1])" "$1" "$2"; }
floor=$(sed -n 's/^ *"torch>=\([0-9.]*\)".*/\1/p' pyproject.toml)
case "$TORCH_SPEC" in torch==?*) ;; *) say "ERROR: TORCH_SPEC=$TORCH_SPEC is not pinned: pass torch==VERSION"; exit 2 ;; esac
at_least "${TORCH_SPEC#torch==}" "$floor" || {
  say "ERROR: TORCH_SPEC=$TORCH_SPEC is older than torch $floor, the oldest the kit runs on: pass torch==$floor or newer"; exit 2; }
case "${TORCH_INDEX_URL:-https://}" in http://?*|https://*) ;; *)
  say "ERROR: TORCH_INDEX_URL=$TORCH_INDEX_URL is no URL: pass e.g. https://download.pytorch.org/whl/cpu"; exit 2 ;; esac
# A venv made before keeps its Python, its torch and how it was made: a changed request is said, not silently ignored.
if [ -x "$VENV/bin/python" ]; then
  made=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ -n "$ASKED_PYTHON" ] && [ "$made" != "$major.$minor" ]; then
    say "ERROR: $VENV was made with Python ${made:-that no longer runs}, not PYTHON=$PYTHON's $major.$minor: rm -rf $VENV, then run again"; exit 2
  fi
  system=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
  had=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
  if { [ "${LABKIT_SYSTEM_TORCH:-0}" = 1 ] && [ "$system" != true ]; } || { [ -n "$ASKED_TORCH" ] && [ -n "$had" ] && [ "$had" != "${ASKED_TORCH#torch==}" ]; }; then
    say "ERROR: $VENV was made with torch ${had:-none} (system site-packages: ${system:-false}), not what TORCH_SPEC/LABKIT_SYSTEM_TORCH ask: rm -rf $VENV, then run again"; exit 2
  fi
fi
# A reused torch must meet pyproject.toml's floor (an older one installs fine and then fails in accelerate and
# transformers, which need 2.6).
if [ "${LABKIT_SYSTEM_TORCH:-0}" = 1 ]; then
  have=$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null) || {
    say "ERROR: LABKIT_SYSTEM_TORCH=1 but $PYTHON cannot import torch: install torch $floor or newer there, or unset LABKIT_SYSTEM_TORCH ($TORCH_SPEC goes into $VENV)"; exit 2; }
  if ! at_least "$have" "$floor"; then
    say "ERROR: LABKIT_SYSTEM_TORCH=1 but $PYTHON has torch $have, older than $floor, the oldest the kit runs on: upgrade it, or unset LABKIT_SYSTEM_TORCH ($TORCH_SPEC goes into $VENV)"; exit 2
  fi
fi

# 1. System packages: Open MPI for DeepSpeed's real `--launcher openmpi` path, and the ssh client mpirun reaches other
#    hosts with (Debian's openmpi-bin depends on one, but an Open MPI from elsewhere, as in the GPU machine's image, may
#    come without it; the tests evaluate the images' ssh_config with `ssh -G`).
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1 || ! command -v ssh >/dev/null 2>&1; then
  if [ "${LABKIT_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Open MPI and ssh (openmpi-bin libopenmpi-dev openssh-client) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev \
      openssh-client >/dev/null
  else
    say "WARNING: mpirun/mpicc/ssh not found and apt-get not usable: the openmpi launcher path will be unavailable"
  fi
fi

# 1b. A Chromium for the browser tests (make e2e, part of make test): Playwright drives it; its own browser download
#     is never used. labkit/browser.py holds the lookup labkit.e2e uses, on the standard library alone.
have_browser() {
  "$PYTHON" -c 'import runpy; runpy.run_path("labkit/browser.py", run_name="__main__")' >/dev/null
}
if ! have_browser; then
  if [ "${LABKIT_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing chromium with apt-get (browser tests)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Ubuntu has no `chromium` deb (only a snap): say so instead of stopping the install
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
      || say "WARNING: apt-get could not install chromium: install Chromium or Google Chrome, or set LABKIT_CHROMIUM"
  else
    say "WARNING: no Chromium found and apt-get not usable: the browser tests (make e2e) cannot run until you install" \
      "Chromium or Google Chrome, or set LABKIT_CHROMIUM"
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
LOCK=requirements/lock.txt
LOCKED=(bash scripts/pip-locked.sh "$VENV/bin/python" "$LOCK")
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# 3. Every package but torch from the lock (make lock), each file checked against its hash: first the build tools,
#    then the rest (source packages built against those tools, not in an isolated build environment fetched
#    unchecked). mpi4py only where Open MPI's compiler wrapper exists. DeepSpeed comes after torch (step 5).
NO_MPI=mpi4py
EXTRAS=dev
if command -v mpicc >/dev/null 2>&1; then NO_MPI="" EXTRAS="dev,mpi"; fi
say "installing the locked packages ($LOCK)"
"${LOCKED[@]}" --only pip setuptools wheel build -- -q
"${LOCKED[@]}" --except deepspeed $NO_MPI -- -q --no-build-isolation

# 4. torch, pinned by version, from its own index (--index-url: no other index can answer for it). Its CUDA
#    libraries (GPU builds) come with it from that index; its other dependencies are already locked above. Without
#    an NVIDIA GPU, the CPU build (scripts/torch-index.sh); if PyTorch's CPU index cannot be reached, PyPI's build.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  index=$(bash scripts/torch-index.sh "$TORCH_SPEC" "${PIP[@]}")
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    say "installing $TORCH_SPEC${index:+ from $index}"
    if [ -z "$index" ]; then
      "${PIP[@]}" "$TORCH_SPEC"
    elif ! "${PIP[@]}" "$TORCH_SPEC" --index-url "$index" --retries 1; then
      [ -z "${TORCH_INDEX_URL:-}" ] || { say "ERROR: TORCH_INDEX_URL=$TORCH_INDEX_URL has no $TORCH_SPEC for this machine (above): fix it, or unset it"; exit 2; }
      say "WARNING: $index cannot be reached: PyPI's $TORCH_SPEC instead (on Linux its CUDA build, several GB); pass TORCH_INDEX_URL=... for another"
      "${PIP[@]}" "$TORCH_SPEC"
    fi
  fi
fi
TORCH_VERSION=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")

# 5. DeepSpeed ships only an sdist whose setup imports torch: built against the torch just installed, from the
#    locked, hash-checked sdist.
if ! "$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
  say "building the locked DeepSpeed against torch $TORCH_VERSION (about a minute)"
fi
DS_BUILD_OPS=0 "${LOCKED[@]}" --only deepspeed -- -q --no-build-isolation

# 6. The kit itself (its dependencies are all installed above), then pip's own check that nothing is missing.
say "installing labkit[$EXTRAS]"
# setuptools' editable build prints an "Editable installation" notice (a UserWarning) that asks nothing of the user;
# only that one is silenced: any other warning of the build still shows.
PYTHONWARNINGS="ignore:Editable installation:UserWarning" "${PIP[@]}" --no-deps --no-build-isolation -e ".[$EXTRAS]"
if [ "${LABKIT_SYSTEM_TORCH:-0}" != 1 ]; then "$VENV/bin/python" -m pip check; fi

# 7. A Jupyter kernel that runs this environment, for `make lab` and papermill; JupyterLab's workshop settings (no
#    news or update pop-ups) as this environment's defaults.
#    ipykernel stages the spec in a temp folder it never removes (ipykernel/kernelspec.py, write_kernel_spec): give it one
#    of ours.
staging=$(mktemp -d)
TMPDIR=$staging "$VENV/bin/python" -m ipykernel install --prefix "$VENV" --name labkit --display-name "Python (labkit)" >/dev/null
rm -rf "$staging"
mkdir -p "$VENV/share/jupyter/lab/settings"
cp scripts/jupyterlab-overrides.json "$VENV/share/jupyter/lab/settings/overrides.json"
say "ready: $("$VENV/bin/python" -c 'import torch, deepspeed; print("torch", torch.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null | tail -n 1)"
