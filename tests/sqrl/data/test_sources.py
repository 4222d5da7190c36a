"""Real recordings as clean sources (``--clean-dir``): any rate, stereo, 1-10 s, any loudness, room tone
around the speech are used; clipped, noisy, silent or cancelling ones are skipped with their reason."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from sqrl.audio import load_audio, resample
from sqrl.data.render import OUT_RMS_DBFS
from sqrl.data.sources import estimate_snr_db, inspect_source, remove_dc
from sqrl.data.synth import SynthConfig, scan_clean_dir, synthesize_corpus
from sqrl.data.tts import Utterance, synthesize
from sqrl.schema import read_manifest

TEXT = "The painter opened the kitchen window early in the morning and sang a song."


@pytest.fixture(scope="module")
def speech():
    wave, sr = synthesize(Utterance(TEXT, voice="en-us+f2"))
    return resample(wave, sr, 16000), 16000


def _with_noise(wave, snr_db, seed=0):
    noise = np.random.default_rng(seed).standard_normal(len(wave)).astype(np.float32)
    p_speech, p_noise = np.mean(wave.astype(float) ** 2), np.mean(noise.astype(float) ** 2)
    return (wave + noise * np.sqrt(p_speech / p_noise / 10 ** (snr_db / 10))).astype(np.float32)


def test_the_snr_estimate_reads_clean_speech_high_and_tracks_added_noise(speech):
    wave, sr = speech
    clean = estimate_snr_db(wave, sr)
    assert clean > 33  # continuous clean speech: its own quiet frames are the floor
    readings = [estimate_snr_db(_with_noise(wave, snr), sr) for snr in (30, 20, 10)]
    assert readings == sorted(readings, reverse=True)
    # the loudest frames sit above the mean speech power: stationary noise reads ~4.5 dB above its true SNR
    assert all(2 < r - snr < 7 for r, snr in zip(readings, (30, 20, 10))), readings


def test_usable_and_unusable_sources_are_told_apart_with_reasons(tmp_path, speech):
    wave, sr = speech
    root = tmp_path / "clean"
    (root / "a").mkdir(parents=True)
    sf.write(root / "a" / "clipped.wav", np.clip(wave * 25, -1, 1), sr)
    sf.write(root / "a" / "noisy.wav", _with_noise(wave, 12), sr)
    sf.write(root / "a" / "cancel.wav", np.stack([wave, -wave], 1), sr)
    sf.write(root / "a" / "silent.wav", np.zeros(sr, dtype=np.float32), sr)
    sf.write(root / "a" / "blip.wav", np.r_[np.zeros(sr), wave[:1600], np.zeros(sr)], sr)  # 0.1 s of sound
    w8 = resample(wave, sr, 8000)
    sf.write(root / "a" / "quiet_8k.wav", w8 * 10 ** (-50 / 20) / np.sqrt(np.mean(w8 ** 2)), 8000)
    sf.write(root / "a" / "hires.wav", resample(wave, sr, 96000), 96000, subtype="PCM_24")
    sf.write(root / "a" / "dc.flac", wave * 0.5 + 0.3, sr)
    sf.write(root / "a" / "one_second.ogg", wave[:sr], sr)
    by_speaker, skipped, checks = scan_clean_dir(root)
    reasons = {s.split(": ", 1)[0].rsplit("/", 1)[1]: s.split(": ", 1)[1] for s in skipped}
    assert reasons["clipped.wav"].startswith("clipped")
    assert reasons["noisy.wav"].startswith("too noisy") and "--min-source-snr-db" in reasons["noisy.wav"]
    assert reasons["cancel.wav"] == "channels cancel when mixed to mono"
    assert reasons["silent.wav"] == "silent"
    assert reasons["blip.wav"].startswith("only 0.1")
    assert sorted(p.rsplit("/", 1)[1] for p in by_speaker["a"]) == ["dc.flac", "hires.wav", "one_second.ogg",
                                                                   "quiet_8k.wav"]
    # a lower bar lets the noisy one in, and nothing else changes
    assert "noisy.wav" in {p.rsplit("/", 1)[1] for p in scan_clean_dir(root, min_snr_db=8)[0]["a"]}
    assert all(c.speech[1] > c.speech[0] for c in checks.values())


def test_room_tone_around_the_speech_never_becomes_a_clean_clip(tmp_path, speech):
    wave, sr = speech
    rng = np.random.default_rng(1)
    tone = lambda s: (1e-4 * rng.standard_normal(int(s * 44100))).astype(np.float32)  # -80 dBFS room
    loud = resample(wave, sr, 44100)
    dur = len(loud) / 44100
    for spk in ("alice", "bob"):
        (tmp_path / "clean" / spk).mkdir(parents=True)
        mono = np.r_[tone(3.0), loud, tone(2.0)]
        sf.write(tmp_path / "clean" / spk / "take.wav", np.stack([mono, mono], 1), 44100)
    out = tmp_path / "corpus"
    synthesize_corpus(SynthConfig(out=out, num=8, seed=3, workers=1, clean_dir=tmp_path / "clean",
                                  test_fraction=0.25, pesq=False))
    records = read_manifest(out / "train.jsonl") + read_manifest(out / "test.jsonl")
    assert len(records) == 8
    for r in records:
        start, end = r.meta["crop_seconds"]
        assert 3.0 - 0.03 <= start and end <= 3.0 + dur + 0.03, (start, end)
        assert r.meta["source_snr_db"] > 40
        clip = load_audio(r.audio)
        rms_db = 20 * np.log10(np.sqrt(np.mean(clip.astype(float) ** 2)))
        assert OUT_RMS_DBFS[0] - 0.5 <= rms_db <= OUT_RMS_DBFS[1] + 0.5 or np.abs(clip).max() > 0.9


def test_a_dc_offset_is_removed_before_the_crop(tmp_path, speech):
    wave, sr = speech
    assert abs(float(np.mean(remove_dc(wave + 0.3)))) < 1e-6
    path = tmp_path / "dc.wav"
    sf.write(path, wave * 0.5 + 0.3, sr)
    check = inspect_source(path)
    assert check.snr_db > 33 and check.clipped_fraction == 0.0
