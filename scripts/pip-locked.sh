#!/usr/bin/env bash
# Install from requirements/lock.txt exactly as locked: every file checked against its hash, no dependency resolution
# (the lock is the whole resolution). Used by scripts/bootstrap.sh and every image, so all install the same files.
#   pip-locked.sh PYTHON LOCK --only|--except NAME... [-- PIP_ARGS...]
#     --only NAME...    just those packages (each must be in the lock)
#     --except NAME...  everything else (names not in the lock are fine: e.g. mpi4py on a machine without Open MPI)
set -euo pipefail
if [ $# -lt 3 ] || { [ "$3" != --only ] && [ "$3" != --except ]; }; then
  echo "usage: pip-locked.sh PYTHON LOCK --only|--except NAME... [-- PIP_ARGS...]" >&2
  exit 2
fi
python=$1 lock=$2 mode=$3
shift 3
names=" "
while [ $# -gt 0 ] && [ "$1" != -- ]; do names+="$1 "; shift; done
[ "${1:-}" = -- ] && shift
filtered=$(mktemp --suffix=.txt)
trap 'rm -f "$filtered"' EXIT
# A requirement starts at column 0 ("name==version ; marker \"); its --hash and "# via" lines follow, indented.
awk -v mode="$mode" -v names="$names" '
  /^[A-Za-z0-9]/ { name = tolower($1); sub(/[=;<>!~\[].*/, "", name); hit = index(names, " " name " ") > 0
                   keep = (mode == "--only") ? hit : !hit; if (hit) found[name] = 1 }
  keep { print }
  END { if (mode == "--only") { n = split(names, want, " "); for (i = 1; i <= n; i++) if (!(want[i] in found)) {
          print "pip-locked.sh: " want[i] " is not in the lock (run make lock)" > "/dev/stderr"; exit 1 } } }
' "$lock" >"$filtered"
"$python" -m pip install --disable-pip-version-check --require-hashes --no-deps -r "$filtered" "$@"
