"""A reward that keeps failing stops the run (``rewards.max_failed_steps``); the real-run check is in
tests/grpo/test_driver.py::test_a_reward_that_always_raises_stops_the_run_naming_its_error."""
from pathlib import Path

import pytest

from grpo.config import GRPOConfig
from grpo.reward_watch import RewardFailedError, RewardWatch
from grpo.batch import Group, ScoredGroups
from rewards import RewardEntry, RewardSet
from sqrl.config import ConfigError, load_config
from sqrl.schema import Record

REPO = Path(__file__).resolve().parents[2]


def broken(completions, references, **columns):
    raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")


def sometimes(completions, references, **columns):
    if completions[0] == "fail":
        raise ValueError("judge timed out")
    return [1.0] * len(completions)


def score(fn, text="x", n=4):
    rs = RewardSet([RewardEntry("custom", fn), RewardEntry("one", lambda c, r, **k: [1.0] * len(c))])
    return rs.score([text] * n, [Record(id=f"c{i // 2}") for i in range(n)])


def test_a_reward_failing_on_every_step_stops_after_max_failed_steps_naming_the_exception():
    watch = RewardWatch(max_failed_steps=3)
    watch.observe(score(broken), step=1)
    watch.observe(score(broken), step=2)
    with pytest.raises(RewardFailedError, match=r"reward 'custom' failed on the whole batch in 3 consecutive steps "
                                                r"\(1-3; rewards.max_failed_steps=3\): TypeError: unsupported operand"):
        watch.observe(score(broken), step=3)


def test_a_step_where_the_reward_scored_resets_the_count():
    watch = RewardWatch(max_failed_steps=2)
    for step, text in enumerate(["fail", "ok", "fail", "ok", "fail"], 1):
        watch.observe(score(sometimes, text), step=step)
    assert watch.failed_steps == {"custom": 1, "one": 0}


def merge_scored(parts):
    """Two workers' results joined as the driver joins them (``ScoredGroups.concat``); one clip per part."""
    groups = [Group(Record(id=f"c{i}"), [None] * len(p.total)) for i, p in enumerate(parts)]
    return ScoredGroups.concat([ScoredGroups([g], p) for g, p in zip(groups, parts)]).scores


def test_a_failure_on_one_worker_only_is_not_a_whole_batch_failure():
    watch = RewardWatch(max_failed_steps=1)
    merged = merge_scored([score(sometimes, "fail", 2), score(sometimes, "ok", 2)])
    assert merged.errors["custom"] == 2 and len(merged.total) == 4
    watch.observe(merged, step=1)  # no raise
    with pytest.raises(RewardFailedError, match="ValueError: judge timed out"):
        watch.observe(merge_scored([score(sometimes, "fail", 2), score(sometimes, "fail", 2)]), step=2)


def test_a_reward_returning_strings_stops_the_run_with_the_contract_error():
    watch = RewardWatch(max_failed_steps=1)
    with pytest.raises(RewardFailedError, match=r"RewardError: values: '0.5' is a str"):
        watch.observe(score(lambda c, r, **k: ["0.5"] * len(c)), step=1)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_failed_steps_must_be_at_least_one(value):
    with pytest.raises((ConfigError, ValueError), match="rewards.max_failed_steps"):
        load_config(GRPOConfig, REPO / "configs/tiny/grpo_accsem_dimwise.yaml", [f"rewards.max_failed_steps={value}"])
    assert load_config(GRPOConfig, REPO / "configs/tiny/grpo_accsem_dimwise.yaml").rewards.max_failed_steps == 3
