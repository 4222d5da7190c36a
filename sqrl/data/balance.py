"""Sampling weights that balance a corpus over its reference labels, shared by the SFT and GRPO stages.

On the synthetic corpus (and on most real ones) the labels are skewed: most clips are "no noise", 5/5.
Trained on the natural distribution, an unsure model's most likely answer is the majority score, so
greedy answers collapse onto it. ``data.balance: labels`` draws the clips under ``label_balance_weights``
instead, so rare scores come up about as often as common ones. What it did: docs/grpo.md, "Label-balanced
sampling" (GRPO), and docs/small.md, "Label-balanced calibration" (ends the collapse, costs PCC there).
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

BALANCES = ("none", "labels")


def check_balance(balance: str) -> str:
    if balance not in BALANCES:
        raise ValueError(f"data.balance must be one of {', '.join(BALANCES)}, not {balance!r}")
    return balance


def label_balance_weights(scores: Sequence[Mapping[str, int | None] | None], cap: float = 10.0,
                          rounds: int = 30) -> np.ndarray:
    """Sampling probabilities, one per item of ``scores`` (each a dimension -> label map), that flatten
    every dimension's label distribution at once.

    Raking (iterative proportional fitting): for each dimension in turn, scale the weights of the items
    with each label so the labels share the mass equally; repeat ``rounds`` times. No item may weigh
    more than ``cap`` times the uniform weight, which keeps the effective number of clips large: the
    dimensions are correlated (a noisy clip is also a low-MOS clip), so uncapped raking can put all the
    mass on a handful of clips that happen to be rare in every dimension. The cap trades flatness for
    coverage (measured effect on the synthetic corpus: docs/grpo.md, "Label-balanced sampling"). Items
    without a label for a dimension are left alone in that dimension's round (so a per-dimension SFT
    example, which carries one dimension's label, is balanced within that dimension).
    """
    n = len(scores)
    if n == 0:
        raise ValueError("no items to weigh")
    w = np.full(n, 1.0 / n)
    maps = [s or {} for s in scores]
    dims = sorted({d for s in maps for d, v in s.items() if v is not None})
    labels = {d: np.array([s.get(d) for s in maps], dtype=object) for d in dims}
    for _ in range(rounds):
        for d in dims:
            lab = labels[d]
            present = [v for v in set(lab.tolist()) if v is not None]
            known = lab != None  # noqa: E711 (elementwise on an object array)
            share = w[known].sum() / len(present)
            for v in present:
                m = lab == v
                w[m] *= share / w[m].sum()
            w = _capped(w / w.sum(), cap / n)
    return w


def _capped(w: np.ndarray, limit: float) -> np.ndarray:
    """``w`` (summing to 1) with no entry above ``limit``: the excess goes to the others in proportion."""
    w = w.copy()
    if limit * len(w) <= 1:
        return np.full(len(w), 1.0 / len(w))
    while (w > limit + 1e-15).any():
        over = w >= limit
        w[over] = limit
        free = 1.0 - limit * over.sum()
        w[~over] *= free / w[~over].sum()
    return w


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The item indices of one epoch: a seeded permutation, or ``n`` draws with replacement under
    ``weights``. A pure function of (seed, epoch), so a resumed run draws the same clips."""
    rng = np.random.default_rng([seed, epoch])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights)


class BalancedSampler:
    """A ``torch.utils.data.Sampler`` for HF's Trainer: ``epoch_order`` under ``weights``. The Trainer
    (through accelerate) calls ``set_epoch`` before each epoch, and a resumed run skips the batches it
    has trained, so the order must depend on (seed, epoch) only: it does."""

    def __init__(self, weights: np.ndarray, seed: int):
        self.weights, self.seed, self.epoch = np.asarray(weights, dtype=float), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_order(len(self.weights), self.seed, self.epoch, self.weights).tolist())
