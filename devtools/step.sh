#!/usr/bin/env bash
# Usage: devtools/step.sh NAME COMMAND [ARGS...]
# Runs one install step of `make demo` / `make test` and says so: "[install] NAME …" before,
# "[install] NAME … still running, N s" every HEARTBEAT seconds (default 20) while the command is
# silent or not, and "[install] NAME … N s" (or "FAILED after N s") at the end. Exit status is
# the command's.
set -u
name=$1
shift
heartbeat=${KLAG_STEP_HEARTBEAT:-20}
started=$(date +%s)
echo "[install] ${name} …"
(
  while sleep "${heartbeat}"; do
    echo "[install] ${name} … still running, $(($(date +%s) - started)) s"
  done
) &
beat=$!
trap 'kill "${beat}" 2>/dev/null' EXIT
"$@"
status=$?
kill "${beat}" 2>/dev/null
wait "${beat}" 2>/dev/null
elapsed=$(($(date +%s) - started))
if [ "${status}" -eq 0 ]; then
  echo "[install] ${name} … ${elapsed} s"
else
  echo "[install] ${name} … FAILED after ${elapsed} s (exit ${status})" >&2
fi
exit "${status}"
