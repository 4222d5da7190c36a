"""GRPO in bf16 on a CPU: one dtype for the policy, the reference and the hf rollout engine; fp32 master
weights in DeepSpeed's optimizer; log-prob tolerances between policy and engine (docs/grpo.md, Precision).

One rank, ZeRO-2, in this process (the two-rank and ZeRO-3 cases: tests/grpo/test_zero3.py).
"""
from __future__ import annotations

import os

import pytest
import torch

from grpo.algorithm import LossConfig
from grpo.messages import ClipRequest, SamplingParams, TrainSample
from grpo.policy_worker import free_address, plan_update
from grpo.rollout_hf import HFRolloutWorker
from sqrl.prompts import Rubric
from sqrl.schema import read_manifest
from tests.grpo.policy_probe import ProbedPolicyWorker

SAMPLING = SamplingParams(max_new_tokens=10)
PAPER_LR = 5e-6


@pytest.fixture(scope="module", autouse=True)
def _bf16_on_this_cpu(native_bf16):
    """These tests check bf16 numerics: bf16 even where sqrl would compute in fp32 (tests/conftest.py)."""


def make_policy(tiny_init, dtype: str, lr: float) -> ProbedPolicyWorker:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    worker = ProbedPolicyWorker(str(tiny_init), "tiny-qwen2-audio", lora_rank=8, lora_alpha=None, lora_dropout=0.0,
                                encoder_mode="trainable", dtype=dtype, lr=lr,
                                loss=LossConfig("grpo", beta=0.04, max_completion_length=SAMPLING.max_new_tokens))
    worker.setup(*free_address())
    return worker


@pytest.fixture(scope="module")
def policy(tiny_init):
    """bf16 at the paper's learning rate."""
    return make_policy(tiny_init, "bfloat16", PAPER_LR)


@pytest.fixture(scope="module")
def rollout(tiny_init):
    return HFRolloutWorker(str(tiny_init), "tiny-qwen2-audio", 8, None, "trainable", dtype="bfloat16")


@pytest.fixture(scope="module")
def completions(rollout, corpus):
    prompt = Rubric().long_form()
    clips = [ClipRequest(r.id, r.audio, prompt) for r in read_manifest(corpus / "train.jsonl")[:2]]
    return rollout.generate(clips, 3, SamplingParams(max_new_tokens=10, return_logprobs=True), seed=11).completions


def train_once(policy, completions):
    samples = [TrainSample(c.audio, c.prompt, c.token_ids, (1.0, -1.0, 0.5)[i % 3]) for i, c in enumerate(completions)]
    shards, norm = plan_update(samples, 1, micro_batch_size=4)
    return policy.update(shards[0], norm)


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_policy_and_engine_hold_one_dtype_and_the_loss_is_computed_in_fp32(policy, rollout, completions):
    from grpo.model_io import completion_inputs, completion_logprobs, load_waves

    assert policy.dtypes()["trainable"] == ["torch.bfloat16"]  # LoRA too: peft would keep it in fp32
    assert {p.dtype for p in rollout.model.parameters()} == {torch.bfloat16}
    waves, _ = load_waves([completions[0].audio])
    inputs, mask = completion_inputs(policy.backbone, policy.processor, [waves[completions[0].audio]],
                                     [completions[0].prompt], [completions[0].token_ids])
    inputs = inputs.to(policy.dtype)
    assert inputs["input_features"].dtype == torch.bfloat16  # the features enter the tower in its dtype
    with torch.no_grad():
        assert policy.module(**inputs).logits.dtype == torch.bfloat16
        logps, _ = completion_logprobs(policy.module, inputs, mask)
        with policy._reference():
            ref, _ = completion_logprobs(policy.module, inputs, mask)
    assert logps.dtype == ref.dtype == torch.float32  # log-softmax of bf16 logits, taken in fp32
    assert policy.trainable_names() == sorted(policy._trainable)  # the reference pass froze nothing back in


def test_sampling_and_teacher_forced_logprobs_agree_to_bf16_precision(rollout, completions):
    forced = rollout.logprobs(completions)
    diff = max_diff([c.logprobs for c in completions], forced)
    print(f"bf16 hf rollout: sampling vs teacher-forced max |logprob diff| = {diff:.3g}")
    assert diff < 5e-2  # fp32: < 1e-4 (tests/grpo/test_policy_worker.py); bf16: different kernels, 8-bit mantissa


def test_a_synced_bf16_engine_matches_the_policy_and_its_kl_is_zero(policy, rollout, completions):
    fixed = completions[:3]
    start = policy.logprobs(fixed)
    assert max_diff(rollout.logprobs(fixed), start) == 0  # the same bf16 weights and kernels
    assert max_diff(policy.logprobs(fixed, reference=True), start) == 0  # a fresh adapter: KL exactly 0
    stats = train_once(policy, completions)
    assert stats["kl"] == 0.0 and stats["grad_norm"] > 0
    rollout.load_weights(policy.weights(1))
    after = policy.logprobs(fixed)
    diff = max_diff(rollout.logprobs(fixed), after)
    kl = sum(torch.expm1(torch.tensor(r) - torch.tensor(p)).sub(torch.tensor(r) - torch.tensor(p)).sum().item()
             for r, p in zip(rollout.logprobs(fixed), after))
    print(f"bf16 after one update and a sync: max |logprob diff| = {diff:.3g}, k3 KL sum = {kl:.3g}")
    assert diff < 1e-4 and abs(kl) < 1e-6


def test_bf16_updates_go_to_fp32_master_weights_so_small_steps_are_not_lost(policy, completions):
    before = policy.full_parameters()
    master_before = policy.full_parameters(master=True)
    train_once(policy, completions)
    after, master = policy.full_parameters(), policy.full_parameters(master=True)
    assert {v.dtype for v in master.values()} == {torch.float32}
    moved = {k: float((master[k] - master_before[k]).abs().max()) for k in master}
    assert min(moved.values()) > 0  # every trained tensor moved in the master
    assert max(moved.values()) == pytest.approx(PAPER_LR, rel=0.1)  # Adam's step is about lr
    for k in after:  # the model's bf16 copy is the master rounded, not a bf16 value updated in place
        assert torch.equal(after[k], master[k].to(torch.bfloat16)), k
    tower = [k for k in after if ".audio_tower." in k and "embed_positions" not in k and k.endswith("weight")]
    changed = sum(int((after[k] != before[k]).sum()) for k in tower)
    total = sum(after[k].numel() for k in tower)
    print(f"lr {PAPER_LR}: encoder master moved by <= {max(moved[k] for k in tower):.3g}; "
          f"bf16 encoder elements changed this step: {changed}/{total}")
    assert any(float(after[k].abs().max()) > 0 for k in after if "lora_B" in k)  # LoRA B left zero in bf16 too


@pytest.mark.slow  # two more engines: about 20 s
def test_fp32_and_bf16_policies_after_the_same_update(tiny_init, completions):
    fixed = completions[:3]
    results = {}
    for dtype in ("float32", "bfloat16"):
        worker = make_policy(tiny_init, dtype, 2e-3)
        start = worker.logprobs(fixed)
        train_once(worker, completions)
        results[dtype] = (start, worker.logprobs(fixed))
    start_gap = max_diff(results["float32"][0], results["bfloat16"][0])
    after_gap = max_diff(results["float32"][1], results["bfloat16"][1])
    print(f"fp32 vs bf16 policy log-probs: {start_gap:.3g} at the start, {after_gap:.3g} after one update (lr 2e-3)")
    assert 0 < start_gap < 0.1 and after_gap < 0.5
