"""Real recordings as clean sources (``sqrl data synth --clean-dir``): which ones can be used, and where.

A clean-dir recording becomes the reference that every label of its clips is true against ("no noise"
means no noise was *added* to it), so it must itself be clean speech. Users bring recordings from
anywhere: any sample rate, stereo, 1-10 s or longer, any loudness, long silences around the speech.

What is fixed, not refused:
    * any rate is resampled, stereo is averaged to mono (``sqrl.audio.load_audio``);
    * a DC offset is removed (it would count as speech energy in the loudness and SNR maths);
    * loudness: the source is normalised to -23 dBFS and the clip to -26..-20 dBFS (``render.py``);
    * silence around the speech: the clip's crop is drawn inside the speech region, so a recording with
      3 s of room tone before the speech does not yield a clip of room tone labelled "clean speech".

What is refused, each a counted and logged skip with its reason (``inspect_source``):
    * digital silence, or channels that cancel when mixed to mono;
    * clipping: at least 0.1% of the samples of a channel peaking near full scale lie in flat runs of 3
      or more at its peak (a clipped source would be labelled "no distortion");
    * noise: an estimated SNR below ``min_snr_db`` (default 30 dB, about 25.5 dB true SNR; the noise
      labels' level 4 is 22-28 dB SNR, so a noisier source would itself sound like the noise its labels
      say is absent);
    * less than ``MIN_SPEECH_S`` of speech.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from sqrl.audio import AudioError, read_audio, to_mono

MIN_SPEECH_S = 0.5
DEFAULT_MIN_SNR_DB = 30.0
CLIP_RUN = 3  # samples: a flat top this long at the peak is clipping, not a peak
CLIP_FRACTION = 1e-3
CLIP_PEAK = 0.5  # a channel peaking below half scale was not clipped by its converter
_FRAME_S = 0.02
_EPS = 1e-12


@dataclass(frozen=True)
class SourceCheck:
    """What a usable source looks like: its speech region (s), estimated SNR (dB) and clipped share."""

    speech: tuple[float, float]
    snr_db: float
    clipped_fraction: float


def remove_dc(wave: np.ndarray) -> np.ndarray:
    return (wave - np.mean(wave, dtype=np.float64)).astype(np.float32)


def clipped_fraction(channel: np.ndarray) -> float:
    """Share of the samples in flat runs of ``CLIP_RUN`` or more at the channel's peak magnitude."""
    mag = np.abs(channel)
    peak = float(mag.max()) if mag.size else 0.0
    if peak < CLIP_PEAK:
        return 0.0
    at_peak = mag >= peak * (1 - 1e-4)
    # lengths of the runs of consecutive at-peak samples
    edges = np.diff(np.concatenate(([0], at_peak.view(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    runs = ends - starts
    return float(runs[runs >= CLIP_RUN].sum() / mag.size)


def frame_db(wave: np.ndarray, sr: int, frame_s: float = _FRAME_S) -> np.ndarray:
    hop = max(1, int(sr * frame_s))
    n = len(wave) // hop
    if n == 0:
        return np.array([10 * np.log10(np.mean(np.square(wave, dtype=np.float64)) + _EPS)])
    return 10 * np.log10(np.mean(np.square(wave[: n * hop].reshape(n, hop), dtype=np.float64), axis=1) + _EPS)


def estimate_snr_db(wave: np.ndarray, sr: int) -> float:
    """Speech level over noise floor, in dB, from 20-ms frame powers (a blind estimate).

    Speech level: the mean power of the loudest 30% of frames (a recording may be mostly silence).
    Noise floor: the 1st percentile of frame power. Clean speech without pauses reads 34-40 dB here
    (its own quietest frames set the floor: eSpeak sentences, ``tests/sqrl/data/test_sources.py``),
    with silence around it far higher. Stationary noise reads 4-4.5 dB above its true SNR (mean speech
    power over noise power): white noise at 10/20/25/30 dB reads 14.6/24.0/29.0/33.6 dB, so the default
    bar of 30 dB refuses sources noisier than about 25.5 dB true SNR, i.e. level-4 noise (22-28 dB) or worse.
    """
    db = np.sort(frame_db(wave, sr))
    loud = db[int(0.7 * len(db)):]
    level = 10 * np.log10(np.mean(10 ** (loud / 10)))
    return float(level - np.percentile(db, 1))


def speech_region(wave: np.ndarray, sr: int, floor_db: float = 35.0) -> tuple[float, float]:
    """First and last time (s) of a 20-ms frame within ``floor_db`` of the loudest frame."""
    db = frame_db(wave, sr)
    active = np.flatnonzero(db > db.max() - floor_db)
    hop = max(1, int(sr * _FRAME_S))
    return float(active[0] * hop / sr), float(min(len(wave), (active[-1] + 1) * hop) / sr)


def inspect_source(path: str | os.PathLike, min_snr_db: float = DEFAULT_MIN_SNR_DB) -> SourceCheck:
    """Check one recording (module doc); ``AudioError`` names the file and why it cannot be a source."""
    stored, sr = read_audio(path)
    if stored.size == 0:
        raise AudioError(path, "empty audio (0 samples)", "empty audio")
    if not np.isfinite(stored).all():
        raise AudioError(path, "NaN or infinite samples", "NaN samples")
    channels = [remove_dc(stored[:, c]) for c in range(stored.shape[1])]
    worst = max(clipped_fraction(c) for c in channels)
    if worst >= CLIP_FRACTION:
        raise AudioError(path, f"clipped: {100 * worst:.2f}% of samples in flat runs at full scale", "clipped")
    mono = remove_dc(to_mono(stored))
    level = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if level < 1e-6:
        loudest = max(float(np.sqrt(np.mean(np.square(c, dtype=np.float64)))) for c in channels)
        why = "channels cancel when mixed to mono" if loudest >= 1e-6 else "silent"
        raise AudioError(path, why, "silent")
    snr = estimate_snr_db(mono, sr)
    if snr < min_snr_db:
        raise AudioError(path, f"too noisy to be a clean source: estimated SNR {snr:.1f} dB < {min_snr_db:g} dB "
                         "(lower --min-source-snr-db to accept it)", "noisy")
    start, end = speech_region(mono, sr)
    if end - start < MIN_SPEECH_S:
        raise AudioError(path, f"only {end - start:.2f} s of speech (< {MIN_SPEECH_S:g} s)", "too short")
    return SourceCheck((round(start, 3), round(end, 3)), round(snr, 1), round(worst, 6))
