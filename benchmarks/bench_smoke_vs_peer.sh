#!/usr/bin/env bash
# The smoke (fresh root) and the peer a researcher would otherwise use (a plain bash loop of `yolo train` /
# `yolo val` doing the smoke's work on the same data and fixed suite), back to back; prints both walls and the
# ratio (BENCHMARKS.md, target <= 0.8), and the flow's epoch and DONE lines (12 each).
# Usage: bash benchmarks/bench_smoke_vs_peer.sh PEER_SCRIPT ROOT   (ROOT must not exist; run on an idle machine)
set -euo pipefail
PEER=$1; ROOT=$2
[ -e "$ROOT" ] && { echo "error: $ROOT exists: pass a new folder (nothing there is overwritten)" >&2; exit 2; }
mkdir -p "$ROOT"
s0=$(date +%s.%N)
python flows/exp3.py --smoke --set output_root="$ROOT/smoke" > "$ROOT/smoke.log" 2>&1
smoke=$(echo "$(date +%s.%N) - $s0" | bc)
data=$(ls "$ROOT"/smoke/data/synthetic-smoke-seed*/data.yaml)
suite=$(ls -d "$ROOT"/smoke/suites/occ-*/)
bash "$PEER" "$(dirname "$(dirname "$(command -v python)")")" "$data" "$suite" "$ROOT/peer" | tee "$ROOT/peer.log"
peer=$(grep -o 'bash loop wall: [0-9.]*' "$ROOT/peer.log" | grep -o '[0-9.]*$')
echo "smoke ${smoke} s, peer ${peer} s, ratio $(echo "scale=3; $smoke / $peer" | bc)"
echo "flow log: $(grep -c ': epoch 1/1 ' "$ROOT/smoke.log") epoch lines, $(grep -c 'DONE [a-z]' "$ROOT/smoke.log") DONE lines"
