#!/usr/bin/env bash
# Start one exp3-gpu worker per GPU id given (pinned with CUDA_VISIBLE_DEVICES, one flow run at a
# time each) plus one exp3-control worker, in the background; logs under deployments/logs/.
#   bash deployments/start_workers.sh 0 1        # two GPUs
#   bash deployments/start_workers.sh cpu        # no GPU: one CPU worker (testing)
set -euo pipefail
cd "$(dirname "$0")"
export EXP3_REPO="${EXP3_REPO:-$(cd .. && pwd)}"  # prefect.yaml's pull step: the checkout the workers run
mkdir -p logs
for gpu in "$@"; do
  if [ "$gpu" = cpu ]; then env_gpu=(env CUDA_VISIBLE_DEVICES=); else env_gpu=(env CUDA_VISIBLE_DEVICES="$gpu"); fi
  "${env_gpu[@]}" nohup prefect worker start --pool exp3-gpu --limit 1 --name "exp3-gpu-$gpu-$(hostname)" \
    >"logs/worker-gpu-$gpu.log" 2>&1 &
  echo "exp3-gpu worker for GPU $gpu: pid $!"
done
nohup prefect worker start --pool exp3-control --limit 4 --name "exp3-control-$(hostname)" \
  >logs/worker-control.log 2>&1 &
echo "exp3-control worker: pid $!"
