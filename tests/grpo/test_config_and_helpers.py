"""Configs, data cursor, sample selection, scored-batch plumbing, checkpoints and logs (no Ray, no model)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo import checkpoint
from grpo.batch import Group, ScoredGroups, train_samples
from grpo.config import GRPOConfig
from grpo.messages import Completion
from grpo.reward_worker import split_groups
from grpo.rollout_worker import sampling_seed
from grpo.sampling import ClipStream
from grpo.tracking import RunLogger, plot_reward_curve, read_metrics
from rewards import RewardSet, ScoredBatch
from sqrl.config import ConfigError, load_config
from sqrl.schema import Record

REPO = Path(__file__).resolve().parents[2]
GRPO_CONFIGS = sorted(REPO.glob("configs/*/grpo_*.yaml"))


@pytest.mark.parametrize("path", GRPO_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_grpo_config_loads_and_its_rewards_build(path):
    cfg = load_config(GRPOConfig, path)
    RewardSet.from_config(cfg.rewards.entries, cfg.rewards.aggregation)
    assert cfg.rollout.group_size == 4 and cfg.train.batch_size == 4  # Table 2


def test_paper_configs_follow_table_2():
    for path in REPO.glob("configs/paper/grpo_*.yaml"):
        cfg = load_config(GRPOConfig, path)
        assert (cfg.train.steps, cfg.policy.lr, cfg.lora.rank, cfg.policy.zero_stage) == (200, 5e-6, 64, 3)


def test_the_tiny_variants_differ_only_in_their_rewards():
    """The three SmolLM2 variants and the three with the Qwen CPU judge (configs/tiny/compare_judges.yaml)."""
    from sqrl.config import to_dict

    cfgs = {p.stem: to_dict(load_config(GRPOConfig, p)) for p in REPO.glob("configs/tiny/grpo_*.yaml")}
    assert set(cfgs) == {"grpo_accsem_dimwise", "grpo_llmjudge_dimwise", "grpo_unified", "grpo_llmjudge_qwen",
                         "grpo_unified_qwen", "grpo_unified_lines_qwen"}
    for cfg in cfgs.values():
        cfg.pop("rewards")
    assert all(c == cfgs["grpo_accsem_dimwise"] for c in cfgs.values())


@pytest.mark.parametrize("override, message", [
    ("algorithm.loss_type=ppo", "loss_type"),
    ("algorithm.scale_rewards=max", "scale_rewards"),
    ("algorithm.zero_variance=drop", "zero_variance"),
    ("rollout.group_size=1", "group_size"),
    ("rollout.tempreature=0.9", "unknown config key"),
])
def test_bad_settings_are_rejected_with_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, REPO / "configs/tiny/grpo_accsem_dimwise.yaml", [override])


def test_dotted_overrides_reach_the_config():
    cfg = load_config(GRPOConfig, REPO / "configs/tiny/grpo_accsem_dimwise.yaml",
                      ["rollout.temperature=0.7", "rewards.entries=[{name: accuracy, dimensions: [noise]}]"])
    assert cfg.rollout.temperature == 0.7 and cfg.rewards.entries == [{"name": "accuracy", "dimensions": ["noise"]}]


def test_clip_stream_permutes_each_epoch_and_resumes_from_its_state():
    records = [Record(id=f"c{i}", audio=f"{i}.wav") for i in range(5)]
    stream = ClipStream(records, seed=1)
    first = [r.id for r in stream.take(7)]  # crosses into epoch 1
    assert sorted(first[:5]) == [f"c{i}" for i in range(5)] and stream.epoch == 1
    state = stream.state()
    expected = [r.id for r in stream.take(6)]
    again = ClipStream(records, seed=1)
    again.load_state(state)
    assert [r.id for r in again.take(6)] == expected


def test_a_balanced_stream_draws_rare_labels_more_often_and_resumes_exactly():
    labels = [5] * 18 + [1] * 2
    records = [Record(id=f"c{i}", audio="a.wav", scores={"noise": v}) for i, v in enumerate(labels)]
    stream = ClipStream(records, seed=3, balance="labels")
    drawn = [r.scores["noise"] for r in stream.take(400)]
    assert 0.35 < drawn.count(1) / len(drawn) < 0.65  # 10% of the corpus, about half of the draws
    state = stream.state()
    nxt = [r.id for r in stream.take(9)]
    again = ClipStream(records, seed=3, balance="labels")
    again.load_state(state)
    assert [r.id for r in again.take(9)] == nxt
    with pytest.raises(ValueError, match="balance"):
        ClipStream(records, seed=0, balance="classes")


def test_sampling_seeds_depend_on_the_call_not_on_history():
    assert sampling_seed(0, 5, 0, 0) == sampling_seed(0, 5, 0, 0)
    assert len({sampling_seed(0, s, a, w) for s in range(3) for a in range(2) for w in range(2)}) == 12


def _groups(n: int, G: int, truncated_every: int = 0) -> list[Group]:
    return [Group(Record(id=f"c{g}", audio="a.wav"),
                  [Completion(f"c{g}", "a.wav", "p", [1, 2], "x", truncated=bool(truncated_every) and i % truncated_every == 0)
                   for i in range(G)]) for g in range(n)]


@pytest.mark.parametrize("mode, mask_truncated, expected", [
    ("keep", False, 8), ("resample", False, 8), ("skip", False, 4), ("skip", True, 2), ("keep", True, 4)])
def test_sample_selection_follows_zero_variance_and_truncation_settings(mode, mask_truncated, expected):
    cfg = load_config(GRPOConfig, None, [f"algorithm.zero_variance={mode}", f"algorithm.mask_truncated={mask_truncated}",
                                         "rollout.group_size=4"])
    algo = cfg.algorithm
    adv = torch.arange(8, dtype=torch.float32)
    samples = train_samples(_groups(2, 4, truncated_every=2), adv, torch.tensor([True, False]),
                            skip_flat=algo.zero_variance == "skip", mask_truncated=algo.mask_truncated)
    assert len(samples) == expected
    if mode == "skip":
        assert all(s.advantage >= 4 for s in samples)  # only the second (non-flat) group trains


def test_scored_groups_slice_by_group_and_concat_back():
    rs = RewardSet.from_config([{"name": "format", "dimensions": ["noise", "overall"]}])
    texts = ["Noise: 3/5", "Overall quality: 2/5", "nothing", "Noise: 1/5\nOverall quality: 5/5"]
    refs = [Record(id=f"c{i // 2}") for i in range(4)]
    whole = ScoredGroups(_groups(2, 2), rs.score(texts, refs))
    first, second = whole.slice(0, 1), whole.slice(1, 2)
    assert [g.record.id for g in second.groups] == ["c1"] and second.scores.total == whole.scores.total[2:]
    assert second.scores.skipped == {"format": sum(v is None for v in whole.scores.per_reward["format"][2:])}
    merged = ScoredGroups.concat([first, second])
    assert merged.scores.total == whole.scores.total and merged.scores.components == whole.scores.components
    assert merged.groups == whole.groups
    totals = merged.totals()
    assert [None if t != t else t for t in totals.tolist()] == whole.scores.total  # None as NaN
    assert split_groups(5, 2) == [range(0, 3), range(3, 5)] and split_groups(1, 3) == [range(0, 1)]


def test_concat_fills_a_reward_missing_from_one_worker_with_none():
    a = ScoredBatch([1.0], {"r": [1.0]}, {"r/x": [1.0]}, {"r": 0}, {"r": 0})
    b = ScoredBatch([None], {"r": [None]}, {}, {"r": 0}, {"r": 1}, total_skipped=1)
    g1, g2 = _groups(2, 1)
    m = ScoredGroups.concat([ScoredGroups([g1], a), ScoredGroups([g2], b)]).scores
    assert m.components == {"r/x": [1.0, None]} and m.errors == {"r": 1} and m.total_skipped == 1


def test_checkpoints_are_atomic_and_restore_the_driver_rng(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    tmp = checkpoint.begin(tmp_path, 3)
    assert checkpoint.latest(tmp_path) is None  # a half-written checkpoint is invisible
    final = checkpoint.commit(tmp, 3, {"data": {"epoch": 0, "pos": 4}})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.begin(tmp_path, 4)  # a kill -9 while writing step 4
    assert checkpoint.latest(tmp_path) == final
    state = checkpoint.load_state(final)
    assert state["step"] == 3 and state["data"] == {"epoch": 0, "pos": 4}
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    for step in (5, 6):
        checkpoint.commit(checkpoint.begin(tmp_path, step), step, {})
    checkpoint.prune(tmp_path, keep=2)
    assert sorted(p.name for p in checkpoint.checkpoints_dir(tmp_path).iterdir()) == ["step-000005", "step-000006"]


def test_run_logger_writes_jsonl_and_drops_rows_after_the_resumed_step(tmp_path):
    logger = RunLogger(tmp_path, 3, tensorboard=True, progress=False)
    for step in (1, 2, 3):
        logger.log(step, {"rewards/total/mean": float(step), "rewards/acc/noise/mean": 0.5, "kl": float("nan")})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kl"] is None
    RunLogger(tmp_path, 3, start_step=1, tensorboard=False, progress=False).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    png = plot_reward_curve(tmp_path / "metrics.jsonl", tmp_path / "plots" / "reward_curve.png")
    assert png.stat().st_size > 0


def test_rollouts_drop_a_clip_too_short_for_the_encoder_and_name_its_file(tmp_path):
    # Such a clip once reached the backbone and stopped the run ("800 samples is shorter than 0.1 s").
    import soundfile as sf

    from grpo.messages import ClipRequest
    from grpo.model_io import load_waves, readable_requests

    sf.write(tmp_path / "ok.wav", np.full(16_000, 0.1, np.float32), 16_000)
    sf.write(tmp_path / "short.wav", np.full(800, 0.1, np.float32), 16_000)
    (tmp_path / "text.wav").write_text("not audio")
    requests = [ClipRequest(name, str(tmp_path / f"{name}.wav"), "Rate.") for name in ("ok", "short", "text")]
    ok, waves, batch = readable_requests(requests, max_seconds=30.0)
    assert [r.clip_id for r in ok] == ["ok"] and list(waves) == [str(tmp_path / "ok.wav")]
    assert set(batch.failed) == {"short", "text"}  # the driver counts these as data/unreadable_clips
    assert batch.failed["short"].startswith(f"{tmp_path / 'short.wav'}: too short for the model")
    # the policy and reward workers load through the same rule
    assert set(load_waves([r.audio for r in requests])[1]) == {str(tmp_path / "short.wav"), str(tmp_path / "text.wav")}


def test_grpo_refuses_a_rubric_whose_answer_format_is_not_the_start_models(tmp_path, caplog):
    from grpo.driver import check_answer_format
    from sqrl.prompts import Rubric

    init = tmp_path / "calibrated"
    init.mkdir()
    check_answer_format(Rubric("configs/rubrics/compact_voice.yaml"), init)  # no config: nothing to compare
    (init / "sqrl_config.yaml").write_text("data: {rubric: configs/rubrics/compact_artifacts_first.yaml}\n")
    check_answer_format(Rubric("configs/rubrics/compact_artifacts_first.yaml"), init)
    with pytest.raises(ValueError, match=r"voice_line=True.*voice_line=False.*set data.rubric="
                                         r"configs/rubrics/compact_artifacts_first.yaml"):
        check_answer_format(Rubric("configs/rubrics/compact_voice.yaml"), init)
    with pytest.raises(ValueError, match="answer_order=scores_first"):
        check_answer_format(Rubric("configs/rubrics/compact.yaml"), init)
    # the same format under another file (the full rubric and the compact one) is fine
    (init / "sqrl_config.yaml").write_text("data: {rubric: null}\n")
    check_answer_format(Rubric("configs/rubrics/compact.yaml"), init)
    # a start model whose rubric file is gone is not checked, and the log says so
    (init / "sqrl_config.yaml").write_text("data: {rubric: /nowhere/gone.yaml}\n")
    check_answer_format(Rubric("configs/rubrics/compact_voice.yaml"), init)
    assert "is not checked" in caplog.text
