"""Label-balanced sampling (sqrl.data.balance), shared by the SFT and GRPO stages."""
import numpy as np
import pytest

from sqrl.data.balance import BalancedSampler, epoch_order, label_balance_weights
from sqrl.schema import Record


def test_label_balance_weights_equalise_a_single_dimension_exactly():
    # 6 clips with noise 5, 2 with noise 2, 1 with noise 1: inverse frequency gives each label 1/3
    labels = [5] * 6 + [2] * 2 + [1]
    w = label_balance_weights([{"noise": v} for v in labels], cap=100)
    mass = {v: sum(wi for wi, lv in zip(w, labels) if lv == v) for v in (1, 2, 5)}
    assert mass == pytest.approx({1: 1 / 3, 2: 1 / 3, 5: 1 / 3})
    assert w.sum() == pytest.approx(1.0)
    # the cap bounds any clip's weight: here at 2x uniform the lone noise-1 clip cannot reach 1/3
    capped = label_balance_weights([{"noise": v} for v in labels], cap=2)
    assert capped.max() <= 2 / 9 + 1e-12 and capped[-1] == pytest.approx(capped.max())


def test_label_balance_flattens_correlated_dimensions_and_ignores_missing_labels():
    rng = np.random.default_rng(0)
    records = []
    for i in range(400):
        clean = rng.random() < 0.7  # 70% of clips are clean on both dimensions (correlated)
        noise = 5 if clean else int(rng.integers(1, 5))
        records.append(Record(id=f"c{i}", audio="a.wav",
                              scores={"noise": noise, "overall": min(5, noise + int(rng.integers(0, 2))),
                                      "speed": None}))
    w = label_balance_weights([r.scores for r in records])
    top = max(sum(wi for wi, r in zip(w, records) if r.scores["noise"] == v) for v in range(1, 6))
    assert top < 0.45  # the clean majority falls from ~70% of draws
    assert 1 / (w ** 2).sum() > 100  # and many clips stay in play (effective number of clips)


def test_the_balanced_sampler_draws_rare_labels_often_and_its_order_is_a_function_of_seed_and_epoch():
    labels = [5] * 18 + [1] * 2
    w = label_balance_weights([{"noise": v} for v in labels])
    sampler = BalancedSampler(w, seed=7)
    assert len(sampler) == 20
    first = list(sampler)
    assert first == list(sampler)  # the same epoch draws the same clips (a resumed run skips exactly them)
    assert first == epoch_order(20, 7, 0, w).tolist()
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and second == epoch_order(20, 7, 1, w).tolist()
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        draws += [labels[i] for i in sampler]
    assert 0.35 < draws.count(1) / len(draws) < 0.65  # 10% of the corpus, about half of the draws
    # without weights an epoch is a permutation: every clip once
    assert sorted(epoch_order(20, 7, 3)) == list(range(20))


def test_an_empty_corpus_and_an_unknown_balance_are_refused():
    from sqrl.data.balance import check_balance
    from sqrl.data.config import DataConfig

    with pytest.raises(ValueError, match="no items"):
        label_balance_weights([])
    with pytest.raises(ValueError, match="data.balance must be one of none, labels"):
        check_balance("classes")
    with pytest.raises(ValueError, match="data.balance"):
        DataConfig(balance="inverse")
