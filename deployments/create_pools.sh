#!/usr/bin/env bash
# Create the two process work pools exp3 uses (idempotent), and the automation that marks a flow run Crashed when
# its heartbeats stop (a worker's machine lost: else the fan-out parent waits on that run forever).
#   exp3-gpu      session runs; one worker per GPU, each with concurrency 1
#   exp3-control  fan-out parents that only wait on session flow runs
set -euo pipefail
for pool in exp3-gpu exp3-control; do
  prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
done
python "$(dirname "$0")/crash_lost_runs.py"
prefect work-pool ls
