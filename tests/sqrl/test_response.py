import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sqrl.dimensions import ARTIFACT_KINDS, DIMENSIONS
from sqrl.response import parse, render, score_spans
from sqrl.schema import Artifact, Assessment, Record

CANONICAL = """Scores:
- Speed: 3/5
- Naturalness: 4/5
- Noise: 2/5
- Distortion: 5/5
- Listening effort: 3/5
- Continuity: 4/5
- Overall quality: 3/5
Artifacts:
- Noise [0.00-1.70 s]: a steady hiss like wind
- Distortion: none
- Unnatural pause [1.20-1.50 s]: the speech stops mid-word
Description: The speech is clear but a hiss covers the first second."""


def test_render_writes_the_canonical_format():
    record = Record(
        scores=dict(zip(DIMENSIONS, [3, 4, 2, 5, 3, 4, 3])),
        artifacts=[
            Artifact("noise", 0.0, 1.7, "a steady hiss like wind"),
            Artifact("unnatural_pause", 1.2, 1.5, "the speech stops mid-word"),
        ],
        description="The speech is clear but a hiss covers the first second.",
        audio="x.wav",
    )
    assert render(record) == CANONICAL
    assert parse(CANONICAL) == record.assessment()


def test_artifacts_first_puts_the_artifact_block_before_the_scores_and_parses_the_same():
    lines = CANONICAL.splitlines()
    scores, artifacts, description = lines[:8], lines[8:12], lines[12:]
    expected = "\n".join(artifacts + scores + description)
    record = parse(CANONICAL)
    text = render(record, artifacts_first=True)
    assert text == expected
    assert parse(text) == record
    # the expected-score reader finds every score digit after the artifact block too
    spans = score_spans(text)
    assert {d: text[a:b] for d, (a, b) in spans.items()} == {d: str(v) for d, v in record.scores.items()}


def test_the_voice_line_ends_the_artifact_block_and_is_read_back_in_either_order():
    record = parse(CANONICAL)
    record.voice = "strongly robotic"
    for artifacts_first in (False, True):
        text = render(record, artifacts_first=artifacts_first, voice=True)
        lines = text.splitlines()
        assert lines[lines.index("- Unnatural pause [1.20-1.50 s]: the speech stops mid-word") + 1] \
            == "- Voice: strongly robotic"
        assert parse(text) == record
        spans = score_spans(text)
        assert {d: text[a:b] for d, (a, b) in spans.items()} == {d: str(v) for d, v in record.scores.items()}
    # without naturalness among the dimensions there is nothing for the voice to be evidence of
    assert "Voice" not in render(record, dimensions=["noise"], artifacts=["noise"], voice=True)
    # naturalness alone: an artifact block that holds only the voice
    assert render(record, dimensions=["naturalness"], artifacts=False, description=False, voice=True,
                  artifacts_first=True) == "Artifacts:\n- Voice: strongly robotic\nScores:\n- Naturalness: 4/5"
    # an answer without a voice writes no line rather than an empty one
    record.voice = None
    assert "Voice" not in render(record, voice=True)


def test_parse_reads_the_voice_line_as_models_write_it_and_nothing_else():
    assert parse("- **Voice**: slightly monotone.").voice == "slightly monotone"
    assert parse("Feeling of voice - hoarse,  a little  breathy").voice == "hoarse, a little breathy"
    assert parse("Artifacts:\n- Noise: none\n- VOICE = natural\nScores:\n- Noise: 5/5").voice == "natural"
    # a score-like value is not a description of the voice, and "voice quality" is no voice line
    assert parse("Voice: 4/5").voice is None
    assert parse("Voice quality: 3/5\nNoise: 2/5").voice is None
    assert parse("Voice:").voice is None
    for value in ("4 out of 5", "3.5/5", "5/5 natural", "2 of 5", "N/A", "none", "-", "?!"):
        assert parse(f"Voice: {value}").voice is None, value
    # a description that happens to start with a negation is still one ("no special feeling": QualiSpeech)
    assert parse("Feeling of voice - no special feeling").voice == "no special feeling"
    # "voice" followed by a hyphenated word is prose, not a voice line, and stays in the description
    a = parse("Scores:\n- Noise: 2/5\nVoice-over artifacts are audible.")
    assert a.voice is None and "Voice-over" in (a.description or "")
    # the first voice line wins; a voice line does not end the scores or swallow a score
    a = parse("Voice: natural\nNoise: 2/5\nVoice: robotic\nNaturalness: 5/5")
    assert (a.voice, a.scores["noise"], a.scores["naturalness"]) == ("natural", 2, 5)
    # inside the description it is prose, not the evidence line
    assert parse("Scores:\n- Noise: 3/5\nDescription: Clear.\nVoice: robotic").voice is None


def test_render_can_limit_dimensions_and_sections():
    a = Assessment(scores={**dict.fromkeys(DIMENSIONS), "noise": 2, "overall": 4}, description="text")
    assert render(a, dimensions=["noise"], artifacts=False, description=False) == "Scores:\n- Noise: 2/5"
    assert render(a, dimensions=["noise"], artifacts=["noise"], description=False).endswith("- Noise: none")


def test_parse_reads_scores_written_many_ways():
    text = """<think>Noise: 1/5, let me think</think>
    ## Quality scores
    * **Noise**: 4 out of 5
    * Distortion - 2/5
    * naturalness score: 3
    1. LISTENING EFFORT (5/5)
    - Continuity:   2
    - MOS: 1
    - Speed = 5
    """
    a = parse(text)
    assert a.scores == {
        "speed": 5, "naturalness": 3, "noise": 4, "distortion": 2,
        "listening_effort": 5, "continuity": 2, "overall": 1,
    }


def test_parse_gives_none_for_missing_out_of_range_and_fractional_scores():
    a = parse("Noise: 7/5\nDistortion: 0\nOverall quality: 3.5\nContinuity: excellent")
    assert all(v is None for v in a.scores.values())


PLACEHOLDERS = ["?/5", "N/A (out of 5)", "unknown/5", "cannot tell, out of 5", "1e309/5", "/5", "of 5",
                "out of 5", "-/5", "x/5", "TBD / 5", "(?/5)", "n.a. out of 5", "none (5 = best)", "- out of 5"]
OTHER_SCALES = ["2/10", "7 out of 10", "80%", "3 out of ten", "4 / 5.0", "3/5/10", "0.8", "4,5", "3rd", "04/5"]


def test_a_placeholder_on_the_scale_is_not_a_score():
    # reward hack: "?/5" on every line used to parse as 5 everywhere (accuracy 3 of 7, format reward 1.0)
    for placeholder in PLACEHOLDERS:
        text = "\n".join(f"- {name}: {placeholder}" for name in ["Noise", "Distortion", "Overall quality"])
        assert all(v is None for v in parse(text).scores.values()), placeholder


def test_other_scales_are_none_not_rescaled():
    for value in OTHER_SCALES:
        assert parse(f"Noise: {value}").scores["noise"] is None, value


def test_scores_on_the_stated_scale_still_parse_with_trailing_words():
    for text, want in [("Noise: 4/5.", 4), ("Noise: 4 / 5, a faint hiss", 4), ("Noise: 4 (slight hiss)", 4),
                       ("Noise: 4 out of five", 4), ("Noise level is 2", 2), ("Noise rating: 3 of 5", 3),
                       ("Noise: -3/5", None), ("Noise: 3.", 3)]:
        assert parse(text).scores["noise"] == want, text


def test_a_placeholder_earns_no_format_or_accuracy_reward():
    from rewards.builtin import Accuracy, Format

    text = "\n".join(["Scores:"] + [f"- {name}: ?/5" for name in
                                     ["Speed", "Naturalness", "Noise", "Distortion", "Listening effort",
                                      "Continuity", "Overall quality"]])
    ref = Record(scores=dict(zip(DIMENSIONS, [5, 5, 5, 3, 2, 1, 4])), audio="a.wav")
    assert Format()([text], [ref]).values == [0.0]
    assert Accuracy()([text], [ref]).values == [0.0]


def test_a_digit_of_another_script_is_not_a_score():
    # int("๑") == 1 in Python: a Thai (or Arabic-Indic, fullwidth) digit must not pass as the score 1
    for digit in ("๑", "١", "１"):
        assert parse(f"- Noise: {digit}/5").scores["noise"] is None
        assert score_spans(f"- Noise: {digit}/5") == {}


def test_parse_keeps_the_first_value_when_a_dimension_repeats():
    assert parse("Noise: 2/5\nNoise: 5/5").scores["noise"] == 2


def test_parse_reads_intervals_in_every_common_spelling():
    text = """Artifacts:
    - Noise: sound similar to wind in the audio from 0-1.7s and 2.1 s to 2.5 s
    - Distortion [0.5-0.9s]: crackling
    - Unnatural pause: a gap between 1.2 and 1.5 seconds
    """
    arts = parse(text).artifacts
    assert [(a.kind, a.start, a.end) for a in arts] == [
        ("noise", 0.0, 1.7), ("noise", 2.1, 2.5), ("distortion", 0.5, 0.9), ("unnatural_pause", 1.2, 1.5),
    ]
    assert arts[0].text == "sound similar to wind in the audio"
    assert arts[2].text == "crackling"
    assert arts[3].text == "a gap"


def test_parse_treats_none_and_not_noticeable_as_no_artifact():
    a = parse("Artifacts:\n- Noise: not noticeable\n- Distortion: Not distorted\n- Unnatural pause: none")
    assert a.artifacts == []
    assert all(v is None for v in a.scores.values())


def test_an_interval_is_not_read_as_a_score():
    a = parse("Noise: 1-2s faint hum\nDistortion at 3.0 s: a click")
    assert a.scores["noise"] is None and a.scores["distortion"] is None
    assert [(x.kind, x.start, x.end) for x in a.artifacts] == [("noise", 1.0, 2.0)]


def test_reversed_or_negative_intervals_are_dropped():
    assert parse("Artifacts:\n- Noise [2.0-1.0 s]: hiss").artifacts == []


def test_description_comes_from_its_header_or_from_loose_prose():
    assert parse("Noise: 3/5\nSummary: noisy but clear.\nSecond line.").description == "noisy but clear. Second line."
    loose = parse("Noise: 3/5\nThe recording is noisy but the words are clear.")
    assert loose.description == "The recording is noisy but the words are clear."
    assert parse("Noise: 3/5").description is None


def test_parse_never_raises_on_junk():
    for junk in [None, 42, "", "\x00\x01", ":::", "Noise", "Noise:", "[[[", "- - -", "<think>", "9" * 5000]:
        assert isinstance(parse(junk), Assessment)


_SAFE_TEXT = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" .,;'()!?"),
    min_size=0, max_size=40,
).map(lambda s: " ".join(s.split()))
_TIME = st.integers(min_value=0, max_value=99_999).map(lambda c: c / 100)


@st.composite
def records(draw):
    scores = {d: draw(st.one_of(st.none(), st.integers(1, 5))) for d in DIMENSIONS}
    artifacts = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(_TIME)
        end = start + draw(_TIME)
        artifacts.append(Artifact(draw(st.sampled_from(ARTIFACT_KINDS)), start, round(end, 2), draw(_SAFE_TEXT)))
    # the canonical order groups artifacts by kind
    artifacts.sort(key=lambda a: ARTIFACT_KINDS.index(a.kind))
    description = draw(st.one_of(st.none(), _SAFE_TEXT.filter(lambda s: s.strip())))
    # a voice phrase as a rubric's voice line writes it: with a letter, no score-like "3/5" or "2 of 5", not a
    # bare placeholder ("none", "n/a"), no trailing stop
    voice = draw(st.one_of(st.none(), _SAFE_TEXT.filter(
        lambda s: s and s == s.strip(" .;,") and re.search(r"[^\W\d_]", s)
        and not re.search(r"\d\s*(?:/|out\s+of\b|of\s+\d)", s, re.I)
        and s.lower() not in {"none", "na", "nil", "null", "unknown", "not applicable"})))
    return Record(scores=scores, artifacts=artifacts, description=description, voice=voice, audio="a.wav")


@settings(max_examples=300, deadline=None)
@given(records(), st.booleans(), st.booleans())
def test_parse_recovers_any_rendered_record(record, artifacts_first, voice):
    expected = record.assessment()
    if not voice:
        expected.voice = None
    assert parse(render(record, artifacts_first=artifacts_first, voice=voice)) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_parse_never_raises_on_arbitrary_text(text):
    result = parse(text)
    assert set(result.scores) == set(DIMENSIONS)
    assert all(v is None or 1 <= v <= 5 for v in result.scores.values())


def test_parse_is_fast_on_very_long_input():
    import time

    text = ("Noise: 3/5 and some words 1.2-1.5s " * 20_000) + "\n" + ("x" * 1_000_000)
    t0 = time.perf_counter()
    parse(text)
    assert time.perf_counter() - t0 < 2.0


_NAMES = st.sampled_from(["Noise", "Distortion", "Overall quality", "MOS", "Listening effort", "Speed",
                          "naturalness score", "CONTINUITY"])
# anything but the digits 1-5; the scale's "5" is then placed only where a scale goes
_NO_SCORE_DIGITS = st.text(
    alphabet=st.characters(blacklist_characters="12345", blacklist_categories=("Cs",)), max_size=30)
_SCALE = st.sampled_from(["/5", " / 5", " out of 5", " of 5", "(out of 5)", "/ 5)", " out of five"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAMES, _NO_SCORE_DIGITS, _SCALE, _NO_SCORE_DIGITS), min_size=1, max_size=8))
def test_no_text_without_a_digit_1_to_5_in_score_position_yields_a_score(lines):
    text = "\n".join(f"- {name}: {before}{scale}{after}" for name, before, scale, after in lines)
    assert all(v is None for v in parse(text).scores.values()), text


@settings(max_examples=300, deadline=None)
@given(_NAMES, st.one_of(st.integers(-10**6, 10**6).filter(lambda n: not 1 <= n <= 5).map(str),
                         st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False).map(repr),
                         st.integers(1, 5).map(lambda n: f"{n}e{n}"),
                         st.integers(1, 5).map(lambda n: f"{n}%")),
       st.sampled_from(["", "/5", " out of 5", "/10", " out of 100"]))
def test_a_number_off_the_1_to_5_scale_is_never_a_score(name, number, scale):
    assert all(v is None for v in parse(f"{name}: {number}{scale}").scores.values())
