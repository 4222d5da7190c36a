"""Signal rewards: claims checked against synthetic waveforms whose artifacts we placed ourselves."""
import numpy as np
import pytest
import soundfile as sf

from rewards.base import RewardSet
from rewards.signal import Signal, energy_gaps, flat_regions, frame_db, noisy_probability, to_mono
from sqrl.schema import Artifact, Assessment, Record

SR = 16000


def speechlike(seconds=2.0, seed=0, gaps=False):
    """A gliding harmonic voice with a 3 Hz syllable envelope (``gaps``: silent between syllables), peak 0.5,
    over a -70 dB floor like a 16-bit recording's."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 60))
    s = np.sin(2 * np.pi * 3 * t)
    x = x * (np.clip(s, 0, None) ** 2 if gaps else 0.2 + s ** 2)
    return 0.5 * x / np.abs(x).max() + 10 ** (-70 / 20) * rng.standard_normal(len(t))


def with_noise(x, snr_db, seed=1):
    n = np.random.default_rng(seed).standard_normal(len(x))
    return x + n * np.sqrt(np.mean(x ** 2) / np.mean(n ** 2) / 10 ** (snr_db / 10))


def claims(*artifacts):
    return Assessment(artifacts=[Artifact(k, s, e, "x") for k, s, e in artifacts])


def run(reward, preds, wave):
    return reward(["..."] * len(preds), [None] * len(preds), parsed=preds, audio=[wave] * len(preds),
                  sampling_rate=SR)


def test_clipped_interval_is_found_and_the_claim_covering_it_is_rewarded():
    x = speechlike()
    x[SR // 2: SR] = np.clip(x[SR // 2: SR], -0.06, 0.06)  # hard clip 0.5-1.0 s, below the quietest peak
    regions = flat_regions(x, SR, 1e-3)
    assert regions[0][0] == pytest.approx(0.5, abs=0.02) and regions[-1][1] == pytest.approx(1.0, abs=0.02)
    out = run(Signal(dimensions=["distortion"]),
              [claims(("distortion", 0.5, 1.0)), claims(("distortion", 0.5, 0.75)), claims()], x)
    assert out.components["distortion"][0] == pytest.approx(1.0, abs=0.02)
    assert out.components["distortion"][1] == pytest.approx(0.5, abs=0.05)
    assert out.components["distortion"][2] == 0.0


def test_distortion_claims_are_not_judged_when_the_waveform_shows_no_flat_runs():
    out = run(Signal(dimensions=["distortion"]), [claims(("distortion", 0, 1)), claims()], speechlike())
    assert out.components["distortion"] == [None, None] and out.values == [None, None]


def test_an_inserted_pause_is_found_and_claims_are_scored_by_iou():
    x = speechlike()
    y = np.concatenate([x[: SR // 2], np.zeros(int(0.8 * SR)), x[SR // 2:]])  # 0.5-1.3 s silent
    gaps = energy_gaps(frame_db(y, SR), 0.5)
    assert len(gaps) == 1 and gaps[0] == pytest.approx((0.5, 1.3), abs=0.03)
    out = run(Signal(dimensions=["continuity"]),
              [claims(("unnatural_pause", 0.5, 1.3)), claims(("unnatural_pause", 0.9, 1.3)), claims()], y)
    p = out.components["unnatural_pause"]
    assert p[0] == pytest.approx(1.0, abs=0.04) and p[1] == pytest.approx(0.5, abs=0.04) and p[2] == 0.0


def test_no_pause_claimed_on_continuous_speech_scores_one_and_a_claimed_pause_zero():
    out = run(Signal(dimensions=["unnatural_pause"]), [claims(), claims(("unnatural_pause", 0.2, 0.9))],
              speechlike())
    assert out.components["unnatural_pause"] == [1.0, 0.0]


def test_pauses_are_not_judged_under_noise_too_loud_to_see_them():
    assert energy_gaps(frame_db(np.random.default_rng(0).standard_normal(2 * SR), SR), 0.5) is None


def test_noise_claims_agree_with_the_measured_noise_floor():
    clean, noisy = speechlike(gaps=True), with_noise(speechlike(gaps=True), 10)
    assert noisy_probability(clean, SR, 28.0) < 0.01
    assert noisy_probability(noisy, SR, 28.0) > 0.99
    reward = Signal(dimensions=["noise"])
    says_noise, says_clean = claims(("noise", 0, 2)), claims()
    assert run(reward, [says_noise, says_clean], noisy).values == [pytest.approx(1.0, abs=0.01),
                                                                   pytest.approx(0.0, abs=0.01)]
    assert run(reward, [says_noise, says_clean], clean).values == [pytest.approx(0.0, abs=0.01),
                                                                   pytest.approx(1.0, abs=0.01)]


def test_without_an_audio_column_every_value_is_none():
    out = Signal()(["x", "y"], [None, None], parsed=[Assessment(), Assessment()])
    assert out.values == [None, None]


def test_unusable_audio_gives_none_for_that_clip_only():
    good, nan = speechlike(), np.full(SR, np.nan)
    out = Signal()(["a", "b", "c"], [None] * 3, parsed=[Assessment()] * 3, audio=[good, nan, np.zeros(0)],
                   sampling_rate=SR)
    assert out.values[0] is not None and out.values[1:] == [None, None]


def test_an_array_without_a_sampling_rate_is_a_clear_error():
    with pytest.raises(ValueError, match="sampling_rate"):
        Signal()(["a"], [None], parsed=[Assessment()], audio=[speechlike()])


def test_integer_stereo_and_file_paths_are_read_on_the_same_scale(tmp_path):
    x = speechlike()
    pcm = (np.stack([x, x], axis=1) * 32767).astype(np.int16)
    assert np.allclose(to_mono(pcm), x, atol=1e-4)
    path = tmp_path / "clip.wav"
    sf.write(path, x, SR, subtype="PCM_16")
    pred = [claims(("noise", 0, 2))]
    a = Signal()(["a"], [None], parsed=pred, audio=[str(path)]).values
    b = Signal()(["a"], [None], parsed=pred, audio=[pcm], sampling_rate=[SR]).values
    assert a == pytest.approx(b, abs=1e-3)


def test_signal_scores_a_group_through_a_reward_set_with_the_audio_column():
    x = speechlike()
    x[SR // 2: SR] = np.clip(x[SR // 2: SR], -0.06, 0.06)
    refs = [Record(audio="c.wav", id="c")] * 2
    rs = RewardSet.from_config([{"name": "signal", "dimensions": ["distortion"]}])
    b = rs.score(["Distortion [0.50-1.00 s]: clipping", "Distortion: none"], refs, audio=[x, x], sampling_rate=SR)
    assert b.total == [pytest.approx(1.0, abs=0.02), 0.0]
    assert b.components["signal/distortion"] == b.total


def test_an_unreadable_audio_file_is_logged_and_scores_none_for_that_clip_only(tmp_path, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, speechlike(), SR)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with caplog.at_level("WARNING", logger="rewards.signal"):
        out = Signal()(["a", "b"], [None] * 2, parsed=[Assessment()] * 2,
                       audio=[str(good), str(tmp_path / "bad.wav")])
    assert out.values[0] is not None and out.values[1] is None
    assert "cannot read" in caplog.text
