#!/usr/bin/env bash
# Start the head node of a Ray cluster for sqrl. Workers join with `launch/ray_worker.sh HEAD_IP:PORT`;
# the driver (`sqrl grpo`) connects with RAY_ADDRESS=HEAD_IP:PORT; `ray job submit` (launch/submit.sh)
# talks to http://HEAD_IP:DASHBOARD_PORT.
#
#   bash launch/ray_head.sh                                   # detached: starts Ray and returns
#   RAY_BLOCK=1 bash launch/ray_head.sh                       # stays in the foreground (srun, systemd)
#   RAY_RESOURCES='{"judge_node": 1}' bash launch/ray_head.sh # custom resources (cluster.<role>.resources)
#   bash launch/ray_head.sh --object-store-memory 20000000000 # further arguments go to `ray start`
#
# Environment (all optional):
#   RAY_PORT             GCS port (6379)
#   RAY_DASHBOARD_PORT   dashboard and job-submission port (8265)
#   RAY_NODE_IP          address to advertise (default: this node's first IPv4 address)
#   RAY_NUM_GPUS         GPUs to offer (default: CUDA_VISIBLE_DEVICES, else nvidia-smi, else 0)
#   RAY_NUM_CPUS         CPUs to offer (default: SLURM_CPUS_PER_TASK / SLURM_CPUS_ON_NODE, else Ray's count)
#   RAY_RESOURCES        custom resources, JSON
#   RAY_TEMP_DIR         Ray's session directory (default /tmp/ray; keep it short: it holds unix sockets)
#   RAY_BLOCK            1: do not return while Ray runs
#   SQRL_WORKER_THREADS  OMP_NUM_THREADS of every worker (default: each worker's CPUs, set by Ray)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=ray_common.sh
. "$HERE/ray_common.sh"

sqrl_ray_env
args=(--head --port "${RAY_PORT:-6379}" --dashboard-host 0.0.0.0 --dashboard-port "${RAY_DASHBOARD_PORT:-8265}")
sqrl_ray_start_args args
ip=$(sqrl_node_ip)
echo "ray head: ${ip}:${RAY_PORT:-6379} (driver: RAY_ADDRESS=${ip}:${RAY_PORT:-6379}; jobs: http://${ip}:${RAY_DASHBOARD_PORT:-8265}); $(sqrl_num_gpus) GPUs"
exec ray start "${args[@]}" "$@"
