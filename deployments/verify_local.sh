#!/usr/bin/env bash
# End-to-end check of the deployments against a local `prefect server start` (CPU is fine):
# deploy all of prefect.yaml, start workers, run the smoke deployment (1 model x 1 session) and
# the fan-out smoke deployment (2 sessions as separate exp3-session flow runs), check both
# completed and left DONE markers. Everything lives in a temp dir and is stopped at the end.
#   bash deployments/verify_local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="$(mktemp -d /tmp/exp3-deploy-check.XXXXXX)"
PORT="${EXP3_CHECK_PORT:-4299}"
export PREFECT_HOME="$WORK/prefect-home" PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
export EXP3_REPO="$PWD"
pids=()
cleanup() {  # SIGTERM the server and workers, give them 30 s, then SIGKILL what is left (never hang here)
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    left=(); for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 1
  done
  echo "still running 30 s after SIGTERM, killed: $(ps -o pid=,args= -p "$(IFS=,; echo "${left[*]}")" | cut -c1-100)"
  kill -9 "${left[@]}" 2>/dev/null || true
}
trap cleanup EXIT

prefect server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 & pids+=($!)
for _ in $(seq 1 180); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start"; tail "$WORK/server.log"; exit 1; }
echo "== server up at $PREFECT_API_URL (home $PREFECT_HOME)"

bash deployments/create_pools.sh
prefect --no-prompt deploy --all
prefect deployment ls

mkdir -p "$WORK/logs"
CUDA_VISIBLE_DEVICES= prefect worker start --pool exp3-gpu --limit 1 --name gpu-a >"$WORK/logs/gpu-a.log" 2>&1 & pids+=($!)
CUDA_VISIBLE_DEVICES= prefect worker start --pool exp3-gpu --limit 1 --name gpu-b >"$WORK/logs/gpu-b.log" 2>&1 & pids+=($!)
prefect worker start --pool exp3-control --limit 2 --name control >"$WORK/logs/control.log" 2>&1 & pids+=($!)

ROOT="$WORK/out"
tiny='"models.yolov8m.architecture=yolov8n.yaml"'
echo "== smoke deployment through a worker"
prefect deployment run exp3/exp3-smoke --watch --watch-timeout 900 \
  -p "overrides=[\"output_root=$ROOT/smoke\", $tiny]" -p 'models=["yolov8m"]' -p 'sessions=["S1_clean_train"]'
test -f "$ROOT/smoke/yolov8m/yolov8m__S1_clean_train/DONE"
echo "== fan-out: 2 sessions as exp3-session flow runs on the exp3-gpu workers"
prefect deployment run exp3/exp3-smoke-fanout --watch --watch-timeout 900 \
  -p "overrides=[\"output_root=$ROOT/fanout\", $tiny]" -p 'models=["yolov8m"]' \
  -p 'sessions=["S1_clean_train", "S3_mask_backbone_early"]'
test -f "$ROOT/fanout/yolov8m/yolov8m__S1_clean_train/DONE"
test -f "$ROOT/fanout/yolov8m/yolov8m__S3_mask_backbone_early/DONE"
prefect flow-run ls --limit 10
echo "== worker logs (who ran what)"
grep -h "Completed submission\|Submitting flow run\|finished" "$WORK"/logs/*.log | tail -n 12 || true
echo "verify_local: PASS ($WORK)"
