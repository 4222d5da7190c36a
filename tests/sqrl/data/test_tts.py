"""sqrl.data.tts: eSpeak NG through ctypes, repeatable whatever was spoken before."""
import numpy as np
import pytest

from sqrl.data.tts import ACCENTS, VARIANTS, TTSError, Utterance, all_voices, synthesize


def test_synthesis_returns_float_speech_at_the_engine_rate():
    wave, sr = synthesize(Utterance("Hello there, my friend.", voice="en-us+m1"))
    assert sr == 22050 and wave.dtype == np.float32
    assert 0.5 < len(wave) / sr < 3.0 and 0.05 < np.abs(wave).max() <= 1.0


def test_the_same_utterance_is_identical_whatever_was_spoken_before():
    # eSpeak keeps static state (pitch flutter, gain control) and seeds its noise from the clock;
    # the engine reloads and reseeds per utterance so this holds.
    utt = Utterance("The baker shouted quietly.", voice="en-gb-scotland+f3", rate=86, pitch=51, pitch_range=62)
    first, _ = synthesize(utt)
    synthesize(Utterance("Something else entirely, said fast.", voice="en+m1", rate=380, pitch=70))
    again, _ = synthesize(utt)
    assert np.array_equal(first, again)


def test_rate_changes_duration_and_voices_differ():
    text = "The old man painted a blue door near the river."
    slow, sr = synthesize(Utterance(text, rate=90))
    fast, _ = synthesize(Utterance(text, rate=350))
    assert len(slow) / len(fast) > 2.5
    other, _ = synthesize(Utterance(text, voice="en+f3", rate=90))
    assert len(other) != len(slow) or not np.array_equal(other, slow)


def test_voice_list_pairs_every_accent_with_every_variant():
    voices = all_voices()
    assert len(voices) == len(ACCENTS) * len(VARIANTS) == len(set(voices))
    assert voices == sorted(voices)


def test_unknown_language_is_a_clear_error():
    with pytest.raises(TTSError, match="no voice 'zz\\+m1'"):
        synthesize(Utterance("hello", voice="zz+m1"))
