#!/usr/bin/env bash
# Which accelerate releases the kit's accelerate route works with: tests/test_accelerate_route.py (config loading,
# real `accelerate launch` on CPU ranks, the MPIJob command in a local job and on the fake API server, notebook 06)
# with each release put ahead of .venv's own on PYTHONPATH, a table last. pyproject.toml's floor is the oldest that
# passes here. Needs `make install` first and a package index (pip download).
#   bash bench/accelerate_versions.sh [VERSION...]      (default: 1.6.0 1.7.0 1.15.0)
set -uo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.6.0 1.7.0 1.15.0)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A result
for v in "${versions[@]}"; do
  if ! .venv/bin/pip download -q --no-deps "accelerate==$v" -d "$work/dl" >/dev/null 2>&1; then
    result[$v]="no wheel"; continue
  fi
  mkdir -p "$work/$v" && .venv/bin/python -m zipfile -e "$work/dl/accelerate-$v-py3-none-any.whl" "$work/$v"
  got=$(PYTHONPATH="$work/$v" .venv/bin/python -c "import accelerate; print(accelerate.__version__)")
  if [ "$got" != "$v" ]; then result[$v]="imports accelerate $got, not $v"; continue; fi
  start=$(date +%s)
  PATH="$PWD/.venv/bin:$PATH" PYTHONPATH="$work/$v" .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_accelerate_route.py > "$work/$v.log" 2>&1
  result[$v]="$(tail -n 1 "$work/$v.log" | tr -d '=') ($(( $(date +%s) - start )) s)"
  grep -E '^FAILED' "$work/$v.log" | head -5
done
printf '%-12s %s\n' accelerate "tests/test_accelerate_route.py"
for v in "${versions[@]}"; do printf '%-12s %s\n' "$v" "${result[$v]}"; done
