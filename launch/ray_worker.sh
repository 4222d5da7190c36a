#!/usr/bin/env bash
# Join a Ray cluster for sqrl as a worker node.
#
#   bash launch/ray_worker.sh HEAD_IP:6379                    # detached: starts Ray and returns
#   RAY_BLOCK=1 bash launch/ray_worker.sh HEAD_IP:6379        # stays in the foreground (srun, systemd)
#   RAY_RESOURCES='{"judge_node": 1}' bash launch/ray_worker.sh HEAD_IP:6379
#   bash launch/ray_worker.sh HEAD_IP:6379 --object-store-memory 20000000000   # more `ray start` arguments
#
# The address may also come from RAY_ADDRESS. Environment as in launch/ray_head.sh (RAY_NODE_IP,
# RAY_NUM_GPUS, RAY_NUM_CPUS, RAY_RESOURCES, RAY_TEMP_DIR, RAY_BLOCK, SQRL_WORKER_THREADS).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=ray_common.sh
. "$HERE/ray_common.sh"

if [[ $# -gt 0 && "$1" != -* ]]; then
  HEAD_ADDRESS=$1
  shift
else
  HEAD_ADDRESS=${RAY_ADDRESS:?usage: $0 HEAD_IP:PORT [ray start arguments...] (or set RAY_ADDRESS)}
fi

sqrl_ray_env
args=(--address "$HEAD_ADDRESS")
sqrl_ray_start_args args
echo "ray worker $(sqrl_node_ip) joining ${HEAD_ADDRESS}; $(sqrl_num_gpus) GPUs"
exec ray start "${args[@]}" "$@"
