"""Length-grouped batches in a random order (sqrl/data/length_groups.py, ``train.group_by_length``)."""
import numpy as np
import pytest
from scipy.stats import spearmanr

from sqrl.data.length_groups import LengthGroupedSampler, length_grouped_order, padding_fraction


def _batches(order, batch_size):
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _sweep(order, lengths, batch_size, mega_batch=50):
    """Spearman correlation of a batch's position within its run of ``mega_batch`` steps with its mean length
    (-1: every run goes longest to shortest, HF's order; ~0: no trend)."""
    means = [lengths[b].mean() for b in _batches(order, batch_size) if len(b) == batch_size]
    return spearmanr([i % mega_batch for i in range(len(means))], means).statistic


def test_groups_are_alike_in_length_and_every_example_comes_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 300, size=1702)
    order = length_grouped_order(lengths, batch_size=4, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(1702))
    batches = _batches(order, 4)
    assert [len(b) for b in batches[:-1]] == [4] * 425 and len(batches[-1]) == 2  # the short batch stays last
    grouped = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.mean([np.ptp(lengths[b]) for b in _batches(rng.permutation(1702), 4)])
    assert grouped < shuffled / 10  # within-batch spread: ~5 tokens against ~130 at random


def test_batches_come_in_random_order_not_a_sweep():
    """HF's sampler trains each mega-batch longest first; where length tells the label that is a 50-step
    curriculum (docs/small.md). Ours has no trend across steps."""
    from transformers.trainer_pt_utils import get_length_grouped_indices
    import torch

    lengths = np.random.default_rng(1).integers(40, 300, size=2000)
    ours = length_grouped_order(lengths, batch_size=4, seed=3, epoch=0)
    hf = np.array(get_length_grouped_indices(lengths.tolist(), 4, generator=torch.Generator().manual_seed(3)))
    assert _sweep(hf, lengths, 4) < -0.9
    assert abs(_sweep(ours, lengths, 4)) < 0.1


def test_order_is_a_function_of_seed_and_epoch():
    lengths = np.arange(100)
    a = length_grouped_order(lengths, 4, seed=0, epoch=0)
    assert np.array_equal(a, length_grouped_order(lengths, 4, seed=0, epoch=0))
    assert not np.array_equal(a, length_grouped_order(lengths, 4, seed=0, epoch=1))
    assert not np.array_equal(a, length_grouped_order(lengths, 4, seed=1, epoch=0))
    sampler = LengthGroupedSampler(lengths, 4, seed=0)
    assert len(sampler) == 100 and list(sampler) == a.tolist()
    sampler.set_epoch(1)
    assert list(sampler) == length_grouped_order(lengths, 4, seed=0, epoch=1).tolist()


def test_edge_cases():
    assert length_grouped_order([], 4, 0, 0).size == 0
    assert length_grouped_order([7, 3, 5], 4, 0, 0).tolist() in ([0, 2, 1],)  # one short batch, longest first
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_order([1, 2], 0, 0, 0)


def test_padding_fraction_by_hand():
    # batches (10, 6), (3, 3), (1): padded to 20 + 6 + 1 = 27 positions, of which 16 + 6 + 1 = 23 real
    assert padding_fraction([10, 6, 3, 3, 1], [0, 1, 2, 3, 4], batch_size=2) == pytest.approx(1 - 23 / 27)
    assert padding_fraction([5, 5], [0, 1], 2) == 0.0 and padding_fraction([], [], 4) == 0.0
