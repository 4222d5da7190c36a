#!/bin/bash
# Held-out judge probe of the T=0.7 experiment: the greedy answers of the start model and of the GRPO rows on the
# same 40 held-out clips, scored by the judge each row trained with (sqrl agreement --evals). One thread.
cd "$(git rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1
E=runs/judges_t07
M=data/synth/synth-v1-n2000-s0-sr16000/test.jsonl
date
.venv/bin/sqrl agreement --limit 40 --manifest $M \
  --evals start=$E/shared/eval/sft_reasoning \
  --evals dimwise_s0=$E/seed0/eval/grpo_llmjudge --evals dimwise_s1=$E/seed1/eval/grpo_llmjudge \
  --evals accsem_s0=$E/seed0/eval/grpo_accsem --evals accsem_s1=$E/seed1/eval/grpo_accsem \
  --score '{name: llm_judge_dimwise, dimensions: [noise, distortion, continuity, overall], params: {judge: qwen2.5-coder-1.5b, onepass: true, prompts: dimwise_onepass_compare, judge_input: fields}}' \
  --score '{name: accuracy, dimensions: [noise, distortion, continuity, overall]}' \
  --out runs/judge_probe/dimwise.json
date
.venv/bin/sqrl agreement --limit 40 --manifest $M \
  --evals start=$E/shared/eval/sft_reasoning \
  --evals unified_s0=$E/seed0/eval/grpo_unified_lines --evals unified_s1=$E/seed1/eval/grpo_unified_lines \
  --score '{name: llm_judge_unified, params: {judge: qwen2.5-coder-1.5b, criteria: [accuracy], prompts: unified_lines, judge_input: fields}}' \
  --score '{name: accuracy, dimensions: [noise, distortion, continuity, overall]}' \
  --out runs/judge_probe/unified.json
date
