"""The policy and hf rollout workers in this process (no Ray): sampling, weight sync, reference, checkpoints."""
from __future__ import annotations

import os

import pytest
import torch

from grpo.algorithm import LossConfig
from grpo.messages import ClipRequest, SamplingParams, TrainSample
from grpo.policy_worker import PolicyWorker, free_address, plan_update
from grpo.rollout_hf import HFRolloutWorker
from sqrl.prompts import Rubric
from sqrl.schema import read_manifest

G = 3
SAMPLING = SamplingParams(max_new_tokens=10)


@pytest.fixture(scope="module")
def clips(corpus):
    prompt = Rubric().long_form()
    return [ClipRequest(r.id, r.audio, prompt) for r in read_manifest(corpus / "train.jsonl")[:2]]


@pytest.fixture(scope="module")
def policy(tiny_init):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    worker = PolicyWorker(str(tiny_init), "tiny-qwen2-audio", lora_rank=8, lora_alpha=None, lora_dropout=0.0,
                          encoder_mode="trainable", dtype="float32", lr=2e-3,
                          loss=LossConfig("grpo", beta=0.04, max_completion_length=SAMPLING.max_new_tokens))
    worker.setup(*free_address())
    return worker


@pytest.fixture(scope="module")
def rollout(tiny_init, policy):
    worker = HFRolloutWorker(str(tiny_init), "tiny-qwen2-audio", 8, None, "trainable", dtype="float32")
    worker.load_weights(policy.weights(0))
    return worker


@pytest.fixture(scope="module")
def completions(rollout, clips):
    return rollout.generate(clips, G, SAMPLING, seed=11).completions


def train_once(policy, completions, advantages=(1.0, -1.0, 0.5)):
    samples = [TrainSample(c.audio, c.prompt, c.token_ids, advantages[i % len(advantages)]) for i, c in enumerate(completions)]
    shards, norm = plan_update(samples, 1, micro_batch_size=4)
    return policy.update(shards[0], norm)


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_rollout_returns_g_completions_per_clip_in_group_order(completions, clips, rollout):
    assert [c.clip_id for c in completions] == [c.clip_id for c in clips for _ in range(G)]
    banned = set(rollout.suppress)
    assert banned, "audio placeholders and <|im_start|> must be suppressed"
    for c in completions:
        assert c.token_ids and not banned & set(c.token_ids)
        assert c.truncated == (c.token_ids[-1] not in rollout.stop_ids)
        assert len(c.token_ids) <= SAMPLING.max_new_tokens


def test_sampling_is_reproducible_from_its_seed(rollout, clips, completions):
    again = rollout.generate(clips, G, SAMPLING, seed=11).completions
    other = rollout.generate(clips, G, SAMPLING, seed=12).completions
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    assert [c.token_ids for c in other] != [c.token_ids for c in completions]


def test_sampling_logprobs_equal_the_teacher_forced_ones(rollout, clips):
    sampled = rollout.generate(clips[:1], 2, SamplingParams(max_new_tokens=6, return_logprobs=True), seed=3).completions
    forced = rollout.logprobs(sampled)
    assert all(len(c.logprobs) == len(c.token_ids) for c in sampled)
    assert max_diff([c.logprobs for c in sampled], forced) < 1e-4  # left-padded generate vs right-padded forward


def test_after_an_update_and_a_sync_rollout_logprobs_match_the_policy_in_fp32(policy, rollout, completions):
    fixed = completions[:3]
    before = policy.logprobs(fixed)
    assert max_diff(rollout.logprobs(fixed), before) < 1e-5  # in sync at the start
    stats = train_once(policy, completions)
    assert stats["grad_norm"] > 0
    after = policy.logprobs(fixed)
    assert max_diff(after, before) > 1e-3, "the update must move the policy for this test to mean anything"
    assert max_diff(rollout.logprobs(fixed), after) > 1e-3  # stale until synced
    rollout.load_weights(policy.weights(1))
    diff = max_diff(rollout.logprobs(fixed), after)
    print(f"sync max |logprob diff| = {diff:.3g}")
    assert diff < 1e-4
    assert rollout.version() == 1


def test_weight_update_carries_the_adapter_and_the_trained_encoder(policy):
    update = policy.weights(5)
    keys = list(update.tensors)
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)
    assert any(".audio_tower." in k for k in keys) and any("multi_modal_projector" in k for k in keys)
    assert update.adapter_config["r"] == 8 and update.version == 5


def test_reference_is_the_merged_base_even_though_the_encoder_copy_trains(policy, completions, tiny_init):
    from grpo.model_io import completion_inputs, completion_logprobs, load_waves, per_row
    from sqrl.backbones import get_backbone

    train_once(policy, completions)  # at least one update (this test may run alone)
    tower = policy.module.base_model.model.model.audio_tower
    trained = dict(tower.modules_to_save["default"].named_parameters())
    moved = max(float((p - trained[n]).detach().abs().max()) for n, p in tower.original_module.named_parameters()
                if "embed_positions" not in n)
    assert moved > 0, "the encoder's trainable copy must have changed"
    fixed = completions[:3]
    reference = policy.logprobs(fixed, reference=True)
    backbone = get_backbone("tiny-qwen2-audio")
    base, processor = backbone.load(str(tiny_init))
    waves, _ = load_waves([c.audio for c in fixed])
    inputs, mask = completion_inputs(backbone, processor, [waves[c.audio] for c in fixed], [c.prompt for c in fixed],
                                     [c.token_ids for c in fixed])
    with torch.no_grad():
        expected = per_row(*completion_logprobs(base.eval(), inputs, mask))
    assert max_diff(reference, expected) < 1e-5
    assert max_diff(policy.logprobs(fixed), reference) > 1e-3


def test_checkpoint_restores_weights_and_optimizer_state(policy, completions, tmp_path):
    policy.save(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").exists()
    train_once(policy, completions)
    first = policy.logprobs(completions[:2])
    policy.load(str(tmp_path / "ckpt"))
    train_once(policy, completions)  # the same update from the restored weights and Adam moments
    assert max_diff(policy.logprobs(completions[:2]), first) < 1e-6


def test_a_policy_on_eager_attention_scores_as_the_sdpa_rollouts(tiny_init, completions):
    worker = PolicyWorker(str(tiny_init), "tiny-qwen2-audio", lora_rank=8, lora_alpha=None, lora_dropout=0.0,
                          encoder_mode="trainable", dtype="float32", lr=2e-3, attn_implementation="eager",
                          loss=LossConfig("grpo", beta=0.04, max_completion_length=SAMPLING.max_new_tokens))
    worker.setup(*free_address())
    assert worker.engine.module.get_base_model().config.text_config._attn_implementation == "eager"
    fresh = HFRolloutWorker(str(tiny_init), "tiny-qwen2-audio", 8, None, "trainable", dtype="float32")
    fixed = completions[:3]
    # both start at the base model's function (LoRA B = 0); only the attention kernel differs
    assert max_diff(worker.logprobs(fixed), fresh.logprobs(fixed)) < 1e-5


def test_token_advantages_land_on_their_completion_tokens_in_order(policy, completions):
    """The policy's inputs hold prompt, audio and completion; a completion's token advantages must land on its own
    tokens, in order, and a completion of constant ones trains as one of the same per-sequence advantage."""
    mb = list(completions[:3])
    advantages = (1.0, -1.0, 0.5)
    seq = [TrainSample(c.audio, c.prompt, c.token_ids, a) for c, a in zip(mb, advantages)]
    marked = [TrainSample(c.audio, c.prompt, c.token_ids, 0.0,
                          token_advantages=[float(k + 1) for k in range(len(c.token_ids))]) for c in mb]
    (plain,), (tok,) = policy._prepare([seq]), policy._prepare([marked])
    mask = plain["mask"]
    assert tok["adv"].shape == mask.shape and plain["adv"].shape == (3,)
    for row, c in enumerate(mb):
        assert tok["adv"][row][mask[row].bool()].tolist() == [float(k + 1) for k in range(len(c.token_ids))]
        assert float(tok["adv"][row][~mask[row].bool()].abs().sum()) == 0.0
    constant = [TrainSample(c.audio, c.prompt, c.token_ids, 0.0, token_advantages=[a] * len(c.token_ids))
                for c, a in zip(mb, advantages)]
    (same,) = policy._prepare([constant])
    assert torch.equal(same["adv"], torch.tensor(advantages)[:, None] * mask)
    short = [TrainSample(mb[0].audio, mb[0].prompt, mb[0].token_ids, 0.0, token_advantages=[1.0])]
    with pytest.raises(RuntimeError, match="token advantages"):
        policy._prepare([short])


def test_an_update_makes_a_positive_advantage_more_likely_and_a_negative_one_less(tiny_init, completions):
    """The sign of the whole chain (advantages, objective, optimizer): one step with +1 / -1 / 0 on one clip's
    group raises the first completion's log-likelihood and lowers the second's; per-token advantages do the same
    within one completion, token by token."""
    worker = PolicyWorker(str(tiny_init), "tiny-qwen2-audio", lora_rank=8, lora_alpha=None, lora_dropout=0.0,
                          encoder_mode="trainable", dtype="float32", lr=2e-3,
                          loss=LossConfig("grpo", beta=0.0, max_completion_length=SAMPLING.max_new_tokens))
    worker.setup(*free_address())
    group = list(completions[:G])
    before = [sum(row) for row in worker.logprobs(group)]
    samples = [TrainSample(c.audio, c.prompt, c.token_ids, a) for c, a in zip(group, (1.0, -1.0, 0.0))]
    shards, norm = plan_update(samples, 1, micro_batch_size=4)
    worker.update(shards[0], norm)
    after = [sum(row) for row in worker.logprobs(group)]
    print(f"log-likelihood before {before}, after {after}")
    assert after[0] > before[0] + 1e-3 and after[1] < before[1] - 1e-3

    one = group[2]
    half = len(one.token_ids) // 2
    marks = [1.0] * half + [-1.0] * (len(one.token_ids) - half)
    (start,) = worker.logprobs([one])
    shards, norm = plan_update([TrainSample(one.audio, one.prompt, one.token_ids, 0.0, token_advantages=marks)], 1,
                               micro_batch_size=4)
    worker.update(shards[0], norm)
    (end,) = worker.logprobs([one])
    moved = [e - s for e, s in zip(end, start)]
    print(f"per-token change {moved}")
    assert sum(moved[:half]) > 1e-3 and sum(moved[half:]) < -1e-3
