"""sqrl.data.labels: the score rules on hand-worked values, and the parameter tables agree with them."""
import numpy as np
import pytest

from sqrl.data import labels as L
from sqrl.dimensions import DIMENSIONS


def test_round_half_up_rounds_halves_up_unlike_python_round():
    assert [L.round_half_up(v) for v in (0.5, 1.5, 2.5, 2.4999, 0.3 * 3 + 0.1 * 6)] == [1, 2, 3, 2, 2]


@pytest.mark.parametrize("tempo,score", [(0.5, 1), (0.63, 2), (0.85, 2), (1.0, 3), (1.2, 4), (1.64, 4), (1.65, 5),
                                         (2.1, 5)])
def test_speed_score_follows_the_tempo_thresholds(tempo, score):
    assert L.speed_score(tempo) == score


@pytest.mark.parametrize("snr,score", [(None, 5), (40.0, 4), (20.0, 4), (19.99, 3), (11.0, 3), (4.0, 2), (3.9, 1),
                                       (-5, 1)])
def test_noise_score_follows_the_snr_thresholds(snr, score):
    assert L.noise_score(snr) == score


@pytest.mark.parametrize("gaps,score", [([], 5), ([0.25], 4), ([0.4], 3), ([0.6], 3), ([0.2, 0.2], 2), ([0.1] * 3, 1)])
def test_continuity_score_counts_and_measures_gaps(gaps, score):
    assert L.continuity_score(gaps) == score


def test_listening_effort_and_overall_on_hand_worked_examples():
    # noise 2 (deficit 3 x 1.0 = 3), distortion 4 (0.85), others clean, speed normal:
    # effort = 5 - round(3 + 0.3 * 0.85) = 5 - 3 = 2.
    s = L.derive_scores(speed=3, naturalness=5, noise=2, distortion=4, continuity=5)
    assert s["listening_effort"] == 2
    # overall deficits sorted: noise 3, effort 3, distortion 1, 0, 0 -> 0.5*3 + 0.3*3 + 0.2*1 = 2.6 -> 3 -> 2.
    assert s["overall"] == 2
    assert list(s) == list(DIMENSIONS)
    clean = L.derive_scores(speed=3, naturalness=5, noise=5, distortion=5, continuity=5)
    assert clean["listening_effort"] == 5 and clean["overall"] == 5
    # A very fast but clean clip costs a point of effort (speed deficit 1), and so of overall 0.5 -> 1.
    fast = L.derive_scores(speed=5, naturalness=5, noise=5, distortion=5, continuity=5)
    assert (fast["listening_effort"], fast["overall"]) == (4, 4)
    # Naturalness 1 alone: effort deficit 0.4 * 4 = 1.6 -> 2 -> effort 3; overall 0.5*4 + 0.3*2 = 2.6 -> 3 -> 2.
    robot = L.derive_scores(speed=3, naturalness=1, noise=5, distortion=5, continuity=5)
    assert (robot["listening_effort"], robot["overall"]) == (3, 2)


def test_derived_scores_never_improve_when_a_dimension_gets_worse():
    rng = np.random.default_rng(0)
    for _ in range(300):
        base = {d: int(rng.integers(1, 6)) for d in ("speed", "naturalness", "noise", "distortion", "continuity")}
        dim = ["naturalness", "noise", "distortion", "continuity"][int(rng.integers(4))]
        worse = dict(base, **{dim: max(1, base[dim] - 1)})
        a, b = L.derive_scores(**base), L.derive_scores(**worse)
        assert b["listening_effort"] <= a["listening_effort"] and b["overall"] <= a["overall"]


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_sampled_speed_tempos_map_back_to_their_level(level):
    lo, hi = L.SPEED_TEMPO[level]
    assert L.speed_score(lo) == level and L.speed_score(hi) == level


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_sampled_snr_bands_map_back_to_their_level_with_a_margin(level):
    lo, hi = L.NOISE_SNR[level]
    assert L.noise_score(lo) == level and L.noise_score(hi) == level
    # Bands stay at least 1 dB inside the thresholds, so a 1 dB measurement error keeps the label.
    assert L.noise_score(lo - 1) == level and L.noise_score(hi + 1) == level


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_gap_table_maps_back_to_its_continuity_level(level):
    count, (lo, hi) = L.CONTINUITY_GAPS[level]
    assert L.continuity_score([lo] * count) == level and L.continuity_score([hi] * count) == level


def test_family_levels_are_a_random_subset_with_every_level_drawn():
    rng = np.random.default_rng(0)
    draws = [L.sample_levels(rng) for _ in range(2000)]
    for fam in L.QUALITY_FAMILIES:
        assert {d[fam] for d in draws} == {1, 2, 3, 4, 5}
    untouched = sum(all(v == 5 for v in d.values()) for d in draws) / len(draws)
    assert untouched == pytest.approx(L.FAMILY_COUNT_P[0], abs=0.03)


def test_wording_varies_and_names_every_artifact_time():
    rng = np.random.default_rng(0)
    texts = {L.artifact_text("noise", "hum", 2, {"hum_hz": 50.0}, rng) for _ in range(40)}
    assert len(texts) > 4 and all(t[0].isupper() for t in texts)
    scores = L.derive_scores(speed=3, naturalness=2, noise=3, distortion=5, continuity=2)
    desc = L.long_description(scores, "warble", {"noise": [("Faint hiss", 0.0, 3.0)],
                                                 "pause": [("Gap", 1.0, 1.5), ("Gap", 2.0, 2.4)]}, 3.0, rng)
    assert "two unnatural breaks" in desc and "1.0" in desc and "2.4" in desc
    assert "faint hiss" in desc and "\n" not in desc
    assert L.OVERALL_TEXT[scores["overall"]] in desc


def test_rules_markdown_states_the_thresholds_in_force():
    assert f"SNR >= {L.NOISE_THRESHOLDS[0]}" in L.RULES_MARKDOWN
    assert "| 1 |" in L.RULES_MARKDOWN and "listening_effort" in L.RULES_MARKDOWN
