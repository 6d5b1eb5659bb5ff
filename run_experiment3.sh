#!/usr/bin/env bash
# Crash-safe overnight wrapper: re-invokes the flow until every session is DONE or FAILED
# (at most EXP3_MAX_ATTEMPTS times), logs each attempt, then rebuilds the report.
#
#   ./run_experiment3.sh --config configs/exp3.yaml      # any flows/exp3.py options
#   EXP3_MAX_ATTEMPTS=5 ./run_experiment3.sh --smoke
set -uo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"
MAX_ATTEMPTS="${EXP3_MAX_ATTEMPTS:-3}"
# the flow's own start: its config (--smoke, --sanity, --pilot, --set ...) and output_root checked, refused in one
# line (exit 2), and the root made exp3's before logs/ goes there (a folder holding only logs/ is not exp3's)
ROOT="$("$PYTHON" - "$@" <<'PY'
import sys
from exp3.grid.cli import start
print(start(sys.argv[1:])[0].output_root.absolute())
PY
)" || exit 2
mkdir -p "$ROOT/logs"
status=1
for attempt in $(seq 1 "$MAX_ATTEMPTS"); do
  log="$ROOT/logs/flow-attempt-$(date +%Y%m%d-%H%M%S)-$attempt.log"
  echo "run_experiment3: attempt $attempt/$MAX_ATTEMPTS -> $log"
  "$PYTHON" flows/exp3.py "$@" >"$log" 2>&1
  status=$?
  echo "run_experiment3: attempt $attempt exited $status"
  [ "$status" -eq 0 ] && break
  [ "$status" -eq 2 ] && { tail -n 1 "$log" >&2; exit 2; }          # bad input: retrying cannot help
  # done only when the status's counts are all done or failed: a pending, partial, running or stale session (made
  # under other inputs: it trains again), or no count at all (a crash before any session), is work left
  counts="$("$PYTHON" -m exp3.status --root "$ROOT" | tail -n 1)"
  if echo "$counts" | grep -qE '^(done|failed)=[0-9]+( (done|failed)=[0-9]+)*$'; then
    echo "run_experiment3: every session is DONE or FAILED; not retrying"
    break
  fi
done
"$PYTHON" -m exp3.report --root "$ROOT" || echo "run_experiment3: report failed (see above)" >&2
"$PYTHON" -m exp3.status --root "$ROOT"
exit "$status"
