"""Reading scores out of judge text, and expected scores out of token probabilities."""
import math

import pytest

from judges.verdicts import expected_verdict, parse_verdict, score_probs

# ------------------------------------------------------------------ parse_verdict


@pytest.mark.parametrize(
    "text, score",
    [
        ("Score: 7/10", 7.0),
        ("**8**", 8.0),
        ("I'd give it a 6.5", 6.5),
        ('{"score": 9}', 9.0),
        ('```json\n{"score": 3, "reason": "wrong interval"}\n```', 3.0),
        ("<think>The reference says 2, the answer 4. Maybe 3?</think>\nScore: 5", 5.0),
        ("<THINK>hmm 1</THINK> 6", 6.0),
        ("Final score: **9**/10", 9.0),
        ("Rating - 4 out of 10.", 4.0),
        ("score is 10", 10.0),
        ("Score: seven.", 7.0),
        ("0", 0.0),
        ("  7  \n", 7.0),
        ("I scored it 2 because the interval is wrong.", 2.0),
        ("The answer names 3 artifacts; score: 6", 6.0),  # the label beats a stray number
        ("Score: 4\nOn reflection, Score: 8", 8.0),  # the last restatement wins
    ],
)
def test_verdict_parsing_reads_the_score_from_ugly_judge_text(text, score):
    parsed = parse_verdict(text, (0, 10))
    assert parsed.error is None
    assert parsed.score == score


def test_a_fraction_on_another_scale_is_rescaled_to_the_requested_scale():
    assert parse_verdict("Score: 4/5", (0, 10)).score == 8.0
    assert parse_verdict("8/10", (1, 5)).score == 4.0


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty verdict"),
        ("   \n", "empty verdict"),
        (None, "not text"),
        (12, "not text"),
        ("<think>the answer says 3 and I think", "unfinished <think>"),
        ("The answer is fine.", "no score"),
        ("Score: 15", "out of range"),
        ("Score: -2", "out of range"),
        ("Score: 3/0", "fraction"),
        ("score: one of the best", "no score"),  # a number word inside prose is not a verdict
    ],
)
def test_text_without_a_usable_score_gives_none_and_says_why(text, reason):
    parsed = parse_verdict(text, (0, 10))
    assert parsed.score is None
    assert reason in parsed.error


def test_the_score_offset_points_at_the_number_in_the_original_text():
    text = "<think>3</think> Score: 7"
    parsed = parse_verdict(text)
    assert text[parsed.start] == "7"


def test_verdict_parsing_stays_fast_and_safe_on_a_huge_adversarial_text():
    text = "score " * 50_000 + "<think>" * 100 + "</think>Score: 4"
    assert parse_verdict(text).score == 4.0


# ------------------------------------------------------------------ score_probs


def table(options):
    """A next_dists stand-in: maps a path (tuple of token texts) to its options; the keys are texts."""

    def next_dists(items):
        return [[(t, t, p) for t, p in options.get(path, {}).items()] for _, path in items]

    return next_dists


def test_single_token_scores_give_their_probabilities():
    probs = score_probs(table({(): {"3": 0.5, "4": 0.25, "x": 0.25}}), 1, (1, 5))[0]
    assert probs == {3: 0.5, 4: 0.25}
    verdict = expected_verdict(probs, min_mass=0.05)
    assert verdict.score == pytest.approx((3 * 0.5 + 4 * 0.25) / 0.75)
    assert verdict.mass == 0.75


def test_ten_split_into_one_and_zero_is_followed_to_its_end():
    # P("1") = 0.8, then P("0" | "1") = 0.75: P(10) = 0.6, P(1) = 0.8 * 0.25 = 0.2; P(9) = 0.2
    options = {(): {" ": 0.0, "1": 0.8, "9": 0.2}, ("1",): {"0": 0.75, ".": 0.25}}
    probs = score_probs(table(options), 1, (0, 10))[0]
    assert probs[10] == pytest.approx(0.6)
    assert probs[1] == pytest.approx(0.2)
    assert probs[9] == pytest.approx(0.2)
    assert expected_verdict(probs, 0.05).score == pytest.approx(6 + 0.2 + 1.8)


def test_a_whitespace_token_before_the_number_is_stepped_over_once():
    options = {(): {" ": 0.9, "7": 0.1}, (" ",): {"8": 1.0, " ": 0.0}}
    probs = score_probs(table(options), 1, (0, 10))[0]
    assert probs == pytest.approx({7: 0.1, 8: 0.9})


def test_an_out_of_range_continuation_is_not_counted_as_a_score():
    # "1" then "5" is 15: outside 0-10, so it belongs to no score; "1" ending keeps 1 - P(digit continuation)
    options = {(): {"1": 1.0}, ("1",): {"5": 0.5, "0": 0.25}}
    probs = score_probs(table(options), 1, (0, 10))[0]
    assert probs == pytest.approx({10: 0.25, 1: 0.25})


def test_a_single_token_ten_and_a_split_ten_add_up():
    options = {(): {"10": 0.3, "1": 0.4, "5": 0.3}, ("1",): {"0": 0.5}}
    probs = score_probs(table(options), 1, (0, 10))[0]
    assert probs == pytest.approx({10: 0.5, 1: 0.2, 5: 0.3})


def test_branches_below_eps_are_not_expanded():
    calls = []

    def next_dists(items):
        calls.append(list(items))
        return [[("1", "1", 1e-5), ("4", "4", 0.9)] for _ in items]

    probs = score_probs(next_dists, 2, (0, 10), eps=1e-3)
    assert len(calls) == 1  # nothing worth a second pass
    assert probs[0] == pytest.approx({1: 1e-5, 4: 0.9})


def test_low_score_mass_fails_instead_of_renormalising_noise():
    verdict = expected_verdict({7: 0.01}, min_mass=0.05)
    assert verdict.score is None and "low score mass" in verdict.error
    assert expected_verdict({}, 0.05).score is None


def test_the_expected_score_is_a_proper_weighted_mean():
    probs = {0: 0.25, 10: 0.25}
    verdict = expected_verdict(probs, 0.05)
    assert verdict.score == 5.0 and math.isclose(verdict.mass, 0.5)


# ------------------------------------------------------------------ properties

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from([(0, 10), (1, 5)]))
def test_parse_verdict_never_raises_and_any_score_lies_on_the_scale(text, scale):
    parsed = parse_verdict(text, scale)
    assert (parsed.score is None) != (parsed.error is None)
    if parsed.score is not None:
        assert scale[0] <= parsed.score <= scale[1]


def test_whitespace_is_not_followed_when_the_prompt_already_ends_in_a_space():
    options = {(): {" ": 0.3, "7": 0.7}, (" ",): {"8": 1.0}}
    calls = []

    def next_dists(items):
        calls.append(items)
        return table(options)(items)

    probs = score_probs(next_dists, 1, (0, 10), step_space=False)[0]
    assert probs == {7: 0.7} and len(calls) == 1
