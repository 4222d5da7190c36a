"""Ordinal score targets for calibration (``train.score_sigma``): a score one point off costs less than four off.

Plain SFT (the paper's) trains each score digit with a one-hot target: writing 4 where the label is 3 costs as
much as writing 1. With ``score_sigma > 0`` the target at every score digit of an answer is a discretised
Gaussian over the digits 1..5 centred on the label,

    q_k = exp(-(k - y)^2 / (2 sigma^2)) / sum_j exp(-(j - y)^2 / (2 sigma^2)),   k = 1..5,

and the token's loss is the cross-entropy against it, ``-sum_k q_k log p(k)``. Every other token keeps its
one-hot target. The loss is the mean over a micro-batch's answer tokens (the Trainer divides it by
``grad_accum``; the plain loss weighs micro-batches by their token counts instead, the same at grad_accum 1). As sigma -> 0 the target becomes one-hot again; at
sigma 0.5 the label keeps 0.79 and each neighbour gets 0.11. Soft, distribution-shaped score targets are how
DeQA-Score and Q-Align-style quality LLMs train for rank correlation; the expected score
(``sqrl eval``) reads the same five probabilities back.

The score digits are found in the label tokens themselves (``sqrl.scoretokens.score_positions``), so no
collator change is needed and any prompting or answer format that ``sqrl.response.score_spans`` reads works.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from sqrl.scoretokens import digit_templates, score_positions, siblings


def gaussian_targets(label: int, sigma: float) -> list[float]:
    """The soft target over the digits 1..5 for a score ``label`` (one-hot when ``sigma`` is 0)."""
    if sigma <= 0:
        return [1.0 if k == label else 0.0 for k in range(1, 6)]
    w = [math.exp(-((k - label) ** 2) / (2 * sigma**2)) for k in range(1, 6)]
    return [x / sum(w) for x in w]


class ScoreTargets:
    """Finds the score digits among a batch's label tokens: ``(row, position, sibling ids, label)`` each."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.templates = digit_templates(tokenizer)

    def __call__(self, labels: torch.Tensor) -> list[tuple[int, int, list[int], int]]:
        out = []
        for row in range(labels.shape[0]):
            positions = (labels[row] != -100).nonzero().flatten().tolist()
            ids = labels[row, positions].tolist()
            for k in sorted(score_positions(self.tokenizer, ids).values()):
                found = siblings(self.templates, self.tokenizer.convert_ids_to_tokens(ids[k]))
                if found is not None:
                    out.append((row, positions[k], found[0], found[1]))
        return out


def ordinal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: list[tuple[int, int, list[int], int]],
                 sigma: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The causal-LM loss with soft targets at the score digits, and the token accuracy.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``scores`` are positions in ``labels`` (``ScoreTargets``).
    Returns ``(loss, {"mean_token_accuracy", "score_tokens"})``.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                            ignore_index=-100, reduction="sum")
    if scores:
        rows = torch.tensor([r for r, _, _, _ in scores], device=logits.device)
        cols = torch.tensor([p - 1 for _, p, _, _ in scores], device=logits.device)
        logp = torch.log_softmax(shift_logits[rows, cols], dim=-1)  # (n, vocab)
        sib = torch.tensor([s for _, _, s, _ in scores], device=logits.device)  # (n, 5)
        target = torch.tensor([gaussian_targets(y, sigma) for _, _, _, y in scores], device=logits.device)
        own = torch.tensor([s[y - 1] for _, _, s, y in scores], device=logits.device)
        hard = -logp.gather(1, own[:, None]).squeeze(1)
        soft = -(target * logp.gather(1, sib)).sum(-1)
        total = total + (soft - hard).sum()  # each score digit's one-hot term becomes the soft one
    count = mask.sum()
    loss = total / count.clamp(min=1)
    with torch.no_grad():
        correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum()
        accuracy = float(correct) / max(int(count), 1)
    return loss, {"mean_token_accuracy": accuracy, "score_tokens": float(len(scores))}


def with_score_targets(trainer_cls, tokenizer: Any, sigma: float):
    """``trainer_cls`` whose loss uses soft ordinal targets at the score digits (``ordinal_loss``).

    One forward pass with full logits (no fused head: the five digit probabilities are needed); the
    token accuracy that TRL logs is computed from the same logits.
    """
    targets = ScoreTargets(tokenizer)
    if not targets.templates:
        raise ValueError("train.score_sigma: the tokenizer has no single-token spellings of the digits 1-5")

    class ScoreTargetTrainer(trainer_cls):
        loss_is_scaled_for_ga = False  # a mean over this micro-batch's answer tokens; the Trainer divides by grad_accum

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            loss, metrics = ordinal_loss(outputs.logits, labels, targets(labels), sigma)
            for key, value in metrics.items():
                self._metrics[mode][key].append(value)
            return (loss, outputs) if return_outputs else loss

    ScoreTargetTrainer.__name__ = ScoreTargetTrainer.__qualname__ = f"ScoreTarget{trainer_cls.__name__}"
    return ScoreTargetTrainer
