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
    # score lines in the prompt (ignored positions) are not searched: only the answer's two digits count
    prompt = tokenizer("Scores:\n- Speed: 3/5\n- Overall quality: 5/5\n", add_special_tokens=False)["input_ids"]
    with_prompt = torch.tensor([[IGNORE_INDEX] * len(prompt) + ids])
    assert [label for _, _, _, label in ScoreTargets(tokenizer)(with_prompt)] == [4, 2]
    assert ScoreTargets(tokenizer)(torch.full_like(labels, IGNORE_INDEX)) == []


def _reference_terms(logits, labels, scores, soft):
    """Token by token, in float64: -log p(label), or at a score digit sum_k q_k (log q_k - log p(k))."""
    at = {(row, pos): (sib, label) for row, pos, sib, label in scores}
    terms = []
    for row in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[row, t] == IGNORE_INDEX:
                continue
            logp = torch.log_softmax(logits[row, t - 1].double(), -1)
            if soft is not None and (row, t) in at:
                sib, label = at[(row, t)]
                terms.append(sum(q * (math.log(q) - logp[s]) for q, s in zip(soft[label], sib) if q > 0))
            else:
                terms.append(-logp[labels[row, t]])
    return terms


def test_the_loss_and_its_gradient_replace_each_score_digits_term_by_the_soft_one(tokenizer):
    torch.manual_seed(0)
    labels, _ = _labels(tokenizer)
    labels = torch.cat([labels, labels.roll(2, dims=1)])  # a second row, its score digits elsewhere
    labels[1, :2] = IGNORE_INDEX
    logits = torch.randn(2, labels.shape[1], len(tokenizer), requires_grad=True)
    scores = ScoreTargets(tokenizer)(labels)
    assert len(scores) == 4
    n_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())

    plain, stats = ordinal_loss(logits, labels, scores, sigma=0.0)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum")
    assert plain.item() == pytest.approx(reference.item(), rel=1e-6)  # sigma 0 is the plain causal-LM loss
    assert int(stats["tokens"]) == n_tokens and int(stats["score_tokens"]) == 4
    assert 0 <= int(stats["correct"]) <= n_tokens and float(stats["entropy"]) > 0

    soft, _ = ordinal_loss(logits, labels, scores, sigma=0.5)
    soft.backward()
    twin = logits.detach().clone().requires_grad_(True)
    terms = _reference_terms(twin, labels, scores, SOFT)
    expected = sum(terms)
    expected.backward()
    assert soft.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(logits.grad, twin.grad.float(), rtol=1e-4, atol=1e-6)  # the soft term trains
    score_rows = {(r, p - 1) for r, p, _, _ in scores}
    assert all(twin.grad[r, c].abs().sum() > 0 for r, c in score_rows)

    # a model sure of the label pays for it under the soft target and not under the one-hot one
    sure = torch.full_like(logits, -20.0)
    for row in range(2):
        for t in range(1, labels.shape[1]):
            if labels[row, t] != IGNORE_INDEX:
                sure[row, t - 1, labels[row, t]] = 20.0
    assert ordinal_loss(sure, labels, scores, 0.0)[0].item() < 1e-4
    assert int(ordinal_loss(sure, labels, scores, 0.0)[1]["correct"]) == n_tokens
    # each score digit: KL(q || p) with log p = -40 off the label, 0 on it
    kl = {y: sum(q * (math.log(q) - (0.0 if k == y - 1 else -40.0)) for k, q in enumerate(SOFT[y]) if q > 0) for y in (2, 4)}
    assert ordinal_loss(sure, labels, scores, 0.5)[0].item() == pytest.approx(2 * kl[2] + 2 * kl[4], rel=1e-4)


def test_a_calibration_with_score_targets_trains_and_logs_them(tiny_manifest, tmp_path):
    cfg = load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{
        "train.max_steps": 8, "train.logging_steps": 2, "train.save_steps": 8, "train.score_sigma": 0.5}))
    run_sft(cfg, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    # all_dimensions prompting: 7 scores per answer, every one found in every example of a step
    assert all(r["score_tokens"] == 7 * cfg.train.batch_size and math.isfinite(r["loss"]) and r["num_tokens"] > 0 for r in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="score_sigma"):
        load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{"train.score_sigma": -1}))


def test_the_ordinal_loss_projects_only_the_answer_span_and_matches_full_logits(tiny_manifest):
    """The score-target trainer sends only the positions from the one before the batch's first answer token
    through the LM head (sqrl.logprobs.last_logits); the loss and every gradient are those of full logits."""
    from torch.utils.flop_counter import FlopCounterMode

    from sft.data import AudioCollator, build_examples, load_records
    from sqrl.logprobs import last_logits
    from sqrl.prompts import Rubric

    torch.manual_seed(0)
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    base, processor = backbone.load()
    model = backbone.apply_lora(base, rank=8)
    model.eval()  # no dropout: the two passes must see the same network
    examples = build_examples(load_records(tiny_manifest)[:3], Rubric("configs/rubrics/compact.yaml"), "all_dimensions")
    batch = AudioCollator(backbone.name, processor, 5.0, {"window_s": 5})(examples)
    labels = batch.pop("labels")
    targets = ScoreTargets(processor.tokenizer)

    def run(narrow):
        model.zero_grad()
        with FlopCounterMode(display=False) as counter:
            if narrow:
                start = int((labels != IGNORE_INDEX).any(dim=0).nonzero()[0]) - 1
                logits, lab = last_logits(model, batch, labels.shape[1] - start), labels[:, start:]
            else:
                logits, lab = model(**batch).logits, labels
            loss, stats = ordinal_loss(logits, lab, targets(lab), sigma=0.5)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss, stats, grads, counter.get_total_flops(), logits.shape[1]

    full, full_stats, full_grads, full_flops, width = run(False)
    narrow, narrow_stats, narrow_grads, narrow_flops, kept = run(True)
    assert kept < width / 2  # the audio frames and the prompt stay out of the head
    assert int(narrow_stats["score_tokens"]) == int(full_stats["score_tokens"]) == 7 * len(examples)
    torch.testing.assert_close(narrow, full, rtol=1e-5, atol=1e-6)
    for key in ("tokens", "correct"):
        assert int(narrow_stats[key]) == int(full_stats[key])
    assert full_grads.keys() == narrow_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(narrow_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert narrow_flops < full_flops
