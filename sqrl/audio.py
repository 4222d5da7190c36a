"""Load, resample, validate and save audio: the one place every stage reads a clip from disk.

``load_audio`` reads wav/flac/ogg through soundfile, mixes to mono, resamples with soxr and
checks the samples. Every problem is an ``AudioError`` that names the file and the problem, so
a bad clip deep inside a training run says which file to look at.

What makes a clip usable is decided here once, and ``sqrl data validate``, the SFT collator,
``sqrl eval``, the GRPO workers and ``sqrl assess`` all apply it through ``load_audio`` (or, for
validate, ``header_problem`` and ``check_wave``): the file exists and soundfile reads it, it
holds at least ``MIN_CLIP_SECONDS`` and at most the caller's ``max_seconds``, and every sample is
finite. Any rate and channel count is usable (mixed to mono, resampled to 16 kHz on load).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

DEFAULT_SAMPLING_RATE = 16000
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")
# Shorter clips give the audio encoder fewer than ~2 positions; Qwen2-Audio then mistakes the batch
# for its legacy un-expanded format. A tenth of a second is far below any real utterance.
MIN_CLIP_SECONDS = 0.1


class AudioError(ValueError):
    """A clip that cannot be used: ``path`` and ``problem`` say which and why; ``category`` is the
    kind of problem (what ``sqrl data validate`` counts: ``audio missing``, ``too short``, ...)."""

    def __init__(self, path: str | os.PathLike, problem: str, category: str = "audio unreadable"):
        self.path, self.problem, self.category = str(path), problem, category
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, without reading the samples."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header facts of ``path``; raises ``AudioError`` if it is missing or not a sound file."""
    if not os.path.isfile(path):
        raise AudioError(path, "file not found", "audio missing")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def header_problem(info: AudioInfo, max_seconds: float | None = None,
                   min_seconds: float | None = MIN_CLIP_SECONDS) -> tuple[str, str] | None:
    """``(category, problem)`` when the header alone makes a clip unusable, else None (see the module doc).

    >>> header_problem(AudioInfo(16000, 1, 800))
    ('too short', 'too short for the model: 0.050 s < 0.1 s')
    """
    if info.sample_rate <= 0 or info.channels <= 0:
        return "audio unreadable", f"{info.sample_rate} Hz, {info.channels} channels"
    if info.frames <= 0:
        return "empty audio", "empty audio (0 samples)"
    if min_seconds is not None and info.duration < min_seconds:
        return "too short", f"too short for the model: {info.duration:.3f} s < {min_seconds:g} s"
    if max_seconds is not None and info.duration > max_seconds:
        return "too long", f"too long: {info.duration:.2f} s > limit {max_seconds:g} s"
    return None


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(frames, channels)`` array; a 1-D array is returned as is."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"expected a 1-D or (frames, channels) array, got shape {wave.shape}")
    return wave.mean(axis=1)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono wave with soxr (high quality); a no-op when the rates agree."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr or wave.size == 0:
        return wave
    return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32)


def check_wave(wave: np.ndarray, path: str | os.PathLike = "<array>", max_seconds: float | None = None,
               sampling_rate: int = DEFAULT_SAMPLING_RATE) -> np.ndarray:
    """Raise ``AudioError`` for an empty clip, NaN or infinite samples, or one over ``max_seconds``."""
    if wave.size == 0:
        raise AudioError(path, "empty audio (0 samples)", "empty audio")
    bad = ~np.isfinite(wave)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise AudioError(path, f"{int(bad.sum())} NaN or infinite samples (first at sample {first})", "NaN samples")
    seconds = wave.shape[0] / sampling_rate
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(path, f"too long: {seconds:.2f} s > limit {max_seconds:g} s", "too long")
    return wave


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The samples as stored: a float32 ``(frames, channels)`` array and the file's sample rate.

    No mixing, resampling or checks beyond readability (``AudioError`` if missing/unreadable).
    """
    if not os.path.isfile(path):
        raise AudioError(path, "file not found", "audio missing")
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"unreadable audio ({exc})") from None
    return wave, int(sr)


def load_audio(path: str | os.PathLike, sampling_rate: int = DEFAULT_SAMPLING_RATE,
               max_seconds: float | None = None, min_seconds: float | None = MIN_CLIP_SECONDS) -> np.ndarray:
    """Read ``path`` as a mono float32 wave at ``sampling_rate``, if it is usable (module doc).

    Stereo is averaged to mono; other rates are resampled with soxr. Raises ``AudioError`` naming
    the file when it is missing, unreadable, empty, shorter than ``min_seconds``, longer than
    ``max_seconds`` (both checked before reading, so a huge file is refused cheaply) or holds
    NaN/inf samples. ``min_seconds=None`` loads any length (a source to crop, not a clip to judge).
    """
    problem = header_problem(audio_info(path), max_seconds, min_seconds)
    if problem is not None:
        raise AudioError(path, problem[1], problem[0])
    wave, sr = read_audio(path)
    check_wave(wave, path)
    wave = resample(to_mono(wave).astype(np.float32), int(sr), sampling_rate)
    if min_seconds is not None and len(wave) < round(min_seconds * sampling_rate):  # rounding in the resampler
        raise AudioError(path, f"too short for the model: {len(wave) / sampling_rate:.3f} s < {min_seconds:g} s",
                         "too short")
    return wave


def save_audio(path: str | os.PathLike, wave: np.ndarray, sampling_rate: int = DEFAULT_SAMPLING_RATE,
               subtype: str = "PCM_16", overwrite: bool = True) -> Path:
    """Write a mono wave atomically (temp file, then rename); samples are clipped to [-1, 1].

    The format follows the suffix (.wav, .flac, .ogg). Refuses NaN/inf or empty waves. With
    ``overwrite=False`` an existing ``path`` is never replaced: ``FileExistsError`` instead (the name
    is claimed with an exclusive create before the rename, so two writers cannot both win).
    """
    path = Path(path)
    wave = np.asarray(wave, dtype=np.float32)
    check_wave(wave, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(path, f"unsupported extension; use one of {', '.join(AUDIO_EXTENSIONS)}")
    if fmt == "OGG":
        subtype = "VORBIS"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sampling_rate, subtype=subtype, format=fmt)
        if not overwrite:  # claim the name first (FileExistsError if taken), then fill it by the rename
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Every wav/flac/ogg file under ``root`` (recursively), sorted for determinism."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
