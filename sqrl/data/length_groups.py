"""Batches of similar length in a random order (``train.group_by_length``).

Padding costs as much as real tokens on a CPU: a random batch of 4 small-model calibration examples is ~15%
padding, a batch of examples of similar length 0.7%. HF's own length-grouped sampler (``transformers.trainer_pt_utils.
get_length_grouped_indices``) shuffles, cuts the order into mega-batches of 50 batches and sorts each one by
length, longest first, and trains the batches **in that order**: every 50 steps the model sweeps from the
longest examples down to the shortest. Where length tells the label, that is a curriculum nobody asked for.
On the synthetic corpus it does: a clip with many artifact lines in its answer is a noisy one, a short clip a
fast one. The small calibration trained that way (600 steps, 2026-12-04) had a training loss that fell from
0.43 to 0.04 within every 50 steps and jumped back at the next mega-batch, and it forgot the audio: its
held-out mean PCC was 0.03 greedy, 0.18 expected, against 0.62 / 0.72 for the same run in random order
(docs/small.md, "Length grouping: HF's order breaks calibration").

``length_grouped_order`` groups the same way (shuffle, mega-batches, sort within) and then shuffles the
**batches**, so consecutive steps are as unrelated as in a random order; only the members of one batch are
alike in length. A pure function of (seed, epoch), like ``sqrl.data.balance.epoch_order``, so a resumed run
skips exactly the batches it trained.

Even so, on that corpus the members of a batch share their labels more than at random (std of the overall label
within a batch 0.75 against 1.06), and the small calibration with this order (600 steps, one run) reached a
held-out mean PCC of 0.43 greedy / 0.63 expected against 0.62 / 0.72 for the best random-order run (one seed
each, the latter with older code): the small config does not group. Use it where length does not tell the
label, and check.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

MEGA_BATCH = 50  # batches per mega-batch, as in HF's sampler


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                         mega_batch: int = MEGA_BATCH) -> np.ndarray:
    """One epoch's example indices: each consecutive ``batch_size`` of them alike in length, the batches in
    a random order. Only the last batch may be short (when ``batch_size`` does not divide the count), and it
    stays last, so every other slice of ``batch_size`` lines up with one group."""
    if batch_size < 1 or mega_batch < 1:
        raise ValueError(f"batch_size and mega_batch must be at least 1, not {batch_size}, {mega_batch}")
    lengths = np.asarray(lengths)
    n = len(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    span = batch_size * mega_batch
    batches = []
    for start in range(0, n, span):
        chunk = perm[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []  # only the last mega-batch can end short
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))] + tail)


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """The share of a batch's padded positions that are padding, over the batches of ``order`` (each padded
    to its longest member)."""
    lengths = np.asarray(lengths)
    batches = [lengths[np.asarray(order[i:i + batch_size])] for i in range(0, len(order), batch_size)]
    padded = sum(int(b.max()) * len(b) for b in batches if len(b))
    return 1.0 - float(sum(int(b.sum()) for b in batches)) / padded if padded else 0.0


class LengthGroupedSampler:
    """A ``torch.utils.data.Sampler`` for HF's Trainer: ``length_grouped_order``. The Trainer (through
    accelerate) calls ``set_epoch`` before each epoch; with several data-parallel ranks accelerate deals out
    whole batches of ``batch_size`` (the per-device micro-batch), so each rank's batch is one group."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, mega_batch: int = MEGA_BATCH):
        self.lengths, self.batch_size, self.seed = list(lengths), int(batch_size), int(seed)
        self.mega_batch, self.epoch = int(mega_batch), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        order = length_grouped_order(self.lengths, self.batch_size, self.seed, self.epoch, self.mega_batch)
        return iter(order.tolist())
