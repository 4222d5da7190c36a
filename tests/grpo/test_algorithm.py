"""GRPO arithmetic against TRL 1.16 on the same tensors, and the invariants the loss split promises."""
from __future__ import annotations

import types
import zlib
from collections import defaultdict

import pytest
import torch

from grpo.algorithm import (
    LossConfig,
    Normalizer,
    flat_groups,
    group_advantages,
    k3_kl,
    nanstd,
    per_token_objective,
    reduce_loss,
)
from grpo.messages import TrainSample
from grpo.policy_worker import plan_update

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from trl.trainer.utils import nanstd as trl_nanstd  # noqa: E402

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


def trl_advantages(rewards: torch.Tensor, G: int, scale_rewards: str) -> torch.Tensor:
    """TRL 1.16 exposes no function for this: ported from GRPOTrainer._generate_and_score_completions
    (multi_objective_aggregation="sum_then_normalize", one reward function, NaN = unscorable)."""
    mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale_rewards in ("group", "none"):
        std = trl_nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = trl_nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def trl_loss(logps, old, ref, adv, mask, loss_type, beta, eps_low, eps_high, max_len):
    """TRL's own GRPOTrainer._compute_loss (the real function, not a copy) on a stub trainer whose model
    returns ``logps``: one process, no gradient accumulation, token-level importance sampling."""
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=types.SimpleNamespace(num_processes=1, reduce=lambda x, reduction="sum": x, gather=lambda x: x,
                                          gather_for_metrics=lambda x: x),
    )
    B, L = logps.shape
    inputs = {"prompt_ids": torch.zeros(B, 3, dtype=torch.long), "prompt_mask": torch.ones(B, 3, dtype=torch.long),
              "completion_ids": torch.zeros(B, L, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "num_items_in_batch": mask.sum()}
    if old is not None:
        inputs["old_per_token_logps"] = old
    if beta:
        inputs["ref_per_token_logps"] = ref
    return trl_grpo.GRPOTrainer._compute_loss(stub, None, inputs), stub._metrics["train"]


def random_batch(seed: int, B: int = 6, L: int = 9):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, L, generator=g) * 3
    old = logps + 0.3 * torch.randn(B, L, generator=g)  # far enough for both clip sides to bind
    ref = logps + 0.2 * torch.randn(B, L, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trls_formula_with_unscorable_completions(scale):
    rewards = torch.tensor([1.0, 0.0, 2.0, float("nan"), 3.0, 3.0, 3.0, 3.0, 0.5, float("nan"), float("nan"), float("nan")])
    ours = group_advantages(rewards, 4, scale)
    assert torch.allclose(ours, trl_advantages(rewards, 4, scale), atol=1e-6)
    assert ours[3] == 0 and ours[9:].eq(0).all()  # unscorable -> 0, never a silent reward


def test_group_advantages_are_eq2_of_the_paper():
    r = torch.tensor([4.0, 2.0, 3.0, 3.0])
    adv = group_advantages(r, 4, "group")
    expected = (r - r.mean()) / (r.std() + 1e-4)  # (R - mean) / sigma, unbiased std as TRL
    assert torch.allclose(adv, expected)


def test_nanstd_matches_trl():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("nan"), float("nan")], [1.0, 1.0, 2.0]])
    assert torch.allclose(nanstd(x, dim=1), trl_nanstd(x, dim=1), equal_nan=True)
    assert torch.allclose(nanstd(x), trl_nanstd(x))


def test_flat_groups_flags_equal_rewards_and_groups_with_fewer_than_two_values():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 2.0, float("nan"), float("nan")])
    assert flat_groups(r, 2).tolist() == [True, False, True, True]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("reuse", [False, True])
def test_loss_and_gradient_equal_trls_compute_loss(loss_type, beta, reuse):
    # A fixed seed per case: hash() of a str tuple changes with every process (PYTHONHASHSEED), and 5 of
    # 1,000 seeds give a batch with no clipped token, which failed the clipping check below at random.
    logps, old, ref, adv, mask = random_batch(seed=zlib.crc32(repr((loss_type, beta, reuse)).encode()) % 1000)
    settings = LossConfig(loss_type, beta, 0.2, 0.28, max_completion_length=9)
    old_in = old if reuse else None

    ours_in = logps.clone().requires_grad_(True)
    per_token, parts = per_token_objective(ours_in, old_in, ref, adv, settings)
    norm = Normalizer(num_sequences=6, num_tokens=int(mask.sum()), num_microbatches=1)
    ours = reduce_loss(per_token, mask, settings, norm)
    ours.backward()

    trl_in = logps.clone().requires_grad_(True)
    theirs, metrics = trl_loss(trl_in, old_in, ref, adv, mask, loss_type, beta, 0.2, 0.28, 9)
    theirs.backward()

    assert torch.allclose(ours, theirs, atol=1e-6), (float(ours), float(theirs))
    assert torch.allclose(ours_in.grad, trl_in.grad, atol=1e-6)
    tokens = float(mask.sum())
    for ours_key, trl_key in (("clip_low", "clip_ratio/low_mean"), ("clip_high", "clip_ratio/high_mean"),
                              ("clip_region", "clip_ratio/region_mean")):
        assert float((parts[ours_key] * mask).sum()) / tokens == pytest.approx(metrics[trl_key][0], abs=1e-6)
    if beta:
        assert float((parts["kl"] * mask).sum()) / tokens == pytest.approx(metrics["kl"][0], abs=1e-6)
    if reuse:
        assert metrics["clip_ratio/region_mean"][0] > 0  # the test exercises clipping


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_and_ranks_sum_to_the_whole_batch_loss(loss_type):
    # 1 x 6 equals 3 micro-batches of 2, and equals 2 ranks x 3 micro-batches of 1 (gradients averaged).
    logps, old, ref, adv, mask = random_batch(seed=7)
    settings = LossConfig(loss_type, 0.04, 0.2, 0.2, max_completion_length=9)
    whole = reduce_loss(per_token_objective(logps, old, ref, adv, settings)[0], mask, settings,
                        Normalizer(6, int(mask.sum()), 1))
    split = sum(reduce_loss(per_token_objective(logps[i:i + 2], old[i:i + 2], ref[i:i + 2], adv[i:i + 2], settings)[0],
                            mask[i:i + 2], settings, Normalizer(6, int(mask.sum()), 3)) for i in (0, 2, 4))
    norm2 = Normalizer(6, int(mask.sum()), 6, world_size=2)
    ranks = [sum(reduce_loss(per_token_objective(logps[i:i + 1], old[i:i + 1], ref[i:i + 1], adv[i:i + 1], settings)[0],
                             mask[i:i + 1], settings, norm2) for i in rows) for rows in ((0, 2, 4), (1, 3, 5))]
    assert torch.allclose(whole, split, atol=1e-6)
    assert torch.allclose(whole, sum(ranks) / 2, atol=1e-6)


def test_k3_kl_is_nonnegative_and_zero_at_equality():
    a = torch.randn(50)
    b = torch.randn(50)
    assert (k3_kl(a, b) >= -1e-7).all()
    assert torch.equal(k3_kl(a, a), torch.zeros(50))


def test_plan_update_gives_every_rank_the_same_number_of_micro_batches():
    samples = [TrainSample(f"a{i}", "p", [1] * (i + 1), 0.5) for i in range(7)]
    shards, norm = plan_update(samples, world_size=2, micro_batch_size=3)
    assert [len(s) for s in shards] == [2, 2]  # 4 rows each (one padded): micro-batches of 3 and 1
    rows = [x for shard in shards for mb in shard for x in mb]
    assert sum(x.weight for x in rows) == 7 and len(rows) == 8
    assert (norm.num_sequences, norm.num_tokens, norm.world_size) == (7, 28, 2)
    assert norm.num_microbatches == 3  # the padding-only micro-batch of rank 1 is not counted (bnpo)
    assert plan_update([], 1, 4) == ([], None)


def test_score_credit_puts_each_dimensions_accuracy_on_its_digit_and_the_rest_elsewhere():
    """Hand-worked: one group of two completions, accuracy on noise and overall plus a semantic reward (weight 2).
    scale none: advantages are the rewards minus the group mean."""
    from grpo.batch import Group, ScoredGroups, score_credit
    from grpo.messages import Completion
    from rewards import ScoredBatch
    from sqrl.schema import Record

    comps = [Completion("c", "a.wav", "p", list(range(n)), "") for n in (5, 4)]
    scores = ScoredBatch(total=[None, None],
                         per_reward={"accuracy": [2.0, 0.0], "semantic": [0.25, 0.75]},
                         components={"accuracy/noise": [1.0, 0.0], "accuracy/overall": [1.0, 0.0],
                                     "semantic/noise": [0.25, 0.75]}, skipped={}, errors={})
    batch = ScoredGroups([Group(Record(id="c"), comps)], scores)
    weights = {"accuracy": (1.0, True), "semantic": (2.0, False)}
    # completion 0 wrote noise at token 1 and overall at token 3; completion 1 has no overall line
    rows = score_credit(batch, weights, [{"noise": 1, "overall": 3}, {"noise": 2}], "none")
    # rest: 2 * semantic = 0.5, 1.5 -> -0.5, +0.5; noise 1, 0 -> +0.5, -0.5; overall 1, 0 -> +0.5, -0.5
    assert rows[0] == pytest.approx([-0.5, 0.5, -0.5, 0.5, -0.5])
    # no overall digit in completion 1: its -0.5 spreads over every token, its noise digit included
    assert rows[1] == pytest.approx([0.5 - 0.5, 0.5 - 0.5, -0.5 - 0.5, 0.5 - 0.5])
    # under group scaling each part is divided by its own group std (+-1 for two different values)
    assert score_credit(batch, weights, [{"noise": 1, "overall": 3}, {"noise": 2}], "group")[0][1] == pytest.approx(
        0.5 / (torch.tensor([1.0, 0.0]).std().item() + 1e-4))
    # a weight-0 reward credits nothing; no other reward: the rest is 0
    only = score_credit(batch, {"accuracy": (1.0, True), "semantic": (0.0, False)},
                        [{"noise": 1, "overall": 3}, {"noise": 2}], "none")
    assert only[0] == pytest.approx([0.0, 0.5, 0.0, 0.5, 0.0])


def test_a_per_token_advantage_matrix_equals_the_per_sequence_one_where_constant():
    logps = torch.randn(3, 6)
    ref = logps + 0.1 * torch.randn(3, 6)
    adv = torch.tensor([1.0, -0.5, 2.0])
    settings = LossConfig("grpo", beta=0.04, max_completion_length=6)
    seq, _ = per_token_objective(logps, None, ref, adv, settings)
    tok, _ = per_token_objective(logps, None, ref, adv[:, None].expand(3, 6), settings)
    assert torch.allclose(seq, tok)
    bumped = adv[:, None].expand(3, 6).clone()  # one token's own advantage changes that token's term only
    bumped[0, 2] = -3.0
    moved, _ = per_token_objective(logps, None, ref, bumped, settings)
    assert (moved != seq).sum() == 1


def test_an_unknown_credit_is_refused():
    from grpo.config import AlgorithmConfig

    assert AlgorithmConfig().credit == "sequence"  # the paper's eq. 3
    with pytest.raises(ValueError, match="algorithm.credit"):
        AlgorithmConfig(credit="tokens")
