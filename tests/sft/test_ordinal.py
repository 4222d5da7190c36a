"""Ordinal score targets (train.score_sigma): the soft target on hand-worked cases, the score digits found among
the label tokens, the loss against an independent token-by-token formula, and a calibration that trains on it."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from sft.config import SFTStageConfig
from sft.ordinal import ScoreTargets, gaussian_targets, ordinal_loss
from sft.train import run_sft
from sqrl.backbones import IGNORE_INDEX, get_backbone
from sqrl.config import load_config

from .conftest import tiny_overrides
from .test_sft import CONFIG

# sigma 0.5 by hand: exp(-(k - y)^2 / 0.5) over its sum (1.271006 for y = 2 and 4)
SOFT = {2: [0.1064789, 0.7867783, 0.1064789, 0.0002639, 0.0], 4: [0.0, 0.0002639, 0.1064789, 0.7867783, 0.1064789]}
ANSWER = "Scores:\n- Noise: 4/5\n- Distortion: 2/5\nArtifacts:\n- Noise: none"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    import os

    old = os.environ.get("SQRL_CACHE")
    os.environ["SQRL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return get_backbone("tiny-qwen2-audio", window_s=5).load()[1].tokenizer
    finally:
        if old is None:
            os.environ.pop("SQRL_CACHE")
        else:
            os.environ["SQRL_CACHE"] = old


def test_the_soft_target_is_a_discretised_gaussian_around_the_label():
    # sigma 0.5, label 3: weights exp(-(k-3)^2 / 0.5) = e^-8, e^-2, 1, e^-2, e^-8; sum 1.271342
    assert gaussian_targets(3, 0.5) == pytest.approx([0.000264, 0.106451, 0.786571, 0.106451, 0.000264], abs=1e-6)
    # sigma 1, label 1 (an edge): 1, e^-0.5, e^-2, e^-4.5, e^-8 over their sum 1.753311
    assert gaussian_targets(1, 1.0) == pytest.approx([0.570350, 0.345935, 0.077188, 0.006336, 0.000191], abs=1e-6)
    assert gaussian_targets(5, 0.0) == [0, 0, 0, 0, 1.0]


def _labels(tokenizer, prompt_len=5):
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    return torch.tensor([[IGNORE_INDEX] * prompt_len + ids]), ids


def test_the_score_digits_are_found_among_the_label_tokens(tokenizer):
    labels, ids = _labels(tokenizer)
    found = ScoreTargets(tokenizer)(labels)
    assert [(row, label) for row, _, _, label in found] == [(0, 4), (0, 2)]
    for _, pos, sib, label in found:
        assert tokenizer.decode([int(labels[0, pos])]).strip() == str(label)
        assert [tokenizer.decode([s]).strip() for s in sib] == ["1", "2", "3", "4", "5"]
        assert sib[label - 1] == int(labels[0, pos])
    # the "none" of the artifact line and the "/5" are not scores; a prompt (ignored) is never searched
    assert ScoreTargets(tokenizer)(torch.full_like(labels, IGNORE_INDEX)) == []


def test_the_loss_replaces_each_score_digits_term_by_the_soft_one(tokenizer):
    torch.manual_seed(0)
    labels, _ = _labels(tokenizer)
    labels = torch.cat([labels, labels.roll(2, dims=1)])  # a second row, its score digits elsewhere
    labels[1, :2] = IGNORE_INDEX
    logits = torch.randn(2, labels.shape[1], len(tokenizer), requires_grad=True)
    scores = ScoreTargets(tokenizer)(labels)
    assert len(scores) == 4

    plain, metrics = ordinal_loss(logits, labels, scores, sigma=0.0)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX)
    assert plain.detach().item() == pytest.approx(reference.item(), rel=1e-6)  # sigma 0 is the plain causal-LM loss

    soft, _ = ordinal_loss(logits, labels, scores, sigma=0.5)
    # token by token: -log p(label), except at a score digit: -sum_k q_k log p(k) with q from the hand-worked values
    at = {(row, pos): (sib, label) for row, pos, sib, label in scores}
    terms = []
    for row in range(2):
        for t in range(1, labels.shape[1]):
            if labels[row, t] == IGNORE_INDEX:
                continue
            logp = torch.log_softmax(logits[row, t - 1].detach().double(), -1)
            if (row, t) in at:
                sib, label = at[(row, t)]
                q = SOFT[label]
                terms.append(-sum(qk * logp[s] for qk, s in zip(q, sib)))
            else:
                terms.append(-logp[labels[row, t]])
    assert soft.detach().item() == pytest.approx(float(sum(terms) / len(terms)), rel=1e-5)
    assert metrics["score_tokens"] == 4.0 and 0 <= metrics["mean_token_accuracy"] <= 1

    # a model sure of the label pays for it under the soft target and not under the one-hot one
    sure = torch.full_like(logits, -20.0)
    for row in range(2):
        for t in range(1, labels.shape[1]):
            if labels[row, t] != IGNORE_INDEX:
                sure[row, t - 1, labels[row, t]] = 20.0
    assert ordinal_loss(sure, labels, scores, 0.0)[0].item() < 1e-6
    # each score digit pays 40 nats (log p = -40 off the label) for the target's mass off its label, 0.2132217
    n_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert ordinal_loss(sure, labels, scores, 0.5)[0].item() == pytest.approx(4 * 0.2132217 * 40 / n_tokens, rel=1e-4)
    assert ordinal_loss(sure, labels, scores, 0.0)[1]["mean_token_accuracy"] == 1.0


def test_a_calibration_with_score_targets_trains_and_logs_them(tiny_manifest, tmp_path):
    cfg = load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{
        "train.max_steps": 8, "train.logging_steps": 2, "train.save_steps": 8, "train.score_sigma": 0.5}))
    run_sft(cfg, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert all(r["score_tokens"] > 0 and math.isfinite(r["loss"]) for r in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="score_sigma"):
        load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{"train.score_sigma": -1}))
