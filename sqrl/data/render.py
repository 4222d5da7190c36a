"""Render one synthetic clip from its job: clean speech, then naturalness -> gaps -> distortion
-> noise -> loudness, and the ``Record`` whose labels follow from what was done (``labels.py``).

All randomness comes from ``default_rng([seed, index, 1])``, so a clip is the same whichever
process renders it and whatever else is in the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sqrl.audio import load_audio, resample
from sqrl.data import degrade, labels
from sqrl.data.sources import remove_dc
from sqrl.data.tts import Utterance, synthesize
from sqrl.schema import Artifact, Record

CLEAN_RMS_DBFS = -23.0
OUT_RMS_DBFS = (-26.0, -20.0)
OUT_PEAK = 0.95
GAP_MIN_SPACING_S = 0.25

# Fixed texts and voices for the babble bank: the same bank in every process and every corpus.
_BABBLE_SOURCES = (
    ("Several people were talking at once about the weather and the trains.", "en-us+m3"),
    ("She told them that the market would open later than usual this week.", "en+f2"),
    ("We could hear music from the other room while the kettle boiled.", "en-gb-x-rp+m7"),
    ("Nobody remembered where the keys had been left after the party.", "en-us+f4"),
    ("The children counted the boats that came into the harbour at noon.", "en-029+m2"),
    ("A man near the window kept asking for another cup of coffee.", "en-gb-scotland+f1"),
)


@dataclass
class RenderedClip:
    """The degraded wave, the clean reference it came from (same rate) and its record."""

    wave: np.ndarray
    clean: np.ndarray
    record: Record


def _gain_to_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x * (10.0 ** (dbfs / 20.0) / (degrade.rms(x) + 1e-12))).astype(np.float32)


@lru_cache(maxsize=4)
def babble_bank(sr: int) -> np.ndarray:
    """Reversed eSpeak speech of six voices, end to end (reversed: speech-like but unintelligible)."""
    parts = []
    for text, voice in _BABBLE_SOURCES:
        wave, tts_sr = synthesize(Utterance(text, voice=voice, rate=190))
        parts.append(_gain_to_dbfs(resample(wave, tts_sr, sr), CLEAN_RMS_DBFS)[::-1])
    return np.concatenate(parts)


def clean_speech(job: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The clean source at the job's sample rate and speed, and what to record about it."""
    sr = job["sample_rate"]
    if job["source"] == "espeak":
        utt = Utterance(**job["utterance"])
        wave, tts_sr = synthesize(utt)
        wave = resample(wave, tts_sr, sr)
        meta = {"voice": utt.voice, "speaker": utt.voice, "text": utt.text,
                "clean_source": f"espeak-ng:{utt.voice}", "tts": dict(job["utterance"])}
    else:
        wave = remove_dc(load_audio(job["path"], sr, min_seconds=None))  # a source to crop, any length
        tempo = job["speed"]["tempo"]
        # Crop so that the stretched speech lasts about as long as a synthesised sentence, inside the
        # speech region the scan found (sources.py): room tone around the speech is not clean speech.
        want = int(rng.uniform(*labels.SPEECH_SECONDS) * tempo * sr)
        lo, hi = (int(t * sr) for t in job.get("speech", (0.0, len(wave) / sr)))
        lo, hi = max(0, min(lo, len(wave))), max(0, min(hi, len(wave)))
        offset = lo + int(rng.integers(0, hi - lo - want + 1)) if hi - lo > want else lo
        segment = wave[offset:min(offset + want, hi)]
        wave = degrade.time_stretch(segment, sr, tempo)
        meta = {"speaker": job["speaker"], "clean_source": job["path"], "source_snr_db": job.get("source_snr_db"),
                "crop_seconds": [round(offset / sr, 3), round((offset + len(segment)) / sr, 3)]}
    if degrade.rms(wave) < 1e-6:
        raise ValueError("the clean source is silent")
    return _gain_to_dbfs(wave, CLEAN_RMS_DBFS), meta


def apply_naturalness(x: np.ndarray, sr: int, level: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
    if level == 5:
        return x, None
    kind = degrade.NATURALNESS_KINDS[int(rng.integers(len(degrade.NATURALNESS_KINDS)))]
    params = {"kind": kind, "level": level, **labels.NATURALNESS_PARAMS[kind][level]}
    if kind == "monotone":
        params["f0_hz"] = round(float(rng.uniform(95, 140)), 1)
        y = degrade.monotone_vocoder(x, sr, params["f0_hz"], params["wet"])
    elif kind == "robotic":
        params["carrier_hz"] = round(float(rng.uniform(120, 250)), 1)
        y = degrade.ring_modulate(x, sr, params["carrier_hz"], params["depth"])
    else:
        params["rate_hz"] = round(float(rng.uniform(4.5, 8.0)), 2)
        y = degrade.warble(x, sr, params["cents"], params["rate_hz"], rng)
    return y, params


def _gap_positions(x: np.ndarray, sr: int, kinds: list[str], lengths: list[float],
                   rng: np.random.Generator) -> list[float] | None:
    """Sorted start times inside the speech for each gap, spaced apart; None if they do not fit."""
    s0, s1 = degrade.speech_region(x, sr)
    lo, hi = s0 + 0.1 * (s1 - s0), s1 - 0.1 * (s1 - s0)
    consumed = [d if k == "dropout" else 0.0 for k, d in zip(kinds, lengths)]
    for _ in range(200):
        starts = np.sort(rng.uniform(lo, hi, size=len(kinds)))
        ends = starts + np.array(consumed)
        if ends[-1] <= hi and all(starts[i + 1] - ends[i] >= GAP_MIN_SPACING_S for i in range(len(starts) - 1)):
            return starts.tolist()
    return None


def apply_gaps(x: np.ndarray, sr: int, level: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Insert pauses / make dropouts for a continuity level; returns the gaps on the new timeline."""
    if level == 5:
        return x, []
    count, (dlo, dhi) = labels.CONTINUITY_GAPS[level]
    lengths = [float(rng.uniform(dlo, dhi)) for _ in range(count)]
    kinds = [degrade.PAUSE_KINDS[int(rng.integers(2))] for _ in range(count)]
    starts = _gap_positions(x, sr, kinds, lengths, rng)
    if starts is None:  # dropouts eat speech; as inserted pauses the gaps always fit
        kinds = ["pause"] * count
        starts = _gap_positions(x, sr, kinds, lengths, rng)
    if starts is None:
        raise ValueError(f"speech too short for {count} gaps")
    gaps, offset = [], 0
    for kind, start, length in zip(kinds, starts, lengths):
        a, n = int(round(start * sr)) + offset, int(round(length * sr))
        if kind == "pause":
            x = degrade.insert_silence(x, sr, a / sr, n / sr)
            offset += n
        else:
            x = degrade.dropout(x, sr, a / sr, (a + n) / sr)
        gaps.append({"kind": kind, "start": a / sr, "end": (a + n) / sr})
    return x, gaps


def choose_interval(x: np.ndarray, sr: int, whole_p: float, length_s: tuple[float, float],
                    rng: np.random.Generator) -> tuple[float, float, bool]:
    """The whole clip with probability ``whole_p``, else an interval that overlaps the speech."""
    duration = len(x) / sr
    length = float(rng.uniform(*length_s))
    if rng.random() < whole_p or length >= duration - 0.2:
        return 0.0, duration, True
    s0, s1 = degrade.speech_region(x, sr)
    lo = max(0.0, min(s0 - length / 2, duration - length))
    hi = max(lo, min(duration - length, s1 - length / 2))
    start = float(rng.uniform(lo, hi))
    return start, start + length, False


def apply_distortion(x: np.ndarray, sr: int, level: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
    if level == 5:
        return x, None
    kind = degrade.DISTORTION_KINDS[int(rng.integers(len(degrade.DISTORTION_KINDS)))]
    params = {"kind": kind, "level": level, **labels.DISTORTION_PARAMS[kind][level]}
    start, end, whole = choose_interval(x, sr, labels.DISTORTION_WHOLE_P, labels.DISTORTION_INTERVAL_S, rng)
    params.update(start=start, end=end, whole=whole)
    if kind == "clipping":
        params["gain_db"] = round(float(rng.uniform(*params["gain_db"])), 2)
        y = degrade.clip_interval(x, sr, start, end, params["gain_db"])
    elif kind == "bitcrush":
        hold = max(1, int(round(params["hold"] * sr / 16000)))
        y = degrade.bitcrush_interval(x, sr, start, end, params["bits"], hold)
    elif kind == "bandlimit":
        y = degrade.bandlimit_interval(x, sr, start, end, params["low_hz"], params["high_hz"])
    else:
        y, params["clicks"] = degrade.crackle_interval(x, sr, start, end, params["rate_hz"], params["amplitude"], rng)
    return y, params


def apply_noise(x: np.ndarray, sr: int, level: int, rng: np.random.Generator) -> tuple[np.ndarray, dict | None]:
    """Add noise at an SNR drawn in the level's band, over the clip or a speech-bearing interval."""
    if level == 5:
        return x, None
    kind = degrade.NOISE_KINDS[int(rng.integers(len(degrade.NOISE_KINDS)))]
    snr = round(float(rng.uniform(*labels.NOISE_SNR[level])), 2)
    for _ in range(10):  # an interval over a silent stretch would make the SNR meaningless
        start, end, whole = choose_interval(x, sr, labels.NOISE_WHOLE_P, labels.NOISE_INTERVAL_S, rng)
        if whole or degrade.power(x[degrade.span(sr, start, end, len(x))]) > 0.3 * degrade.power(x):
            break
    else:
        start, end, whole = 0.0, len(x) / sr, True
    bank = babble_bank(sr) if kind == "babble" else None
    noise, extra = degrade.make_noise(kind, len(x), sr, rng, bank)
    y, added = degrade.add_noise(x, sr, noise, snr, start, end)
    sl = degrade.span(sr, start, end, len(x))
    params = {"kind": kind, "level": level, "snr_db": snr, "start": start, "end": end, "whole": whole, **extra,
              "measured_snr_db": round(degrade.snr_db(x[sl], added[sl]), 3)}
    return y, params


def _artifacts(noise: dict | None, dist: dict | None, gaps: list[dict], continuity: int,
               rng: np.random.Generator) -> tuple[list[Artifact], dict[str, list[tuple[str, float, float]]]]:
    """Artifacts (intervals rounded to 10 ms) and the same grouped for the long description."""
    arts, grouped = [], {}
    for group, kind_name, params in (("noise", "noise", noise), ("distortion", "distortion", dist)):
        if params is not None:
            text = labels.artifact_text(group, params["kind"], params["level"], params, rng)
            arts.append(Artifact(kind_name, round(params["start"], 2), round(params["end"], 2), text))
            grouped[group] = [(text, params["start"], params["end"])]
    for gap in gaps:
        text = labels.artifact_text("pause", gap["kind"], continuity, {}, rng)
        arts.append(Artifact("unnatural_pause", round(gap["start"], 2), round(gap["end"], 2), text))
        grouped.setdefault("pause", []).append((text, gap["start"], gap["end"]))
    return arts, grouped


def _scores(job: dict, nat: dict | None, noise: dict | None, dist: dict | None, gaps: list[dict]) -> dict[str, int]:
    """Scores computed back from the parameters by the rules; a level the rules do not give back
    means the parameter tables and thresholds disagree, which is a bug, not bad input."""
    scores = labels.derive_scores(
        speed=labels.speed_score(job["speed"]["tempo"]),
        naturalness=nat["level"] if nat else 5,
        noise=labels.noise_score(noise["snr_db"] if noise else None),
        distortion=dist["level"] if dist else 5,
        continuity=labels.continuity_score([g["end"] - g["start"] for g in gaps]),
    )
    for dim, params in (("noise", noise), ("speed", job["speed"])):
        if params is not None and scores[dim] != params["level"]:
            raise RuntimeError(f"label rule gives {dim}={scores[dim]} for level {params['level']}: {params}")
    return scores


def render_clip(job: dict) -> RenderedClip:
    """Make one clip from a job of ``synth.plan_corpus``. Raises ``TTSError``/``AudioError`` for a
    source that cannot be used and ``ValueError`` for one too short or silent to degrade."""
    sr = job["sample_rate"]
    rng = np.random.default_rng([job["seed"], job["index"], 1])
    clean, meta = clean_speech(job, rng)
    levels = labels.sample_levels(rng)
    x, nat = apply_naturalness(clean, sr, levels["naturalness"], rng)
    x, gaps = apply_gaps(x, sr, levels["continuity"], rng)
    x, dist = apply_distortion(x, sr, levels["distortion"], rng)
    x, noise = apply_noise(x, sr, levels["noise"], rng)
    target_db = float(rng.uniform(*OUT_RMS_DBFS))
    gain = min(10.0 ** (target_db / 20.0) / (degrade.rms(x) + 1e-12), OUT_PEAK / (float(np.abs(x).max()) + 1e-12))
    wave = (x * gain).astype(np.float32)
    scores = _scores(job, nat, noise, dist, gaps)
    arts, grouped = _artifacts(noise, dist, gaps, scores["continuity"], rng)
    duration = len(wave) / sr
    description = labels.long_description(scores, nat["kind"] if nat else None, grouped, duration, rng)
    meta.update(
        split=job["split"], source=job["source"], index=job["index"], seed=job["seed"],
        sentence_id=job["sentence_id"], speed=dict(job["speed"]),
        degradations={"naturalness": nat, "continuity": {"level": scores["continuity"], "gaps": gaps} if gaps else None,
                      "distortion": dist, "noise": noise},
        measured_snr_db=noise["measured_snr_db"] if noise else None,
        duration=round(duration, 4), gain_db=round(20 * np.log10(gain), 2), sample_rate=sr,
    )
    record = Record(scores=scores, artifacts=arts, description=description, voice=labels.voice_text(nat),
                    audio=f"wav/{job['id']}.wav", id=job["id"], meta=_rounded(meta))
    return RenderedClip(wave, clean, record)


def _rounded(obj):
    """Floats to 4 decimals, numpy scalars to Python, so meta is compact, JSON-able and stable."""
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
