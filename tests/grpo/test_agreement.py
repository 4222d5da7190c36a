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
