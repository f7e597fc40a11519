#!/usr/bin/env bash
# Which releases of one dependency the kit works with: the given tests with each release put ahead of .venv's own on
# PYTHONPATH (ranks, kernels and exec'd commands inherit it), a table last. pyproject.toml's floors are the oldest
# releases that pass here. Needs `make install` first and a package index (pip download).
#   bash bench/package_versions.sh PACKAGE "VERSION..." TESTS...
#   EXTRA="name ..." adds wheels an old release needs that .venv lacks (kubernetes <= 36 imports google-auth).
# e.g. bash bench/package_versions.sh accelerate "1.6.0 1.7.0 1.15.0" tests/test_accelerate_route.py
#      EXTRA="google-auth cachetools pyasn1-modules rsa pyasn1" bash bench/package_versions.sh kubernetes "30.1.0" \
#        tests/test_jobs_kubernetes.py tests/test_k8s_fidelity.py
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then sed -n 5,9p "$0" >&2; exit 2; fi
package=$1; read -ra versions <<< "$2"; shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${EXTRA:-}" ]; then
  # shellcheck disable=SC2086  # EXTRA is a list of names
  .venv/bin/pip download -q --only-binary=:all: -d "$work/extra" $EXTRA >/dev/null 2>&1 || { echo "cannot download $EXTRA" >&2; exit 1; }
fi
declare -A result
for v in "${versions[@]}"; do
  dir="$work/$v"; mkdir -p "$dir"
  if ! .venv/bin/pip download -q --no-deps --only-binary=:all: "$package==$v" -d "$work/dl-$v" >/dev/null 2>&1; then
    result[$v]="no wheel"; continue
  fi
  for wheel in "$work/dl-$v"/*.whl "$work"/extra/*.whl; do
    [ -f "$wheel" ] && .venv/bin/python -m zipfile -e "$wheel" "$dir"
  done
  got=$(PYTHONPATH="$dir" .venv/bin/python -c "from importlib.metadata import version; print(version('$package'))")
  if [ "$got" != "$v" ]; then result[$v]="imports $package $got, not $v"; continue; fi
  start=$(date +%s)
  PATH="$PWD/.venv/bin:$PATH" PYTHONPATH="$dir" .venv/bin/python -m pytest -q -p no:cacheprovider "$@" > "$work/$v.log" 2>&1
  result[$v]="$(tail -n 1 "$work/$v.log" | tr -d '=') ($(( $(date +%s) - start )) s)"
  grep -E '^FAILED' "$work/$v.log" | head -5
done
printf '%-12s %s\n' "$package" "$*"
for v in "${versions[@]}"; do printf '%-12s %s\n' "$v" "${result[$v]}"; done
