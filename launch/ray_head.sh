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
#   RAY_DASHBOARD_HOST   address the dashboard and job API listen on (default: this node's own address,
#                        RAY_NODE_IP below). 0.0.0.0 opens them on every interface: anyone who reaches the
#                        port can run code on the cluster, so enable RAY_AUTH_MODE=token (docs/multinode.md).
#                        A `--dashboard-host ADDR` argument does the same.
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
ip=$(sqrl_node_ip)
# The dashboard's job API runs any code it is sent: by default it listens on the address the cluster
# uses anyway, never on every interface unless asked for (RAY_DASHBOARD_HOST or --dashboard-host).
host=${RAY_DASHBOARD_HOST:-$ip}
explicit=0 prev=""
for arg in "$@"; do
  case $arg in
    --dashboard-host=*) host=${arg#--dashboard-host=} explicit=1 ;;
    *) if [[ "$prev" == --dashboard-host ]]; then host=$arg explicit=1; fi ;;
  esac
  prev=$arg
done
args=(--head --port "${RAY_PORT:-6379}" --dashboard-port "${RAY_DASHBOARD_PORT:-8265}")
if ((!explicit)); then args+=(--dashboard-host "$host"); fi
sqrl_ray_start_args args
if [[ ("$host" == 0.0.0.0 || "$host" == ::) && "${RAY_AUTH_MODE:-}" != token ]]; then
  echo "warning: the dashboard and job API listen on every interface ($host) without authentication;" \
    "set RAY_AUTH_MODE=token on every node (docs/multinode.md)" >&2
fi
echo "ray head: ${ip}:${RAY_PORT:-6379} (driver: RAY_ADDRESS=${ip}:${RAY_PORT:-6379}; jobs: http://${ip}:${RAY_DASHBOARD_PORT:-8265}, listening on ${host}); $(sqrl_num_gpus) GPUs"
exec ray start "${args[@]}" "$@"
