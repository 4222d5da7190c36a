#!/usr/bin/env bash
# Submit the GRPO driver to a running Ray cluster as a Ray job. The repository is uploaded as the job's
# working directory (without .venv*, runs/, data/, .git: the nodes have the package installed and read
# data and checkpoints from shared storage), and the job runs `sqrl grpo --config CONFIG --out OUT`.
#
#   RAY_ADDRESS=http://HEAD_IP:8265 bash launch/submit.sh configs/paper/grpo_llmjudge_dimwise.yaml \
#       /shared/runs/grpo_llmjudge model.init=/shared/runs/paper/calibrated data.train=/shared/qs/train.jsonl
#
# * RAY_ADDRESS: the dashboard (http://HEAD_IP:8265); a GCS address (HEAD_IP:6379) is turned into
#   http://HEAD_IP:${RAY_DASHBOARD_PORT:-8265}. Default http://127.0.0.1:8265.
# * OUT is made absolute here: the job's working directory is a temporary copy on the head node, and a
#   relative OUT would be written inside it. It must be on storage the head node can write.
# * The config's relative paths (model.init, data.train) resolve in that copy, where runs/ and data/
#   are not uploaded: point them at shared storage with overrides, as above.
# * SQRL_NO_WAIT=1 returns once the job is submitted (follow it with `ray job logs -f ID`);
#   SQRL_JOB_ID sets the submission id.
set -euo pipefail

usage="usage: $0 CONFIG OUT [dotted.key=value ...]"
CONFIG=${1:?$usage}
OUT=${2:?$usage}
shift 2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
abspath() {
  case $1 in
    /*) echo "$1" ;;
    *) echo "$PWD/$1" ;;
  esac
}
OUT=$(abspath "$OUT")
CONFIG=$(abspath "$CONFIG")
if [[ ! -f "$CONFIG" ]]; then
  echo "no such config: $CONFIG" >&2
  exit 2
fi
case $CONFIG in
  "$ROOT"/*) CONFIG=${CONFIG#"$ROOT"/} ;;  # read from the uploaded copy
  *) echo "note: $CONFIG is outside the repository; the head node must be able to read it" >&2 ;;
esac

ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
case $ADDRESS in
  http://* | https://*) ;;
  *) ADDRESS="http://${ADDRESS%:*}:${RAY_DASHBOARD_PORT:-8265}" ;;
esac

RUNTIME_ENV='{"excludes": [".git", ".venv*", "runs", "/data", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "*.wav"]}'
opts=(--address "$ADDRESS" --working-dir "$ROOT" --runtime-env-json "$RUNTIME_ENV")
if [[ "${SQRL_NO_WAIT:-0}" == 1 ]]; then opts+=(--no-wait); fi
if [[ -n "${SQRL_JOB_ID:-}" ]]; then opts+=(--submission-id "$SQRL_JOB_ID"); fi

echo "submitting to $ADDRESS: sqrl grpo --config $CONFIG --out $OUT $*"
exec ray job submit "${opts[@]}" -- sqrl grpo --config "$CONFIG" --out "$OUT" "$@"
