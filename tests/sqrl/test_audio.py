"""sqrl.audio: loading, mono mix, resampling, validation errors and atomic saving."""
import numpy as np
import pytest
import soundfile as sf

from sqrl.audio import (MIN_CLIP_SECONDS, AudioError, audio_info, find_audio_files, header_problem, load_audio,
                        read_audio, resample, save_audio, to_mono)


def _sine(sr, seconds=0.5, hz=440.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("ext,subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_load_audio_reads_wav_flac_and_ogg_at_16k(tmp_path, ext, subtype):
    path = tmp_path / f"a{ext}"
    sf.write(path, _sine(16000), 16000, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 1  # ogg may pad a sample or so
    assert 0.45 < np.abs(wave).max() < 0.55


def test_stereo_is_averaged_to_mono(tmp_path):
    left = np.full(1600, 0.5, dtype=np.float32)
    right = np.full(1600, 0.25, dtype=np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(wave, 0.375, atol=1e-6)


def test_other_rates_are_resampled_to_the_requested_rate(tmp_path):
    sf.write(tmp_path / "a.wav", _sine(8000, seconds=1.0, hz=300), 8000)
    wave = load_audio(tmp_path / "a.wav", sampling_rate=16000)
    assert len(wave) == 16000
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
    assert abs(peak_hz - 300) <= 2


def test_resample_is_a_no_op_at_the_same_rate_and_rejects_bad_rates():
    x = _sine(16000)
    assert resample(x, 16000, 16000) is not None and np.array_equal(resample(x, 16000, 16000), x)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def test_to_mono_rejects_three_dimensional_arrays():
    with pytest.raises(ValueError, match="shape"):
        to_mono(np.zeros((2, 2, 2)))


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_a_text_file_is_unreadable_audio(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioError, match="unreadable audio") as exc:
        load_audio(bad)
    assert exc.value.path == str(bad)


def test_empty_file_is_refused(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty audio"):
        load_audio(tmp_path / "e.wav")


def test_nan_samples_are_refused_with_their_count(tmp_path):
    x = _sine(16000)
    x[10] = np.nan
    x[20] = np.inf
    sf.write(tmp_path / "n.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="2 NaN or infinite samples"):
        load_audio(tmp_path / "n.wav")


def test_clips_over_max_seconds_are_refused(tmp_path):
    sf.write(tmp_path / "l.wav", _sine(16000, seconds=2.0), 16000)
    assert len(load_audio(tmp_path / "l.wav", max_seconds=2.5)) == 32000
    with pytest.raises(AudioError, match="too long: 2.00 s > limit 1.5 s"):
        load_audio(tmp_path / "l.wav", max_seconds=1.5)


def test_audio_info_and_read_audio_report_the_file_as_stored(tmp_path):
    sf.write(tmp_path / "s.flac", np.zeros((2205, 2), dtype=np.float32), 22050)
    info = audio_info(tmp_path / "s.flac")
    assert (info.sample_rate, info.channels, info.frames) == (22050, 2, 2205)
    assert info.duration == pytest.approx(0.1)
    wave, sr = read_audio(tmp_path / "s.flac")
    assert wave.shape == (2205, 2) and sr == 22050


def test_save_audio_writes_atomically_and_refuses_nan(tmp_path):
    path = save_audio(tmp_path / "sub" / "x.wav", _sine(16000), 16000)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["x.wav"]
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "y.wav", np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(AudioError, match="unsupported extension"):
        save_audio(tmp_path / "y.mp3", _sine(16000))
    assert not (tmp_path / "y.wav").exists()


def test_find_audio_files_is_recursive_sorted_and_ignores_other_files(tmp_path):
    for rel in ["b/2.flac", "a/1.wav", "c.OGG", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)] == ["a/1.wav", "b/2.flac", "c.OGG"]
    with pytest.raises(FileNotFoundError):
        find_audio_files(tmp_path / "missing")


@pytest.mark.parametrize("sr,frames,usable", [(16000, 800, False), (16000, 1599, False), (16000, 1600, True),
                                               (44100, 4409, False), (44100, 4410, True), (8000, 799, False)])
def test_one_rule_sets_the_shortest_usable_clip_at_any_rate(tmp_path, sr, frames, usable):
    path = tmp_path / "a.wav"
    sf.write(path, _sine(sr, seconds=frames / sr), sr)
    assert (header_problem(audio_info(path)) is None) == usable
    if usable:
        assert len(load_audio(path)) >= MIN_CLIP_SECONDS * 16000  # what the backbone's own check asks
    else:
        with pytest.raises(AudioError, match=f"{path}: too short for the model") as info:
            load_audio(path)
        assert info.value.category == "too short"
        assert len(load_audio(path, min_seconds=None)) > 0  # a source to crop may be any length


def test_every_unusable_clip_has_its_category(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 3, np.float32), 16000)
    nan = _sine(16000)
    nan[3] = np.inf
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    (tmp_path / "text.wav").write_text("not audio")
    expected = {"empty.wav": "empty audio", "long.wav": "too long", "nan.wav": "NaN samples",
                "text.wav": "audio unreadable", "gone.wav": "audio missing"}
    for name, category in expected.items():
        with pytest.raises(AudioError) as info:
            load_audio(tmp_path / name, max_seconds=2.0)
        assert info.value.category == category and str(tmp_path / name) in str(info.value)
