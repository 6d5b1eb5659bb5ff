#!/usr/bin/env bash
# The GPU pilot on a lent machine that has torch but no registry (figures: BENCHMARKS.md, "GPU pilot").
#
#   python benchmarks/gpu_wheels.py                      # here: .whl1/ .whl2/ .whl3/, one transfer each
#   bash benchmarks/gpu_pilot.sh install .whl1           # there, one call per folder (carry it), while the
#   bash benchmarks/gpu_pilot.sh install .whl2           #   machine stays warm: installs go to /tmp/site
#   bash benchmarks/gpu_pilot.sh flow .whl3 [flow args]  # the last folder, then `flows/exp3.py --pilot`
#
# `flow` stops the flow before the call's limit (EXP3_GPU_BUDGET_S, default 540 s) and is safe to repeat:
# finished sessions are cached, stopped ones resume from their last epoch. It copies report.md,
# summary_metrics.csv and a light tarball (no weights, images or predictions) to $OUT.
set -uo pipefail
action=${1:?install or flow}; wheels=${2:?a wheel folder}; shift 2
root=${EXP3_GPU_ROOT:-/tmp/exp3-pilot-gpu}
budget=${EXP3_GPU_BUDGET_S:-540}
out=${OUT:-/tmp/exp3-gpu-out}
mkdir -p "$out" /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$wheels"/*.whl || exit 1
[ "$action" = install ] && exit 0
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
timeout -k 15 "$budget" python3 flows/exp3.py --pilot --set "output_root=$root" "$@" >"$out/flow.log" 2>&1
echo "flow rc $? after $(( $(date +%s) - start )) s"
grep -E "DONE |FAILED |already done|positive control" "$out/flow.log" | cut -c1-240
for name in report.md summary_metrics.csv; do [ -f "$root/$name" ] && cp "$root/$name" "$out/"; done
tar czf "$out/pilot-gpu-light.tgz" --exclude='*.pt' --exclude='*.npz' --exclude='predictions_*' --exclude='*.jpg' \
  --exclude='*.png' --exclude='data' --exclude='suites' --exclude='.prefect' --exclude='.ultralytics' \
  -C "$(dirname "$root")" "$(basename "$root")"
