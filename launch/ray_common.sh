# shellcheck shell=bash
# Shared by launch/ray_head.sh, launch/ray_worker.sh and launch/slurm_grpo.sbatch (sourced, not run).

# The environment every Ray process of a sqrl cluster starts with (workers inherit the raylet's).
sqrl_ray_env() {
  export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
  export RAY_DEDUP_LOGS=${RAY_DEDUP_LOGS:-1}
  # Threads: Ray gives each worker OMP_NUM_THREADS = the CPUs it asked for (cluster.<role>.cpus) unless
  # OMP_NUM_THREADS is already set, so an inherited site default (often 1) is dropped here.
  # SQRL_WORKER_THREADS forces one value for every worker.
  if [[ -n "${SQRL_WORKER_THREADS:-}" ]]; then
    export OMP_NUM_THREADS=$SQRL_WORKER_THREADS
  else
    unset OMP_NUM_THREADS
  fi
}

# GPUs this node offers: $RAY_NUM_GPUS, else CUDA_VISIBLE_DEVICES (as SLURM sets it), else nvidia-smi, else 0.
sqrl_num_gpus() {
  if [[ -n "${RAY_NUM_GPUS:-}" ]]; then
    echo "$RAY_NUM_GPUS"
  elif [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    local ids=()
    IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  elif command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --list-gpus 2> /dev/null | awk '/^GPU /{n++} END{print n+0}'
  else
    echo 0
  fi
}

# CPUs this node offers: $RAY_NUM_CPUS, else SLURM's count for this task; empty: Ray counts them.
sqrl_num_cpus() {
  echo "${RAY_NUM_CPUS:-${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}}"
}

# The address this node advertises: $RAY_NODE_IP, else its first IPv4 address.
sqrl_node_ip() {
  if [[ -n "${RAY_NODE_IP:-}" ]]; then
    echo "$RAY_NODE_IP"
    return
  fi
  local ip
  ip=$(hostname -I 2> /dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}')
  echo "${ip:-127.0.0.1}"
}

# `ray start` arguments both node kinds share, into the array named by $1.
sqrl_ray_start_args() {
  local -n out=$1
  local cpus
  cpus=$(sqrl_num_cpus)
  out+=(--node-ip-address "$(sqrl_node_ip)" --num-gpus "$(sqrl_num_gpus)" --disable-usage-stats)
  if [[ -n "$cpus" ]]; then out+=(--num-cpus "$cpus"); fi
  if [[ -n "${RAY_RESOURCES:-}" ]]; then out+=(--resources "$RAY_RESOURCES"); fi
  if [[ -n "${RAY_TEMP_DIR:-}" ]]; then out+=(--temp-dir "$RAY_TEMP_DIR"); fi
  if [[ "${RAY_BLOCK:-0}" == 1 ]]; then out+=(--block); fi
}

# Wait until the cluster at $1 (host:port) has $2 live nodes, at most $3 seconds (default 300).
sqrl_wait_for_nodes() {
  local address=$1 want=$2 limit=${3:-300} have=0 start=$SECONDS
  while ((SECONDS - start < limit)); do
    have=$(python - "$address" 2> /dev/null << 'PY' || echo 0
import sys

import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(bool(n["Alive"]) for n in ray.nodes()))
PY
    )
    if ((have >= want)); then
      echo "ray cluster at $address: $have nodes"
      return 0
    fi
    sleep 5
  done
  echo "ray cluster at $address: $have of $want nodes after ${limit}s" >&2
  return 1
}
