"""Metrics against hand-worked values (paper Tables 1 and 3)."""
import json
import math

import numpy as np
import pytest

from sqrl.dimensions import DIMENSIONS, EVAL_DIMENSIONS
from sqrl.metrics import (
    compute_metrics,
    detection_f1,
    intersection_length,
    interval_iou,
    kind_text,
    merge_intervals,
    rouge_l,
    score_metrics,
    text_similarity,
    voice_metrics,
)
from sqrl.schema import Artifact, Assessment, Record


def rec(**scores):
    return Record(scores=dict(scores), audio="x.wav")


def pred(**scores):
    return Assessment(scores=dict(scores))


def no_nan(obj):
    if isinstance(obj, dict):
        return all(no_nan(v) for v in obj.values())
    return not (isinstance(obj, float) and math.isnan(obj))


def test_pearson_spearman_and_mae_equal_hand_worked_values():
    refs = [rec(noise=s) for s in (1, 2, 3, 4)]
    preds = [pred(noise=s) for s in (1, 3, 2, 4)]
    m = score_metrics(preds, refs)
    # deviations: ref (-1.5,-.5,.5,1.5), pred (-1.5,.5,-.5,1.5); cov sum = 2.25-.25-.25+2.25 = 4; var sums 5, 5
    assert m["pcc"]["noise"] == pytest.approx(4 / 5)
    # ranks equal the values here, so Spearman equals Pearson
    assert m["srcc"]["noise"] == pytest.approx(0.8)
    assert m["mae"]["noise"] == pytest.approx(0.5)


def test_a_missing_prediction_is_filled_with_the_midpoint_and_counts_against_parse_rate():
    refs = [rec(noise=s) for s in (1, 2, 5)]
    preds = [pred(noise=1), Assessment(), None]  # unparseable answer and failed generation
    m = compute_metrics(preds, refs, embed=False)
    # filled predictions (1, 3, 3) vs (1, 2, 5): MAE (0 + 1 + 2) / 3
    assert m["mae"]["noise"] == pytest.approx(1.0)
    x, y = np.array([1, 3, 3.0]), np.array([1, 2, 5.0])
    assert m["pcc"]["noise"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert m["parse_rate"] == pytest.approx(1 / 3)
    assert m["n"] == 3


def test_a_missing_reference_score_leaves_that_clip_out_of_the_dimension():
    refs = [rec(noise=1), rec(noise=5), rec()]
    preds = [pred(noise=1), pred(noise=5), pred(noise=1)]
    m = score_metrics(preds, refs)
    assert m["pcc"]["noise"] == pytest.approx(1.0)
    assert m["mae"]["noise"] == 0.0


def test_constant_predictions_give_none_not_nan_and_count_zero_in_the_mean():
    refs = [rec(**{d: s for d in DIMENSIONS}) for s in (1, 3, 5)]
    preds = [pred(**{d: s for d in DIMENSIONS}) for s in (1, 3, 5)]
    for p in preds:
        p.scores["naturalness"] = 3  # constant
    m = compute_metrics(preds, refs, embed=False)
    assert m["pcc"]["naturalness"] is None
    assert m["pcc"]["noise"] == pytest.approx(1.0)
    # six evaluated dimensions: five perfect, naturalness counted as 0
    assert m["pcc"]["mean"] == pytest.approx(5 / 6)
    assert no_nan(m)


def test_the_mean_pcc_skips_dimensions_whose_references_cannot_support_a_correlation():
    refs = [rec(noise=s, distortion=4) for s in (1, 3, 5)]  # distortion references are constant
    preds = [pred(noise=s, distortion=s) for s in (1, 3, 5)]
    m = score_metrics(preds, refs)
    assert m["pcc"]["distortion"] is None
    assert m["pcc"]["mean"] == pytest.approx(1.0)  # only noise is usable


def test_speed_is_reported_but_left_out_of_the_mean():
    refs = [rec(speed=s, noise=s) for s in (1, 3, 5)]
    preds = [pred(speed=6 - s, noise=s) for s in (1, 3, 5)]
    m = score_metrics(preds, refs)
    assert m["pcc"]["speed"] == pytest.approx(-1.0)
    assert "speed" not in EVAL_DIMENSIONS
    assert m["pcc"]["mean"] == pytest.approx(1.0)


def test_union_and_intersection_of_intervals_are_exact():
    assert merge_intervals([(3, 4), (0, 1), (0.5, 2), (2, 2.5)]) == [(0, 2.5), (3, 4)]
    assert intersection_length([(0, 2), (3, 5)], [(1, 4)]) == pytest.approx(2.0)
    # pred union 4 s, ref 3 s, overlap 2 s -> 2 / 5
    assert interval_iou([(0, 2), (3, 5)], [(1, 4)]) == pytest.approx(0.4)
    assert interval_iou([], []) is None
    assert interval_iou([(1, 1)], [(1, 1)]) is None


def test_detection_f1_counts_clips_and_is_none_without_any_positive():
    assert detection_f1([True, True, True, False], [True, True, False, True]) == pytest.approx(2 * 2 / (4 + 1 + 1))
    assert detection_f1([False, False], [False, False]) is None


def art(kind, start, end, text="x"):
    return Artifact(kind, start, end, text)


def test_artifact_metrics_on_a_hand_worked_set():
    refs = [
        Record(audio="a", artifacts=[art("noise", 0, 2, "steady hiss")]),
        Record(audio="b", artifacts=[art("noise", 1, 3, "hum")]),
        Record(audio="c", artifacts=[]),
        Record(audio="d", artifacts=[art("unnatural_pause", 1, 1.5, "a long gap")]),
    ]
    preds = [
        Assessment(artifacts=[art("noise", 1, 3, "steady hiss")]),  # tp, IoU 1/3, same text
        Assessment(artifacts=[]),  # fn
        Assessment(artifacts=[art("noise", 0, 1, "buzz")]),  # fp
        Assessment(artifacts=[art("unnatural_pause", 1, 1.5, "a long gap")]),  # tp, IoU 1
    ]
    a = compute_metrics(preds, refs)["artifacts"]
    assert a["noise"]["f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert a["noise"]["iou"] == pytest.approx(1 / 3)
    assert a["noise"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert a["unnatural_pause"] == {"f1": 1.0, "iou": 1.0, "similarity": pytest.approx(1.0, abs=1e-5)}
    assert a["distortion"] == {"f1": None, "iou": None, "similarity": None}


def test_a_reference_without_annotated_time_is_left_out_of_iou_but_not_of_f1():
    refs = [Record(audio="a", artifacts=[art("noise", 0, 0, "hiss")])]
    preds = [Assessment(artifacts=[art("noise", 0, 1, "hiss")])]
    a = compute_metrics(preds, refs, embed=False)["artifacts"]["noise"]
    assert a == {"f1": 1.0, "iou": None, "similarity": None}


def test_several_artifacts_of_a_kind_are_joined_in_time_order():
    a = Assessment(artifacts=[art("noise", 2, 3, "later hum"), art("noise", 0, 1, "early hiss"),
                              art("distortion", 0, 1, "clip")])
    assert kind_text(a, "noise") == "early hiss; later hum"
    assert kind_text(a, "unnatural_pause") is None


def test_text_similarity_follows_the_empty_text_rule():
    assert text_similarity(["", "", "hiss"], ["", "hum", ""]) == [1.0, 0.0, 0.0]


def test_rouge_l_equals_the_longest_common_subsequence_f_measure():
    refs = [Record(audio="a", description="the speech is clear"), Record(audio="b", description="loud hum")]
    preds = [Assessment(description="the speech sounds clear"), Assessment()]
    # clip 1: LCS "the speech clear" = 3 of 4 tokens each side -> P = R = F = 0.75; clip 2 missing -> 0
    assert rouge_l(preds, refs) == pytest.approx((0.75 + 0.0) / 2)
    assert rouge_l(preds, [rec(), rec()]) is None


def test_voice_metrics_count_stated_exact_and_similar_lines_over_clips_with_a_reference_voice():
    refs = [Record(audio="a", voice="natural"), Record(audio="b", voice="strongly robotic"),
            Record(audio="c", voice="slightly warbling"), Record(audio="d")]
    preds = [Assessment(voice=" Natural "), Assessment(voice="strongly monotone"), None,
             Assessment(voice="robotic")]
    m = voice_metrics(preds, refs)
    assert (m["n"], m["stated"], m["exact"]) == (3, pytest.approx(2 / 3), pytest.approx(1 / 3))
    sims = text_similarity([" Natural ", "strongly monotone", ""], ["natural", "strongly robotic", "slightly warbling"])
    assert sims[2] == 0.0 and 0.5 < sims[1] < 1.0
    assert m["similarity"] == pytest.approx(sum(sims) / 3)
    # the reference is compared as the parser reads a voice line: a closing stop is no difference
    assert voice_metrics([Assessment(voice="calm and clear")], [Record(audio="a", voice="Calm and clear.")],
                         embed=False)["exact"] == 1.0
    assert voice_metrics(preds, [Record(audio=x) for x in "abcd"], embed=False) == {
        "n": 0, "stated": None, "exact": None, "similarity": None}


def test_rouge_l_is_none_where_no_description_was_asked_for():
    """A calibration eval (all-dimensions prompting) reported ROUGE-L 0.00 for answers that rightly had none."""
    refs = [Record(audio="a", scores={"noise": 2}, description="Loud hiss throughout.")]
    preds = [Assessment(scores={"noise": 2})]
    assert compute_metrics(preds, refs, embed=False)["long_form"]["rouge_l"] == 0.0
    assert compute_metrics(preds, refs, embed=False, descriptions=False)["long_form"]["rouge_l"] is None


def test_compute_metrics_returns_exactly_the_documented_keys_and_serialises_to_json():
    refs = [Record(audio="a", scores={"noise": 2}, description="noisy")]
    m = compute_metrics([Assessment()], refs, embed=False)
    assert set(m) == {"pcc", "srcc", "mae", "parse_rate", "artifacts", "voice", "long_form", "n"}
    assert set(m["pcc"]) == set(DIMENSIONS) | {"mean"}
    assert set(m["artifacts"]) == {"noise", "distortion", "unnatural_pause"}
    assert set(m["long_form"]) == {"rouge_l"}
    json.dumps(m, allow_nan=False)


def test_empty_input_gives_none_everywhere_and_zero_n():
    m = compute_metrics([], [], embed=False)
    assert m["n"] == 0 and m["parse_rate"] is None and m["pcc"]["mean"] is None
    json.dumps(m, allow_nan=False)


def test_mismatched_lengths_and_raw_strings_are_clear_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics([Assessment(), Assessment()], [rec()])
    with pytest.raises(TypeError, match="sqrl.response.parse"):
        compute_metrics(["Noise: 3/5"], [rec(noise=3)])
