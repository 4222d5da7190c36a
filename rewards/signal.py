"""Signal rewards: check an answer's artifact claims against the audio itself (the paper's future work).

Reference-free and cheap (numpy only; 1.6 ms to measure a 3 s clip at 16 kHz, once per group), so they also
work on clips without labels. Three checks, one per artifact kind, selected with ``dimensions`` like the
builtin rewards:

* ``distortion`` - **flat runs**: runs of >= 3 equal consecutive samples above a tenth of the clip's peak,
  which is what clipping (and heavy bit-crushing) leaves in a waveform and natural speech does not. When
  they cover at least ``flat_fraction`` of the samples, the component is the fraction of the flat regions
  that the claimed distortion intervals cover (0 when none is claimed). When there are none it is ``None``:
  band-limiting or crackle leave no flat runs, so a distortion claim cannot be checked.
* ``unnatural_pause`` - **energy gaps**: interior runs of quiet 20 ms frames lasting ``min_pause`` seconds or
  more (quiet: below the clip's 5th-percentile frame level plus a quarter of its dynamic range, at least
  6 dB). The component is the IoU of the claimed pause intervals with those gaps; both empty -> 1; ``None``
  when the frame levels span less than 12 dB (noise too loud to see a pause in).
* ``noise`` - **spectral floor**: per frequency bin, how far its level swings over time; clean speech swings
  by tens of dB in every bin, stationary noise fills the quiet moments (``spectral_range``).
  ``p = sigmoid((noise_range_db - range) / 2 dB)`` is the probability that the clip is noisy; the component is
  ``p`` when noise is claimed and ``1 - p`` when not. It sees steady noise over most of the clip, not a short
  noisy interval in an otherwise clean clip; hum and brown noise only when loud (they occupy few bins).

Measured on 30 eSpeak clips (6 voices x 5 sentences, PCM16) with the corpus's own degradations
(``sqrl.data.degrade``): flat runs in 30/30 clipped and 30/30 bit-crushed intervals, 0/30 clean and 0/30
band-limited clips; every inserted pause and dropout found, edges within 20 ms, and no gap in clean speech;
``p`` median (min-max): clean 0.01 (0.00-0.77), white noise at 30 dB SNR 0.99 (0.93-1.00), pink at 30 dB 0.93
(0.50-0.98), white or pink at 20 dB or below >= 0.98, brown at 20 dB 0.54, hum at 20 dB 0.11. Flat runs vanish
when noise is added after the clipping, so the distortion check then abstains (``None``).

Columns: ``audio`` (a list of 1-D or 2-D numpy arrays, or paths to audio files) and ``sampling_rate`` (an int,
or one per clip; a path's own rate wins). Without an ``audio`` column every value is ``None``. A clip whose
audio is missing, empty or non-finite gives ``None``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Sequence

import numpy as np

from rewards.base import RewardOutput, add_components, parsed_column, register
from rewards.builtin import select_kinds
from sqrl.metrics import intersection_length, interval_iou, kind_intervals, merge_intervals, total_length

logger = logging.getLogger(__name__)

FRAME_S = 0.02
MIN_FLAT_RUN = 3
MIN_RANGE_DB = 12.0


def to_mono(audio: Any) -> np.ndarray | None:
    """A float64 mono waveform on the [-1, 1] scale, or ``None`` when unusable (empty, non-finite)."""
    x = np.asarray(audio)
    if x.size == 0 or x.ndim > 2:
        return None
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
    x = x.astype(np.float64, copy=False)
    if x.ndim == 2:  # channels on the shorter axis
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    return x if np.all(np.isfinite(x)) else None


def frame_db(x: np.ndarray, sr: int) -> np.ndarray:
    """Level of each non-overlapping 20 ms frame in dB (RMS; -200 dB for digital silence)."""
    n = max(1, int(round(FRAME_S * sr)))
    frames = x[: len(x) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10))


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` index pairs of the True runs in a boolean array."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def flat_regions(x: np.ndarray, sr: int, min_fraction: float, bridge_s: float = 0.25) -> list[tuple[float, float]]:
    """Time regions holding flat runs (clipping plateaus), or ``[]`` when they are below ``min_fraction``."""
    peak = float(np.max(np.abs(x)))
    if peak <= 0:
        return []
    same = np.abs(np.diff(x)) <= 1e-7 * peak
    loud = np.abs(x[1:]) >= 0.1 * peak
    flat = np.zeros(len(x), dtype=bool)
    for s, e in runs(same & loud):
        if e - s + 1 >= MIN_FLAT_RUN:
            flat[s: e + 1] = True
    if flat.sum() < min_fraction * len(x):
        return []
    regions = [(s / sr, e / sr) for s, e in runs(flat)]
    bridged = [(s - bridge_s / 2, e + bridge_s / 2) for s, e in regions]
    return [(max(0.0, s + bridge_s / 2), e - bridge_s / 2) for s, e in merge_intervals(bridged)]


def energy_gaps(db: np.ndarray, min_pause: float) -> list[tuple[float, float]] | None:
    """Interior runs of quiet frames lasting ``min_pause`` s or more (leading and trailing silence excluded);
    ``None`` when the frame levels span under ``MIN_RANGE_DB`` (noise so loud that a pause cannot be seen)."""
    floor, top = np.percentile(db, 5), np.percentile(db, 95)
    if top - floor < MIN_RANGE_DB:
        return None
    quiet = db < floor + max(6.0, 0.25 * (top - floor))
    loud = np.flatnonzero(~quiet)
    if len(loud) < 2:
        return []
    gaps = []
    for s, e in runs(quiet[loud[0]: loud[-1] + 1]):
        if (e - s) * FRAME_S >= min_pause - 1e-9:
            gaps.append(((loud[0] + s) * FRAME_S, (loud[0] + e) * FRAME_S))
    return gaps


def spectral_range(x: np.ndarray, sr: int) -> float:
    """How far each frequency bin's level swings over time (95th minus 10th percentile, dB), taken at the
    10th percentile over bins above 100 Hz. Speech is sparse in time and frequency, so clean bins swing by
    tens of dB; stationary noise fills every quiet moment of the bins it covers and flattens the swing."""
    n = 1 << int(math.ceil(math.log2(0.032 * sr)))  # ~32 ms frames
    if len(x) < 2 * n:
        return float("inf")
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2] * np.hanning(n)
    level = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-9)[:, int(100 * n / sr) + 1:]
    swing = np.percentile(level, 95, axis=0) - np.percentile(level, 10, axis=0)
    return float(np.percentile(swing, 10))


def noisy_probability(x: np.ndarray, sr: int, threshold_db: float) -> float:
    """``sigmoid((threshold_db - spectral_range) / 2 dB)``: near 1 for a steadily noisy clip."""
    z = (threshold_db - spectral_range(x, sr)) / 2.0
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@register("signal")
class Signal:
    """Agreement of claimed artifacts with what the waveform shows (module docstring: the three checks).

    >>> import numpy as np
    >>> from sqrl.schema import Artifact, Assessment
    >>> sr = 16000
    >>> t = np.arange(2 * sr) / sr
    >>> wave = np.clip(np.sin(2 * np.pi * 150 * t), -0.5, 0.5)  # clipped over the whole clip
    >>> says = Assessment(artifacts=[Artifact("distortion", 0.0, 1.0, "clipping")])
    >>> out = Signal(dimensions=["distortion"])(["..."], [None], parsed=[says], audio=[wave], sampling_rate=sr)
    >>> round(out.values[0], 3)  # the claim covers 1 s of 2 s of flat-topped waveform
    0.5
    """

    def __init__(self, dimensions: Iterable[str] | None = None, min_pause: float = 0.5,
                 flat_fraction: float = 1e-3, noise_range_db: float = 28.0):
        self.kinds = select_kinds(dimensions, "signal")
        if min_pause <= 0 or not 0 < flat_fraction < 1:
            raise ValueError("signal: min_pause must be > 0 and flat_fraction in (0, 1)")
        self.min_pause, self.flat_fraction = float(min_pause), float(flat_fraction)
        self.noise_range_db = float(noise_range_db)

    def measure(self, x: np.ndarray, sr: int) -> dict[str, Any]:
        """What the waveform shows for each selected kind: flat regions, energy gaps, probability of noise."""
        out: dict[str, Any] = {}
        if "distortion" in self.kinds:
            out["distortion"] = flat_regions(x, sr, self.flat_fraction)
        if "unnatural_pause" in self.kinds:
            out["unnatural_pause"] = energy_gaps(frame_db(x, sr), self.min_pause)
        if "noise" in self.kinds:
            out["noise"] = noisy_probability(x, sr, self.noise_range_db)
        return out

    @staticmethod
    def agreement(kind: str, claimed: list, measured: Any) -> float | None:
        if kind == "distortion":
            return intersection_length(claimed, measured) / total_length(measured) if measured else None
        if kind == "unnatural_pause":
            if measured is None:
                return None
            if not measured and not claimed:
                return 1.0
            return interval_iou(claimed, measured) or 0.0
        return measured if claimed else 1.0 - measured

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        n = len(parsed)
        comps: dict[str, list] = {k: [None] * n for k in self.kinds}
        audio = columns.get("audio")
        if audio is None:
            return RewardOutput([None] * n, comps)
        if len(audio) != n:
            raise ValueError(f"signal: {len(audio)} audio entries for {n} completions")
        rates = _rates(columns.get("sampling_rate"), n)
        measured: dict[Any, dict | None] = {}  # the G completions of a clip share its audio: measure it once
        for i, (p, a) in enumerate(zip(parsed, audio)):
            key = a if isinstance(a, str) else id(a)
            if key not in measured:
                x, sr = _load(a, rates[i])
                usable = x is not None and len(x) >= 2 * FRAME_S * sr
                measured[key] = self.measure(x, sr) if usable else None
            if measured[key] is not None:
                for k in self.kinds:
                    comps[k][i] = self.agreement(k, kind_intervals(p, k), measured[key][k])
        return RewardOutput(add_components(comps, n), comps)


def _rates(rate: Any, n: int) -> list[int | None]:
    if rate is None:
        return [None] * n
    if isinstance(rate, (int, float, np.integer)):
        return [int(rate)] * n
    if len(rate) != n:
        raise ValueError(f"signal: {len(rate)} sampling rates for {n} completions")
    return [int(r) if r else None for r in rate]


def _load(audio: Any, sr: int | None) -> tuple[np.ndarray | None, int]:
    if audio is None:
        return None, sr or 1
    if isinstance(audio, str):
        import soundfile as sf

        try:
            data, sr = sf.read(audio, dtype="float32", always_2d=False)
        except (OSError, RuntimeError) as exc:  # one unreadable file must not cost the batch: skip it, loudly
            logger.warning("signal: cannot read %s (clip scored None): %s", audio, exc)
            return None, 1
        return to_mono(data), int(sr)
    if not sr or sr <= 0:
        raise ValueError("signal: an audio array needs a 'sampling_rate' column")
    return to_mono(audio), int(sr)
