import json

import numpy as np
import pytest

from sqrl.dimensions import DIMENSIONS
from sqrl.metrics import paired_bootstrap_pcc, reference_matrix, score_matrix, score_metrics
from sqrl.schema import Assessment, Record


def _clips(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Record(id=f"c{i}", scores={d: int(rng.integers(1, 6)) for d in DIMENSIONS}) for i in range(n)]


def _noisy(refs, spread, seed):
    rng = np.random.default_rng(seed)
    return [Assessment(scores={d: int(np.clip(r.scores[d] + rng.integers(-spread, spread + 1), 1, 5)) for d in DIMENSIONS})
            for r in refs]


def test_the_point_values_are_score_metrics_pcc_with_a_constant_answer_and_a_missing_label():
    refs = _clips(60)
    a, b = _noisy(refs, 1, 1), _noisy(refs, 2, 2)
    refs[3].scores["noise"] = None  # no label: left out of noise's PCC
    for p in b:
        p.scores["distortion"] = 5  # constant: no PCC, 0 in the mean
    b[0] = None  # no answer: every score at the midpoint
    res = paired_bootstrap_pcc({"a": score_matrix(a), "b": score_matrix(b)}, reference_matrix(refs), resamples=200)
    for label, preds in (("a", a), ("b", b)):
        want = score_metrics(preds, refs)["pcc"]
        for name in [*DIMENSIONS, "mean"]:
            got = res[label][name]["pcc"]
            assert (got is None) == (want[name] is None), name
            if got is not None:
                assert got == pytest.approx(want[name], abs=1e-9), (label, name)
    assert res["b"]["mean"]["diff"] == pytest.approx(score_metrics(b, refs)["pcc"]["mean"] - score_metrics(a, refs)["pcc"]["mean"])
    assert "diff" not in res["a"]["mean"]  # the baseline has no difference from itself


def test_a_better_model_is_found_better_and_the_same_model_is_not():
    refs = _clips(200)
    good, poor = score_matrix(_noisy(refs, 1, 1)), score_matrix(_noisy(refs, 3, 2))
    ref = reference_matrix(refs)
    res = paired_bootstrap_pcc({"poor": poor, "good": good, "same": poor.copy()}, ref, resamples=500, seed=3)
    g, s = res["good"]["mean"], res["same"]["mean"]
    assert g["diff"] > 0 and g["low"] > 0 and g["p_not_better"] < 0.01 and g["low"] <= g["diff"] <= g["high"]
    assert s["diff"] == 0 and s["low"] == 0 and s["high"] == 0
    flipped = paired_bootstrap_pcc({"good": good, "poor": poor}, ref, resamples=500, seed=3)["poor"]["mean"]
    assert flipped["diff"] == pytest.approx(-g["diff"]) and flipped["high"] < 0
    again = paired_bootstrap_pcc({"poor": poor, "good": good}, ref, resamples=500, seed=3)["good"]["mean"]
    assert again == g  # a function of the seed


def test_fewer_clips_give_a_wider_interval():
    refs = _clips(400)
    a, b = score_matrix(_noisy(refs, 2, 1)), score_matrix(_noisy(refs, 2, 2))
    ref = reference_matrix(refs)

    def width(n):
        row = paired_bootstrap_pcc({"a": a[:n], "b": b[:n]}, ref[:n], resamples=500)["b"]["mean"]
        return row["high"] - row["low"]

    assert width(40) > 2 * width(400)


def _eval_folder(path, refs, preds, expected=None):
    path.mkdir()
    with open(path / "predictions.jsonl", "w") as fh:
        for k, (r, p) in enumerate(zip(refs, preds)):
            row = {"id": r.id, "text": "", "parsed": p.to_dict() if p else None, "reference": r.to_dict()}
            if expected is not None:
                row["expected_scores"] = expected[k]
            fh.write(json.dumps(row) + "\n")
    return path


def test_evaldiff_reads_eval_folders_pairs_the_clips_and_prints_and_draws(tmp_path, capsys):
    from recipes.cli import main
    from sqrl.evaldiff import read_evals

    refs = _clips(50)
    a = _eval_folder(tmp_path / "a", refs, _noisy(refs, 2, 1), expected=[{"noise": 4.5}] * 50)
    b = _eval_folder(tmp_path / "b", refs[5:], _noisy(refs[5:], 1, 2))  # 5 clips fewer, no expected scores
    ids, scores, ref = read_evals([("a", a), ("b", b)])
    assert ids == [r.id for r in refs[5:]] and ref.shape == (45, len(DIMENSIONS))
    j = DIMENSIONS.index("noise")
    assert (scores["expected"]["a"][:, j] == 4.5).all()  # the readout where there is one...
    assert (scores["expected"]["b"] == scores["greedy"]["b"]).all()  # ...else the integer
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    assert main(["evaldiff", "--evals", f"a={a}", "--evals", f"b={b}", "--resamples", "200",
                 "--out", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["n_clips"] == 45 and set(result["greedy"]) == {"a", "b"}
    assert result["greedy"]["b"]["mean"]["diff"] > 0 and png.stat().st_size > 10_000
    assert "| mean (6 dims) |" in capsys.readouterr().out


def test_evaldiff_refuses_folders_of_different_manifests_and_a_single_folder(tmp_path):
    from sqrl.evaldiff import read_evals

    refs = _clips(10)
    other = _clips(10, seed=9)
    a = _eval_folder(tmp_path / "a", refs, _noisy(refs, 1, 1))
    b = _eval_folder(tmp_path / "b", other, _noisy(other, 1, 1))
    with pytest.raises(ValueError, match="different reference scores"):
        read_evals([("a", a), ("b", b)])
    with pytest.raises(ValueError, match="at least two"):
        read_evals([("a", a)])
    with pytest.raises(FileNotFoundError, match="sqrl eval"):
        read_evals([("a", a), ("c", tmp_path / "missing")])


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")  # PCC bootstrap of 4 clips
def test_score_shares_count_each_score_per_model_against_the_reference(tmp_path, capsys):
    """Hand-counted: 4 clips; noise labels 5, 5, 4, 1; one model answers 4, 4, 4, 1, the other 5, 5, (nothing), 1."""
    from recipes.cli import main
    from sqrl.evaldiff import score_shares

    refs = [Record(id=f"c{i}", scores={"noise": n, "overall": 3}) for i, n in enumerate((5, 5, 4, 1))]
    refs[3].scores["overall"] = None  # unlabelled: unscored in the reference's shares
    fours = [Assessment(scores={"noise": n, "overall": 3}) for n in (4, 4, 4, 1)]
    fives = [Assessment(scores={"noise": 5, "overall": 3}), Assessment(scores={"noise": 5, "overall": 3}), None,
             Assessment(scores={"noise": 1, "overall": 2})]
    a = _eval_folder(tmp_path / "a", refs, fours)
    b = _eval_folder(tmp_path / "b", refs, fives)
    shares = score_shares([("fours", a), ("fives", b)], dims=["noise", "overall"])
    noise = shares["noise"]
    assert noise["reference"] == {"shares": [0.25, 0, 0, 0.25, 0.5], "unscored": 0.0}
    assert noise["fours"]["shares"] == [0.25, 0, 0, 0.75, 0] and noise["fours"]["unscored"] == 0
    assert noise["fours"]["tv"] == pytest.approx(0.5)  # half the mass moved from 5 to 4
    assert noise["fives"]["shares"] == [0.25, 0, 0, 0, 0.5] and noise["fives"]["unscored"] == pytest.approx(0.25)
    # over the clips each scored: fives gives 1/3, 0, 0, 0, 2/3 against 1/4, 0, 0, 1/4, 1/2
    assert noise["fives"]["tv"] == pytest.approx(0.25)
    overall = shares["overall"]
    assert overall["reference"]["shares"] == [0, 0, 0.75, 0, 0] and overall["reference"]["unscored"] == 0.25
    assert overall["fives"]["shares"] == [0, 0.25, 0.5, 0, 0]
    assert overall["fours"]["tv"] == pytest.approx(0.0) and overall["fives"]["tv"] == pytest.approx(1 / 3)

    png = tmp_path / "shares.png"
    assert main(["evaldiff", "--evals", f"fours={a}", "--evals", f"fives={b}", "--resamples", "100",
                 "--shares-plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| Noise | 0.25/0.00/0.00/0.25/0.50 | 0.25/0.00/0.00/0.75/0.00 (TV 0.50) | 0.25/0.00/0.00/0.00/0.50, none 0.25 (TV 0.25) |" in out
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="'reference' is taken"):
        score_shares([("reference", a), ("fives", b)])
