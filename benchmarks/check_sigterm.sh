#!/bin/bash
# SIGTERM the flow while its session trains (what a Prefect cancel or a time limit sends): the session process must
# end before the flow, and so before the root lock is released. Prints when each ends. From the repository root:
#   bash benchmarks/check_sigterm.sh
set -u
work=$(mktemp -d); export PREFECT_HOME="$work/prefect"
python flows/exp3.py --smoke --models yolov8m --sessions S1_clean_train --set models.yolov8m.epochs=30 \
  --set output_root="$work/root" > "$work/flow.log" 2>&1 &
flow=$!
results="$work/root/yolov8m/yolov8m__S1_clean_train/train/results.csv"
for _ in $(seq 1 300); do
  session=$(pgrep -f "exp3.session --config $work/root" | head -1)
  [ -n "$session" ] && [ -f "$results" ] && break
  sleep 1
done
echo "flow $flow, session $session training; SIGTERM to the flow at $(date +%T.%N)"
kill -TERM "$flow"
while kill -0 "$session" 2>/dev/null; do sleep 0.05; done; echo "session ended at $(date +%T.%N)"
wait "$flow"; rc=$?; echo "flow ended at $(date +%T.%N), rc=$rc"
grep -h "exit " "$work/root/yolov8m/yolov8m__S1_clean_train/logs/session.log" | tail -1
