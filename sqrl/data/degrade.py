"""Degradations with known parameters: noise at a chosen SNR, distortions over intervals, pauses
and dropouts, naturalness proxies and a time-stretch. Plain numpy/scipy on mono float32 waves.

Every function takes the wave and its sample rate and returns a new array; nothing here picks
parameters or labels (that is ``labels.py``) and randomness comes only from the ``rng`` passed in.
Intervals are in seconds on the timeline of the wave given.
"""
from __future__ import annotations

import numpy as np
from scipy import signal

NOISE_KINDS: tuple[str, ...] = ("white", "pink", "brown", "hum", "babble")
DISTORTION_KINDS: tuple[str, ...] = ("clipping", "bitcrush", "bandlimit", "crackle")
NATURALNESS_KINDS: tuple[str, ...] = ("monotone", "robotic", "warble")
PAUSE_KINDS: tuple[str, ...] = ("pause", "dropout")

_EPS = 1e-12


def power(x: np.ndarray) -> float:
    """Mean power (mean square); 0.0 for an empty array."""
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(power(x)))


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    """10 log10 of speech power over noise power (mean power over the samples given)."""
    return float(10.0 * np.log10((power(speech) + _EPS) / (power(noise) + _EPS)))


def span(sr: int, start: float, end: float, n: int) -> slice:
    """Sample slice for ``[start, end)`` seconds, clamped to ``[0, n]``."""
    a = min(max(int(round(start * sr)), 0), n)
    return slice(a, min(max(int(round(end * sr)), a), n))


def speech_region(x: np.ndarray, sr: int, floor_db: float = 35.0) -> tuple[float, float]:
    """First and last time (s) where the 10 ms frame energy is within ``floor_db`` of the loudest."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n == 0:
        return 0.0, len(x) / sr
    energy = 10 * np.log10(np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1) + _EPS)
    active = np.flatnonzero(energy > energy.max() - floor_db)
    return float(active[0] * hop / sr), float((active[-1] + 1) * hop / sr)


def _mask(n: int, sr: int, start: float, end: float, ramp_s: float = 0.005) -> np.ndarray:
    """1 inside ``[start, end)``, raised-cosine ramps *outside* it, so the interval is fully processed."""
    m = np.zeros(n, dtype=np.float32)
    sl = span(sr, start, end, n)
    m[sl] = 1.0
    r = max(1, int(ramp_s * sr))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r + 2, dtype=np.float32)[1:-1])
    a0 = max(sl.start - r, 0)
    m[a0:sl.start] = ramp[r - (sl.start - a0):]
    b1 = min(sl.stop + r, n)
    m[sl.stop:b1] = ramp[::-1][: b1 - sl.stop]
    return m


def _blend(x: np.ndarray, processed: np.ndarray, sr: int, start: float, end: float) -> np.ndarray:
    m = _mask(len(x), sr, start, end)
    return ((1.0 - m) * x + m * processed).astype(np.float32)


def _match_rms(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return y * (rms(ref) / (rms(y) + _EPS))


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------

def _coloured(n: int, rng: np.random.Generator, exponent: float, sr: int) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1/f**exponent (pink 1, brown 2), DC removed."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    shape = np.zeros_like(f)
    shape[f >= 20.0] = f[f >= 20.0] ** (-exponent / 2.0)  # no energy below 20 Hz: brown noise drifts
    return np.fft.irfft(spec * shape, n)


def _hum(n: int, sr: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    base = float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / sr
    harmonics = [k for k in range(1, 12) if k * base < sr / 2]
    hum = sum(np.sin(2 * np.pi * k * base * t + rng.uniform(0, 2 * np.pi)) / k for k in harmonics)
    return hum + 0.02 * rng.standard_normal(n), base


def _babble(n: int, rng: np.random.Generator, bank: np.ndarray | None, talkers: int = 5) -> np.ndarray:
    """A sum of windows of reversed speech (unintelligible, speech-shaped, syllabic rhythm)."""
    if bank is None or len(bank) < n + 1:
        raise ValueError("babble noise needs a speech bank longer than the clip")
    out = np.zeros(n)
    for _ in range(talkers):
        s = int(rng.integers(0, len(bank) - n))
        seg = bank[s:s + n].astype(np.float64)
        out += seg / (rms(seg) + _EPS)
    return out


def make_noise(kind: str, n: int, sr: int, rng: np.random.Generator,
               babble_bank: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """``n`` samples of noise of ``kind`` scaled to unit RMS, and the parameters that made it."""
    params: dict = {}
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = _coloured(n, rng, 1.0, sr)
    elif kind == "brown":
        x = _coloured(n, rng, 2.0, sr)
    elif kind == "hum":
        x, params["hum_hz"] = _hum(n, sr, rng)
    elif kind == "babble":
        x = _babble(n, rng, babble_bank)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")
    return (x / (rms(x) + _EPS)).astype(np.float32), params


def add_noise(x: np.ndarray, sr: int, noise: np.ndarray, snr: float, start: float, end: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Add ``noise`` inside ``[start, end)`` so that speech power / noise power there is ``snr`` dB.

    Speech power is the mean power of ``x`` over the interval (silences included). The noise is
    faded in and out over 5 ms outside the interval. Returns ``(noisy, added_noise)``.
    """
    if len(noise) != len(x):
        raise ValueError(f"noise has {len(noise)} samples, the clip {len(x)}")
    sl = span(sr, start, end, len(x))
    if sl.stop <= sl.start:
        raise ValueError(f"empty noise interval {start:.3f}-{end:.3f} s")
    shaped = noise * _mask(len(x), sr, start, end)
    target = power(x[sl]) / (10.0 ** (snr / 10.0))
    added = shaped * np.sqrt(target / (power(shaped[sl]) + _EPS))
    return (x + added).astype(np.float32), added.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Distortion (each over an interval)
# ----------------------------------------------------------------------------------------------

def clip_interval(x: np.ndarray, sr: int, start: float, end: float, gain_db: float) -> np.ndarray:
    """Hard-clip at ``peak / 10**(gain_db/20)`` of the interval's peak, then restore its RMS.

    Equivalent to overdriving by ``gain_db`` into a hard limit; the clipped samples stay flat.
    """
    seg = x[span(sr, start, end, len(x))]
    if seg.size == 0:
        raise ValueError(f"empty clipping interval {start:.3f}-{end:.3f} s")
    thr = float(np.abs(seg).max()) / 10.0 ** (gain_db / 20.0)
    clipped = np.clip(x, -thr, thr)
    clipped = clipped * (rms(seg) / (rms(np.clip(seg, -thr, thr)) + _EPS))
    return _blend(x, clipped, sr, start, end)


def bitcrush_interval(x: np.ndarray, sr: int, start: float, end: float, bits: int, hold: int) -> np.ndarray:
    """Quantise to ``bits`` (relative to the interval's peak) and sample-and-hold every ``hold``."""
    seg = x[span(sr, start, end, len(x))]
    peak = float(np.abs(seg).max()) + _EPS
    q = 2.0 ** (bits - 1)
    crushed = np.round(x / peak * q) / q * peak
    if hold > 1:
        crushed = np.repeat(crushed[::hold], hold)[: len(x)]
    return _blend(x, crushed, sr, start, end)


def bandlimit_interval(x: np.ndarray, sr: int, start: float, end: float, low_hz: float, high_hz: float
                       ) -> np.ndarray:
    """Band-pass ``low_hz``-``high_hz`` (8th-order Butterworth, zero phase), RMS kept."""
    if not 0 < low_hz < high_hz < sr / 2:
        raise ValueError(f"band {low_hz}-{high_hz} Hz does not fit under Nyquist {sr / 2} Hz")
    sos = signal.butter(8, [low_hz, high_hz], btype="bandpass", fs=sr, output="sos")
    filtered = signal.sosfiltfilt(sos, x).astype(np.float32)
    seg = span(sr, start, end, len(x))
    filtered = filtered * (rms(x[seg]) / (rms(filtered[seg]) + _EPS))
    return _blend(x, filtered, sr, start, end)


def crackle_interval(x: np.ndarray, sr: int, start: float, end: float, rate_hz: float, amplitude: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Add ``rate_hz`` clicks/s on average (at least one) inside the interval, each a 1-4 ms
    decaying burst of ``amplitude`` times the clip peak. Returns ``(wave, number_of_clicks)``."""
    y = x.copy()
    sl = span(sr, start, end, len(x))
    count = max(1, int(rng.poisson(rate_hz * (sl.stop - sl.start) / sr)))
    peak = float(np.abs(x).max()) + _EPS
    for _ in range(count):
        length = int(rng.uniform(0.001, 0.004) * sr)
        at = int(rng.integers(sl.start, max(sl.start + 1, sl.stop - length)))
        burst = rng.standard_normal(length) * np.exp(-np.linspace(0, 5, length))
        burst *= amplitude * peak / (np.abs(burst).max() + _EPS) * rng.choice([-1.0, 1.0])
        y[at:at + length] += burst[: len(y[at:at + length])].astype(np.float32)
    return y, count


# ----------------------------------------------------------------------------------------------
# Continuity
# ----------------------------------------------------------------------------------------------

def _fade(n: int, out: bool) -> np.ndarray:
    return np.linspace(1.0, 0.0, n, dtype=np.float32) if out else np.linspace(0.0, 1.0, n, dtype=np.float32)


def insert_silence(x: np.ndarray, sr: int, at: float, seconds: float, fade_s: float = 0.002) -> np.ndarray:
    """Insert ``seconds`` of digital silence at ``at``; 2 ms fades on the speech either side keep
    the cut click-free, and the inserted span itself is exactly zero."""
    p = min(max(int(round(at * sr)), 0), len(x))
    f = int(fade_s * sr)
    head, tail = x[:p].copy(), x[p:].copy()
    k = min(f, len(head))
    head[len(head) - k:] *= _fade(k, out=True)
    k = min(f, len(tail))
    tail[:k] *= _fade(k, out=False)
    return np.concatenate([head, np.zeros(int(round(seconds * sr)), dtype=np.float32), tail])


def dropout(x: np.ndarray, sr: int, start: float, end: float, fade_s: float = 0.002) -> np.ndarray:
    """Zero ``[start, end)`` (the speech there is lost), with 2 ms fades just outside it."""
    y = x.copy()
    sl = span(sr, start, end, len(x))
    f = int(fade_s * sr)
    a = max(sl.start - f, 0)
    y[a:sl.start] *= _fade(sl.start - a, out=True)
    b = min(sl.stop + f, len(y))
    y[sl.stop:b] *= _fade(b - sl.stop, out=False)
    y[sl] = 0.0
    return y


# ----------------------------------------------------------------------------------------------
# Naturalness proxies (whole clip)
# ----------------------------------------------------------------------------------------------

def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    pad = np.pad(x, (n_fft, n_fft + hop))
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop]
    return np.fft.rfft(frames * np.hanning(n_fft), axis=1)


def _istft(spec: np.ndarray, n_fft: int, hop: int, n: int) -> np.ndarray:
    frames = np.fft.irfft(spec, n_fft, axis=1)
    win = np.hanning(n_fft)
    total = hop * (len(frames) - 1) + n_fft
    out, norm = np.zeros(total), np.zeros(total)
    for i, fr in enumerate(frames):  # a few hundred frames: the loop is not the cost
        out[i * hop:i * hop + n_fft] += fr * win
        norm[i * hop:i * hop + n_fft] += win ** 2
    out /= np.maximum(norm, 1e-3)
    return out[n_fft:n_fft + n]


def monotone_vocoder(x: np.ndarray, sr: int, f0: float, wet: float) -> np.ndarray:
    """Channel-vocoder the clip onto a constant-pitch pulse train: flat pitch and a buzzy,
    robotic timbre (fricatives buzz too). ``wet`` in [0, 1] mixes it with the original."""
    n_fft = 1 << int(np.ceil(np.log2(0.032 * sr)))
    hop = n_fft // 4
    spec = _stft(x.astype(np.float64), n_fft, hop)
    bins_per_hz = n_fft / sr
    smooth = max(3, int(round(300 * bins_per_hz)) | 1)  # ~300 Hz wide: wider than any harmonic spacing
    kernel = np.ones(smooth) / smooth
    env = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, np.abs(spec))
    pulses = np.zeros(len(x))
    pulses[:: max(1, int(round(sr / f0)))] = 1.0
    carrier = _stft(pulses, n_fft, hop)[: len(spec)]
    carrier_env = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, np.abs(carrier))
    voc = _istft(env * carrier / (carrier_env + 1e-6), n_fft, hop, len(x))
    voc = _match_rms(voc, x)
    return ((1.0 - wet) * x + wet * voc).astype(np.float32)


def ring_modulate(x: np.ndarray, sr: int, carrier_hz: float, depth: float) -> np.ndarray:
    """Multiply by ``1 - depth + depth * cos(2 pi f t)``: a metallic, robotic ring; RMS kept."""
    t = np.arange(len(x)) / sr
    y = x * (1.0 - depth + depth * np.cos(2 * np.pi * carrier_hz * t))
    return _match_rms(y, x).astype(np.float32)


def warble(x: np.ndarray, sr: int, depth_cents: float, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Wobble the pitch by up to ``depth_cents`` at about ``rate_hz`` through a modulated delay
    line (two incommensurate sines, so it sounds like jitter rather than a clean vibrato)."""
    t = np.arange(len(x)) / sr
    ratio = 2.0 ** (depth_cents / 1200.0) - 1.0  # peak |d delay / dt|
    rates = (rate_hz, rate_hz * rng.uniform(1.37, 1.73))
    delay = np.zeros_like(t)
    for i, r in enumerate(rates):
        weight = 0.65 if i == 0 else 0.35
        delay += weight * ratio / (2 * np.pi * r) * np.sin(2 * np.pi * r * t + rng.uniform(0, 2 * np.pi))
    src = np.clip(t - delay - delay.min(), 0, t[-1] if len(t) else 0)
    return np.interp(src, t, x).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------

def time_stretch(x: np.ndarray, sr: int, rate: float) -> np.ndarray:
    """WSOLA time-stretch keeping pitch: ``rate`` > 1 speeds up (output ``len/rate`` samples)."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if abs(rate - 1.0) < 1e-6:
        return x.astype(np.float32)
    frame = int(0.04 * sr)
    hop_out, tol = frame // 2, int(0.01 * sr)
    win = np.hanning(frame)
    xp = np.pad(x.astype(np.float64), (tol, frame + tol + int(rate * hop_out) + 1))
    n_frames = max(1, int((len(x) / rate) / hop_out))
    out = np.zeros(n_frames * hop_out + frame)
    norm = np.zeros_like(out)
    delta = 0
    for k in range(n_frames):
        pos = int(k * hop_out * rate) + tol + delta
        out[k * hop_out:k * hop_out + frame] += xp[pos:pos + frame] * win
        norm[k * hop_out:k * hop_out + frame] += win
        natural = xp[pos + hop_out:pos + hop_out + frame]
        nxt = int((k + 1) * hop_out * rate) + tol
        region = xp[nxt - tol:nxt + tol + frame]
        if len(region) < frame + 2 * tol or len(natural) < frame:
            break
        delta = int(np.argmax(np.correlate(region, natural, mode="valid"))) - tol
    out /= np.maximum(norm, 1e-3)
    return out[: int(round(len(x) / rate))].astype(np.float32)
