"""Ordinal score targets for calibration (``train.score_sigma``): a score one point off costs less than four off.

Plain SFT (the paper's) trains each score digit with a one-hot target: writing 4 where the label is 3 costs as
much as writing 1. With ``score_sigma > 0`` the target at every score digit of an answer is a discretised
Gaussian over the digits 1..5 centred on the label,

    q_k = exp(-(k - y)^2 / (2 sigma^2)) / sum_j exp(-(j - y)^2 / (2 sigma^2)),   k = 1..5,

and the token's loss is the cross-entropy against it, ``-sum_k q_k log p(k)``, less the target's entropy (so
its floor is 0, as a one-hot token's; the gradient is the cross-entropy's). Every other token keeps its one-hot
target, and the loss is normalised as TRL's plain one. As sigma -> 0 the target becomes one-hot again; at
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

from sqrl.backbones import IGNORE_INDEX
from sqrl.logprobs import last_logits
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
            positions = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
            ids = labels[row, positions].tolist()
            for k in sorted(score_positions(self.tokenizer, ids).values()):
                found = siblings(self.templates, self.tokenizer.convert_ids_to_tokens(ids[k]))
                if found is not None and positions[k] >= 1:  # the first label has no logit before it
                    out.append((row, positions[k], found[0], found[1]))
        return out


def ordinal_loss(logits: torch.Tensor, labels: torch.Tensor, scores: list[tuple[int, int, list[int], int]],
                 sigma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The summed causal-LM loss over the answer tokens, with soft targets at the score digits.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; ``scores`` are positions in ``labels`` (``ScoreTargets``).
    A score digit's term is ``KL(q || p) = sum_k q_k (log q_k - log p_k)``: the cross-entropy against ``q``
    less the target's own entropy, so its floor is 0 as for the other tokens and the logged loss stays
    comparable with plain SFT (the gradients are those of the cross-entropy). Only the answer positions'
    logits are taken to fp32. Returns ``(loss summed over answer tokens, {"tokens", "correct",
    "entropy", "score_tokens"})``; the caller divides by the token count it normalises with.
    """
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    where = mask.nonzero().tolist()  # (row, column) of each answer token, in the order of ``sel``
    sel = logits[:, :-1][mask].float()  # (answer tokens, vocab)
    target_ids = shift_labels[mask]
    logp = torch.log_softmax(sel, dim=-1)
    per_token = -logp.gather(1, target_ids[:, None]).squeeze(1)
    if scores:
        row_of = {(r, c): i for i, (r, c) in enumerate(where)}
        idx = torch.tensor([row_of[(r, p - 1)] for r, p, _, _ in scores], device=sel.device)
        sib = torch.tensor([s for _, _, s, _ in scores], device=sel.device)  # (n, 5)
        q = torch.tensor([gaussian_targets(y, sigma) for _, _, _, y in scores], device=sel.device)
        log_q = torch.where(q > 0, q.clamp(min=1e-30).log(), torch.zeros_like(q))
        soft = (q * (log_q - logp[idx].gather(1, sib))).sum(-1)
        per_token = per_token.index_put((idx,), soft)  # each score digit's one-hot term becomes the soft one
    with torch.no_grad():
        stats = {
            "tokens": mask.sum(),
            "correct": (sel.argmax(-1) == target_ids).sum(),
            "entropy": -(logp.exp() * logp).sum(-1).sum(),
            "score_tokens": torch.tensor(len(scores), device=sel.device),
        }
    return per_token.sum(), stats


def with_score_targets(trainer_cls, tokenizer: Any, sigma: float):
    """``trainer_cls`` whose loss uses soft ordinal targets at the score digits (``ordinal_loss``).

    One forward pass with the logits of the answer span (the fused head that TRL trains with gives only the
    label's log-probability; the five digits' are needed): the LM head projects the positions from the one
    before the batch's first answer token on, not the audio frames and the prompt. The loss is normalised exactly as TRL's plain one (by
    ``num_items_in_batch`` when the Trainer gives it, else by this micro-batch's answer tokens, and scaled by
    the number of processes as TRL does), so ``score_sigma`` near 0 trains as plain SFT; the metrics TRL logs
    (``mean_token_accuracy``, ``entropy``, ``num_tokens``) are computed from the same logits, gathered over
    ranks, with ``score_tokens`` (the score digits found per micro-batch) beside them.
    """
    targets = ScoreTargets(tokenizer)
    if not targets.templates:
        raise ValueError("train.score_sigma: the tokenizer has no single-token spellings of the digits 1-5")

    class ScoreTargetTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            # Only the positions from the one before the batch's first answer token on go through the LM head:
            # the audio frames and the prompt carry no loss (sqrl.logprobs.last_logits).
            answer_cols = (labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
            start = max(int(answer_cols[0]) - 1, 0) if len(answer_cols) else 0
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            logits = last_logits(model, {**model_inputs, "use_cache": False}, labels.shape[1] - start)
            labels = labels[:, start:]
            total, stats = ordinal_loss(logits, labels, targets(labels), sigma)
            denom = stats["tokens"] if num_items_in_batch is None else num_items_in_batch
            loss = total / torch.as_tensor(denom, device=total.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                loss = loss * (self.accelerator.num_processes // tp)  # as TRL: DDP averages the gradients
            gathered = {k: self.accelerator.gather_for_metrics(v).sum() for k, v in stats.items()}
            valid = max(float(gathered["tokens"]), 1.0)
            self._metrics[mode]["mean_token_accuracy"].append(float(gathered["correct"]) / valid)
            self._metrics[mode]["entropy"].append(float(gathered["entropy"]) / valid)
            self._metrics[mode]["score_tokens"].append(float(gathered["score_tokens"]) / self.accelerator.num_processes)
            if mode == "train" and "attention_mask" in inputs and hasattr(self, "_total_train_tokens"):
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, {"logits": logits}) if return_outputs else loss

    ScoreTargetTrainer.__name__ = ScoreTargetTrainer.__qualname__ = f"ScoreTarget{trainer_cls.__name__}"
    return ScoreTargetTrainer
