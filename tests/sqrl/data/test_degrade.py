"""sqrl.data.degrade: each degradation does what its parameters say, where they say."""
import numpy as np
import pytest

from sqrl.data import degrade as D

SR = 16000


def _tone(seconds=3.0, hz=220.0, amp=0.3):
    t = np.arange(int(SR * seconds)) / SR
    # A few harmonics so clipping and filtering have something to act on.
    return (amp * sum(np.sin(2 * np.pi * k * hz * t) / k for k in (1, 2, 3))).astype(np.float32)


def _band_power(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return spec[(f >= lo) & (f < hi)].sum()


@pytest.mark.parametrize("kind,ratio", [("white", 10.0), ("pink", 1.0), ("brown", 0.1)])
def test_noise_colours_have_their_spectral_slopes(kind, ratio):
    # Power in 1-2 kHz over power in 100-200 Hz: white 10 (band width), pink 1 (per octave), brown 0.1.
    x, _ = D.make_noise(kind, SR * 8, SR, np.random.default_rng(0))
    assert D.rms(x) == pytest.approx(1.0, rel=1e-4)
    measured = _band_power(x, 1000, 2000) / _band_power(x, 100, 200)
    assert ratio / 1.5 < measured < ratio * 1.5


def test_hum_is_at_50_or_60_hz_and_babble_needs_a_bank():
    rng = np.random.default_rng(1)
    x, params = D.make_noise("hum", SR * 2, SR, rng)
    peak = np.argmax(np.abs(np.fft.rfft(x))) * SR / len(x)
    assert params["hum_hz"] in (50.0, 60.0) and peak == pytest.approx(params["hum_hz"], abs=1)
    with pytest.raises(ValueError, match="bank"):
        D.make_noise("babble", SR, SR, rng, babble_bank=None)
    with pytest.raises(ValueError, match="unknown noise kind"):
        D.make_noise("purple", SR, SR, rng)


@pytest.mark.parametrize("snr", [-2.0, 7.5, 25.0])
def test_added_noise_has_the_requested_snr_inside_the_interval_only(snr):
    x = _tone()
    noise, _ = D.make_noise("white", len(x), SR, np.random.default_rng(2))
    y, added = D.add_noise(x, SR, noise, snr, 1.0, 2.0)
    inside = D.span(SR, 1.0, 2.0, len(x))
    assert D.snr_db(x[inside], (y - x)[inside]) == pytest.approx(snr, abs=0.01)
    # Outside the interval and its 5 ms ramps, the signal is untouched.
    assert np.array_equal(y[: int(0.99 * SR)], x[: int(0.99 * SR)])
    assert np.array_equal(y[int(2.01 * SR):], x[int(2.01 * SR):])


def test_add_noise_refuses_mismatched_or_empty_input():
    x = _tone()
    with pytest.raises(ValueError, match="samples"):
        D.add_noise(x, SR, np.zeros(10, dtype=np.float32), 10, 0, 1)
    with pytest.raises(ValueError, match="empty noise interval"):
        D.add_noise(x, SR, np.ones_like(x), 10, 2.0, 2.0)


def test_clipping_flattens_the_interval_and_leaves_the_rest():
    x = _tone()
    y = D.clip_interval(x, SR, 1.0, 2.0, gain_db=20.0)
    seg = np.abs(y[D.span(SR, 1.0, 2.0, len(y))])
    at_ceiling = np.mean(seg >= seg.max() * 0.9999)
    assert at_ceiling > 0.3  # 20 dB of overdrive: a large share of the samples sit on the limit
    assert D.rms(seg) == pytest.approx(D.rms(x[D.span(SR, 1.0, 2.0, len(x))]), rel=1e-3)
    assert np.array_equal(y[: int(0.99 * SR)], x[: int(0.99 * SR)])


def test_bitcrush_leaves_at_most_2_to_the_bits_levels():
    x = _tone()
    y = D.bitcrush_interval(x, SR, 0.0, 3.0, bits=3, hold=1)
    levels = np.unique(np.round(y[100:-100] / np.abs(x).max() * 4, 6))
    assert len(levels) <= 2 ** 3 + 1  # -4..4 quarter steps of the peak


def test_bandlimit_removes_energy_outside_the_band():
    x, _ = D.make_noise("white", SR * 2, SR, np.random.default_rng(3))
    y = D.bandlimit_interval(x, SR, 0.0, 2.0, 500, 1000)
    assert _band_power(y, 3000, 8000) / _band_power(x, 3000, 8000) < 1e-4
    assert _band_power(y, 600, 900) / _band_power(x, 600, 900) > 0.3
    with pytest.raises(ValueError, match="Nyquist"):
        D.bandlimit_interval(x, SR, 0, 1, 500, 9000)


def test_crackle_adds_clicks_only_inside_the_interval():
    x = np.zeros(SR * 3, dtype=np.float32)
    x[::100] = 0.1  # a peak to scale the clicks against
    y, count = D.crackle_interval(x, SR, 1.0, 2.0, rate_hz=30, amplitude=0.5, rng=np.random.default_rng(4))
    changed = np.flatnonzero(y != x)
    assert count >= 10 and changed.min() >= SR and changed.max() < 2 * SR


def test_inserted_silence_is_exact_zeros_of_the_requested_length():
    x = _tone(1.0) + 0.1
    y = D.insert_silence(x, SR, 0.5, 0.25)
    assert len(y) == len(x) + 4000
    assert np.all(y[8000:12000] == 0.0)
    assert np.array_equal(y[12000 + 40:], x[8000 + 40:])  # after the 2 ms fade-in, the speech goes on


def test_dropout_zeroes_the_interval_without_changing_the_length():
    x = _tone(1.0) + 0.1
    y = D.dropout(x, SR, 0.25, 0.5)
    assert len(y) == len(x) and np.all(y[4000:8000] == 0.0) and np.all(y[:3900] == x[:3900])


def test_time_stretch_changes_duration_but_not_pitch():
    x = _tone(2.0, hz=220)
    for rate in (0.5, 2.0):
        y = D.time_stretch(x, SR, rate)
        assert len(y) == int(round(len(x) / rate))
        peak = np.argmax(np.abs(np.fft.rfft(y))) * SR / len(y)
        assert peak == pytest.approx(220, abs=3)
    with pytest.raises(ValueError):
        D.time_stretch(x, SR, 0)


def test_monotone_vocoder_imposes_a_constant_pitch():
    # White noise has no pitch; fully vocoded it becomes periodic at the carrier's 100 Hz.
    x, _ = D.make_noise("white", SR * 2, SR, np.random.default_rng(5))
    y = D.monotone_vocoder(x * 0.1, SR, f0=100.0, wet=1.0)[SR // 2:SR // 2 + 4000]

    def autocorr(sig, lag):
        return float(np.dot(sig[:-lag], sig[lag:]) / np.dot(sig, sig))

    assert autocorr(y, 160) > 0.5
    assert abs(autocorr(x[:4000], 160)) < 0.1


def test_ring_modulation_and_warble_keep_the_level():
    x = _tone()
    rng = np.random.default_rng(6)
    for y in (D.ring_modulate(x, SR, 150, 1.0), D.warble(x, SR, 400, 6.0, rng)):
        assert len(y) == len(x) and D.rms(y) == pytest.approx(D.rms(x), rel=0.05)
    # A 400-cent warble moves a steady 220 Hz tone's instantaneous pitch far from 220 Hz.
    y = D.warble(_tone(hz=220), SR, 400, 6.0, rng)
    spec = np.abs(np.fft.rfft(y))
    f = np.fft.rfftfreq(len(y), 1 / SR)
    assert spec[(f > 160) & (f < 210)].sum() > 0.2 * spec[(f > 210) & (f < 230)].sum()


def test_speech_region_finds_the_loud_part():
    x = np.zeros(SR * 2, dtype=np.float32)
    x[SR // 2:SR] = _tone(0.5)
    start, end = D.speech_region(x, SR)
    assert start == pytest.approx(0.5, abs=0.011) and end == pytest.approx(1.0, abs=0.011)
