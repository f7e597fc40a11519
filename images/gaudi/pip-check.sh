#!/usr/bin/env bash
# `pip check` for the Gaudi image. The HabanaAI DeepSpeed fork is installed --no-deps in place of upstream DeepSpeed
# and calls itself e.g. 0.16.1+hpu.synapse.v1.22.0, while labkit (installed --no-deps) keeps pyproject.toml's upstream
# pin, so pip check always reports that one line: it is expected and let through (and shown). Any other line fails
# the build, as a plain pip check would.
#   pip-check.sh PIP...        runs `PIP... check`, e.g. pip-check.sh python3 -m pip
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: pip-check.sh PIP... (e.g. python3 -m pip)" >&2
  exit 2
fi
# pip writes one line per conflict to stdout (warnings go to stderr, left as they are)
report=$("$@" check)
status=$?
[ "$status" -eq 0 ] && { printf '%s\n' "$report"; exit 0; }
# A source build of the fork carries a local version label (+hpu.synapse.v<release>; older branches +<git hash>),
# which no upstream release from PyPI has: an upstream deepspeed of the wrong version is not this line.
expected='^labkit [^ ]+ has requirement deepspeed==[^ ,]+, but you have deepspeed [^ +]+\+[^ ]+\.$'
others=$(printf '%s\n' "$report" | grep -Ev "$expected")
if [ -z "$others" ] && printf '%s\n' "$report" | grep -Eq "$expected"; then
  printf 'pip check: expected, the HabanaAI fork replaces upstream deepspeed: %s\n' "$report"
  exit 0
fi
printf '%s\n' "$report" >&2
printf 'pip check found conflicts besides the expected labkit/deepspeed line:\n%s\n' "$others" >&2
exit "$status"
