"""``sqrl agreement``: within-group rankings of a run's logged completions, and rescoring them."""
import json

import pytest

from grpo.agreement import agreement, groups_of, rescore, run, spearman
from sqrl.response import render
from sqrl.schema import Record


def _sample(step, clip, index, a, b, truncated=False, text="x"):
    return {"step": step, "clip": clip, "index": index, "reference": {"noise": 5}, "text": text,
            "truncated": truncated, "reward": a, "rewards": {"a": a, "b": b}, "components": {}, "advantage": 0.0}


def test_rankings_are_compared_within_groups_and_flat_groups_carry_no_signal():
    rows = [_sample(1, "c0", i, a, b) for i, (a, b) in enumerate([(1, 4), (2, 3), (3, 2), (4, 1)])]
    rows += [_sample(1, "c1", i, a, 0.5, truncated=i < 2) for i, a in enumerate([0.1, 0.9, 0.3, 0.2])]
    # the same clip twice in one step (an epoch boundary) is two groups
    rows += [_sample(2, "c0", i, a, a) for i, a in enumerate([1, 2, 3, 4])]
    rows += [_sample(2, "c0", i, a, a) for i, a in enumerate([4, 3, 2, 1])]
    assert [len(g) for g in groups_of(rows)] == [4, 4, 4, 4]
    report = agreement(rows)
    a, b = report["rewards"]["a"], report["rewards"]["b"]
    assert report["n_groups"] == 4
    assert a["spearman"]["b"] == {"mean": pytest.approx((-1 + 1 + 1) / 3), "n_groups": 3}  # c1's b is flat
    assert b["flat"] == 0.25 and a["flat"] == 0.0
    # a: cut-off completions (0.1, 0.9) against complete ones (0.3, 0.2 and the 12 others)
    complete = [1, 2, 3, 4, 0.3, 0.2, 1, 2, 3, 4, 4, 3, 2, 1]
    assert a["truncated_minus_complete"] == pytest.approx(0.5 - sum(complete) / len(complete))
    assert spearman([1, 1, 2, 2], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert spearman([1, 1, 1, 1], [0, 1, 2, 3]) is None


def test_rescoring_adds_a_reward_that_ranks_the_right_answer_first(tmp_path):
    ref = Record(id="c0", audio="", scores={"noise": 2, "distortion": 5, "overall": 3})
    wrong = Record(id="c0", audio="", scores={"noise": 5, "distortion": 1, "overall": 5})
    texts = [render(ref), render(wrong), "no scores at all", render(ref)]
    rows = [{**_sample(1, "c0", i, 0.1 * i, 0.0, text=t), "reference": ref.scores} for i, t in enumerate(texts)]
    rescore(rows, [{"name": "accuracy"}], manifest=None)
    acc = [r["rewards"]["accuracy"] for r in rows]
    assert acc[0] == acc[3] > acc[1] and "accuracy/noise" in rows[0]["components"]
    # the CLI reads a run directory and writes the report
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import argparse

    args = argparse.Namespace(samples=str(tmp_path), score=["{name: accuracy}"], manifest=None, steps="1",
                              components=["accuracy"], out=str(tmp_path / "agreement.json"))
    assert run(args) == 0
    report = json.loads((tmp_path / "agreement.json").read_text())
    assert {"a", "b", "accuracy", "accuracy/noise", "accuracy/overall", "accuracy/mean"} <= set(report["rewards"])
    rescored = [json.loads(line) for line in (tmp_path / "agreement.samples.jsonl").read_text().splitlines()]
    # the right answer matches on every dimension: the components' mean is 1
    assert rescored[0]["rewards"]["accuracy/mean"] == pytest.approx(1.0)
    assert (tmp_path / "agreement.samples.jsonl").exists()


def test_models_answers_to_the_same_clips_are_compared_clip_by_clip(tmp_path, capsys):
    """--evals: one group per held-out clip, one member per model; each model's mean reward and its paired
    difference from the first model with the standard error of the mean difference."""
    import argparse

    from grpo.agreement import add_arguments

    refs = [Record(id=f"c{i}", audio="", scores={"noise": n, "overall": o}) for i, (n, o) in
            enumerate([(1, 2), (3, 3), (5, 4), (2, 5)])]

    def write(label, answers):
        folder = tmp_path / label
        folder.mkdir()
        rows = [{"id": r.id, "text": text, "reference": r.to_dict()} for r, text in zip(refs, answers)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        return folder

    def wrong(r, dims):
        return Record(id=r.id, audio="", scores={d: (s if d not in dims else 6 - s if s != 3 else 1)
                                                  for d, s in r.scores.items()})

    start = write("start", [render(wrong(r, {"noise", "overall"})) for r in refs])  # both scores wrong
    after = write("after", [render(refs[0]), render(refs[1]), render(wrong(refs[2], {"noise"})), "no scores"])
    extra = write("extra", [render(r) for r in refs[:3]])  # answers only three of the clips

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    out = tmp_path / "report.json"
    args = ap.parse_args(["--evals", f"start={start}", "--evals", f"after={after}", "--evals", f"extra={extra}",
                          "--score", "{name: accuracy}", "--out", str(out)])
    assert run(args) == 0
    report = json.loads(out.read_text())
    assert report["n_groups"] == 3 and report["n_samples"] == 9  # c3 is not answered by every model
    acc = report["by_model"]["accuracy"]
    # accuracy sums the exact matches over the two dimensions: start 0 on every clip; after 2, 2, 1
    assert acc["start"] == {"mean": 0.0, "n": 3, "diff": None, "diff_se": None}
    assert acc["after"]["mean"] == pytest.approx(5 / 3) and acc["after"]["diff"] == pytest.approx(5 / 3)
    assert acc["after"]["diff_se"] == pytest.approx(0.57735 / 3 ** 0.5, rel=1e-4)  # std of (2, 2, 1) / sqrt(3)
    assert acc["extra"]["diff"] == pytest.approx(2.0) and acc["extra"]["diff_se"] == 0.0
    assert "paired difference" in capsys.readouterr().out
    assert (tmp_path / "report.samples.jsonl").exists()

    for bad, message in ((["--evals", f"start={start}", "--score", "{name: accuracy}"], "at least two"),
                         (["--evals", f"start={start}", "--evals", f"x={tmp_path / 'none'}", "--score", "{name: accuracy}"], "does not exist"),
                         (["--evals", f"start={start}", "--evals", f"after={after}"], "needs --score"),
                         (["--evals", "nolabel", "--evals", f"after={after}", "--score", "{name: accuracy}"], "LABEL=DIR"),
                         ([str(tmp_path), "--evals", f"start={start}", "--score", "{name: accuracy}"], "not both")):
        with pytest.raises(SystemExit, match=message):
            run(ap.parse_args(bad))


def test_the_held_out_reward_of_two_models_adds_the_weighted_total_the_stage_trained_on(tmp_path):
    """`sqrl pipeline`'s "GRPO's own rewards on held-out clips": each reward and their weighted sum, paired."""
    from grpo.agreement import heldout_reward

    refs = [Record(id=f"c{i}", audio="", scores={"noise": n, "overall": o}) for i, (n, o) in
            enumerate([(1, 2), (3, 3), (5, 4)])]

    def write(label, scores):
        folder = tmp_path / label
        folder.mkdir()
        rows = [{"id": r.id, "text": render(Record(id=r.id, audio="", scores=s)), "reference": r.to_dict()}
                for r, s in zip(refs, scores)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        return folder

    start = write("start", [{"noise": 5, "overall": 5}, {"noise": 1, "overall": 1}, {"noise": 1, "overall": 1}])
    after = write("after", [refs[0].scores, refs[1].scores, {"noise": 1, "overall": 4}])
    entries = [{"name": "accuracy", "weight": 2.0}, {"name": "accuracy", "label": "noise_only", "dimensions": ["noise"]}]
    result = heldout_reward([("start", start), ("after", after)], entries, manifest=None)
    assert result["clips"] == 3 and result["models"] == ["start", "after"]
    total = result["by_model"]["total"]
    # after: accuracy 2, 2, 1 and noise_only 1, 1, 0 -> totals 2*2+1, 2*2+1, 2*1+0 = 5, 5, 2; start: 0 everywhere
    assert total["start"]["mean"] == 0.0 and total["after"]["mean"] == pytest.approx(4.0)
    assert total["after"]["diff"] == pytest.approx(4.0) and total["after"]["diff_se"] == pytest.approx(1.0)
    assert result["by_model"]["noise_only"]["after"]["mean"] == pytest.approx(2 / 3)
    # standardised over each batch, a total has no per-answer value: no total row
    normalized = heldout_reward([("start", start), ("after", after)], entries, None, "normalize_then_sum")
    assert "total" not in normalized["by_model"] and set(normalized["by_model"]) == {"accuracy", "noise_only"}


def test_the_held_out_total_is_formed_as_grpos_own_total(tmp_path):
    """A weight-0 reward is logged only; a reward without a value for any answer to a clip is left out of that
    clip's totals: the same totals `RewardSet.score` gives GRPO for one clip's answers as one group."""
    from grpo.agreement import heldout_reward
    from rewards import RewardSet, register

    @register("test_silent_on_c1")
    def silent_on_c1(completions, references, **_):
        return [None if r.id == "c1" else 0.25 for r in references]

    refs = [Record(id=f"c{i}", audio="", scores={"noise": n, "overall": o}) for i, (n, o) in
            enumerate([(1, 2), (3, 3), (5, 4)])]
    answers = {"start": [{"noise": 1, "overall": 1}, {"noise": 3, "overall": 1}, {"noise": 2, "overall": 2}],
               "after": [r.scores for r in refs]}
    folders = []
    for label, scores in answers.items():
        folder = tmp_path / label
        folder.mkdir()
        rows = [{"id": r.id, "text": render(Record(id=r.id, audio="", scores=s)), "reference": r.to_dict()}
                for r, s in zip(refs, scores)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        folders.append((label, folder))
    entries = [{"name": "accuracy"}, {"name": "test_silent_on_c1", "weight": 2.0},
               {"name": "accuracy", "label": "logged_only", "weight": 0.0, "dimensions": ["noise"]}]
    result = heldout_reward(folders, entries, manifest=None)
    rs = RewardSet.from_config(entries)
    expected = {label: [rs.score([render(Record(id=r.id, audio="", scores=s))], [r]).total[0]
                        for r, s in zip(refs, scores)] for label, scores in answers.items()}
    # start: accuracy 1, 1, 0 (+0.5 where the silent reward speaks); after: 2 everywhere (+0.5 likewise)
    assert expected == {"start": [1.5, 1.0, 0.5], "after": [2.5, 2.0, 2.5]}
    total = result["by_model"]["total"]
    assert total["start"]["mean"] == pytest.approx(1.0) and total["after"]["mean"] == pytest.approx(7 / 3)
    assert total["after"]["diff"] == pytest.approx(4 / 3)
