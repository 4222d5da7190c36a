"""The reward contract: registry, RewardSet aggregation, counting, pickling."""
import logging
import pickle
import sys
import textwrap

import numpy as np
import pytest

import rewards
from rewards.base import LazyReward, RewardOutput, RewardSet, combine, get, lookup, register, standardize, summarize
from sqrl.response import render
from sqrl.schema import Assessment, Record


def ref(rid, **scores):
    return Record(scores=dict(scores), audio=f"{rid}.wav", id=rid)


# ------------------------------------------------------------------------------------------- registry
def test_the_registry_rejects_a_second_reward_under_the_same_name():
    @register("test_dup_name")
    def first(completions, references, **columns):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="already registered"):
        @register("test_dup_name")
        def second(completions, references, **columns):
            return [1.0] * len(completions)

    assert lookup("test_dup_name") is first


def test_the_builtin_rewards_are_registered():
    assert {"accuracy", "semantic", "format", "interval_iou", "signal"} <= set(rewards.registered())


def test_a_dotted_path_resolves_to_a_function_in_a_user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_mod.py").write_text(textwrap.dedent("""
        def brevity(completions, references, max_words=3, **columns):
            return [1.0 if len(c.split()) <= max_words else 0.0 for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get("user_rewards_mod.brevity", {"max_words": 2})
    assert fn(["a b", "a b c"], [None, None]) == [1.0, 0.0]
    sys.modules.pop("user_rewards_mod", None)


def test_unknown_names_and_misspelt_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*registered:"):
        get("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        get("no_such_pkg.mod.fn")
    with pytest.raises(ValueError, match="no attribute"):
        get("rewards.builtin.no_such_reward")
    with pytest.raises(ValueError, match=r"bad parameters \['sofft'\]"):
        get("accuracy", {"sofft": True})


def test_a_function_with_named_parameters_rejects_one_that_only_columns_would_swallow():
    def brevity(completions, references, max_words=3, **columns):
        return [0.0] * len(completions)

    register("test_brevity_params")(brevity)
    assert get("test_brevity_params", {"max_words": 5}).keywords == {"max_words": 5}
    with pytest.raises(ValueError, match="no parameter"):
        get("test_brevity_params", {"max_wrds": 5})


def test_a_class_is_instantiated_with_the_yaml_params():
    acc = get("accuracy", {"soft": True, "dimensions": ["noise"]})
    assert acc.soft is True and acc.dimensions == ("noise",)


# ------------------------------------------------------------------------------------------ RewardSet
def test_every_reward_receives_the_same_parsed_answers_parsed_once():
    seen = []

    def spy(completions, references, parsed, **columns):
        seen.append(parsed)
        return [1.0] * len(completions)

    rs = RewardSet([rewards.RewardEntry("a", spy), rewards.RewardEntry("b", spy)])
    rs.score(["Noise: 2/5", "garbage"], [ref("c1"), ref("c1")])
    assert seen[0] is seen[1]
    assert seen[0][0].scores["noise"] == 2 and seen[0][1].scores["noise"] is None


def test_dimension_wise_accuracy_with_one_dimension_at_weight_one_equals_that_component():
    refs = [ref("c1", noise=2, distortion=4)] * 3
    outs = [render(Assessment(scores={"noise": s, "distortion": 4})) for s in (2, 3, 5)]
    rs = RewardSet.from_config([{"name": "accuracy", "weight": 1.0, "dimensions": ["noise"]}])
    b = rs.score(outs, refs)
    assert b.total == b.components["accuracy/noise"] == [1.0, 0.0, 0.0]
    soft = RewardSet.from_config([{"name": "accuracy", "params": {"soft": True}, "dimensions": "noise"}])
    assert soft.score(outs, refs).total == [1.0, 0.75, 0.25]


def test_the_total_is_the_weighted_sum_and_components_are_logged_unweighted():
    refs = [ref("c1", noise=2, distortion=4)] * 2
    outs = [render(Assessment(scores={"noise": 2, "distortion": 4})), "nothing"]
    rs = RewardSet.from_config([
        {"name": "accuracy", "weight": 2.0, "dimensions": ["noise", "distortion"]},
        {"name": "format", "weight": 0.5, "dimensions": ["noise", "distortion"]},
    ])
    b = rs.score(outs, refs)
    assert b.per_reward["accuracy"] == [2.0, 0.0]
    assert b.per_reward["format"] == [1.0, 0.0]
    assert b.total == [2.0 * 2.0 + 0.5 * 1.0, 0.0]
    assert b.components["accuracy/noise"] == [1.0, 0.0]


def failing(completions, references, **columns):
    raise RuntimeError("judge server down")


def constant(completions, references, **columns):
    return [1.0] * len(completions)


def test_a_reward_that_raises_is_logged_counted_and_scores_none_without_stopping_the_batch(caplog):
    rs = RewardSet([rewards.RewardEntry("judge", failing), rewards.RewardEntry("one", constant)])
    with caplog.at_level(logging.WARNING, logger="rewards.base"):
        b = rs.score(["x", "y"], [ref("c1"), ref("c1")])
    assert b.per_reward["judge"] == [None, None]
    assert b.errors == {"judge": 2, "one": 0} and b.skipped == {"judge": 0, "one": 0}
    assert b.total == [1.0, 1.0]  # the whole group lacks the judge: left out for the group, no bias
    assert "judge server down" in caplog.text


@pytest.mark.parametrize("bad", [[1.0], "1.0", [1.0, "x"], None, RewardOutput([1.0, 2.0], {"d": [1.0]})])
def test_a_reward_that_breaks_the_contract_counts_as_an_error(bad):
    rs = RewardSet([rewards.RewardEntry("bad", lambda c, r, **k: bad), rewards.RewardEntry("one", constant)])
    b = rs.score(["x", "y"], [ref("c1"), ref("c2")])
    assert b.errors["bad"] == 2 and b.per_reward["bad"] == [None, None]


@pytest.mark.parametrize("value, kind", [("0.5", "str"), (True, "bool"), (b"1", "bytes"), (np.bool_(False), "bool")])
def test_strings_and_bools_are_errors_not_numbers(value, kind):
    # float() takes "0.5" and True; a reward that returns them is broken and must not train quietly
    rs = RewardSet([rewards.RewardEntry("custom", lambda c, r, **k: [1.0, value]), rewards.RewardEntry("one", constant)])
    b = rs.score(["x", "y"], [ref("c1"), ref("c2")])
    assert b.errors["custom"] == 2 and b.per_reward["custom"] == [None, None]
    assert b.failures["custom"].startswith("RewardError: values: ") and f"is a {kind}" in b.failures["custom"]
    assert b.failures.keys() == {"custom"}


def test_numpy_and_int_values_are_numbers():
    rs = RewardSet([rewards.RewardEntry("np", lambda c, r, **k: [np.float32(0.5), 1])])
    b = rs.score(["x", "y"], [ref("c1"), ref("c2")])
    assert b.per_reward["np"] == [0.5, 1.0] and b.errors["np"] == 0 and b.failures == {}


def test_a_failing_reward_names_its_exception_in_failures():
    rs = RewardSet([rewards.RewardEntry("judge", failing), rewards.RewardEntry("nan", lambda c, r, **k: [np.nan] * 2)])
    b = rs.score(["x", "y"], [ref("c1"), ref("c1")])
    assert b.failures["judge"] == "RuntimeError: judge server down"
    assert b.failures["nan"] == "RewardError: all 2 values were NaN or infinite" and b.errors["nan"] == 2


def test_non_finite_values_become_none_and_are_counted_as_errors():
    rs = RewardSet([rewards.RewardEntry("nan", lambda c, r, **k: [float("nan"), 1.0])])
    b = rs.score(["x", "y"], [ref("c1"), ref("c2")])
    assert b.per_reward["nan"] == [None, 1.0] and b.errors["nan"] == 1 and b.skipped["nan"] == 0


def test_a_partial_none_within_a_group_drops_that_sample_instead_of_biasing_it():
    per = {"a": [1.0, None, 1.0, None], "b": [0.5, 0.5, 0.5, 0.5]}
    groups = ["g1", "g1", "g2", "g2"]
    # g1: 'a' is missing for one member only -> that member's total is None;
    # g2 likewise; summing the available ones would have given it 0.5 against 1.5.
    assert combine(per, {"a": 1.0, "b": 1.0}, groups) == [1.5, None, 1.5, None]
    per = {"a": [None, None, 2.0, 2.0], "b": [0.5, 0.0, 0.5, 0.0]}
    # g1 has no 'a' at all: left out of g1's totals (a constant shift within the group)
    assert combine(per, {"a": 1.0, "b": 1.0}, groups) == [0.5, 0.0, 2.5, 2.0]
    assert combine({"a": [None, None]}, {"a": 1.0}, ["g", "g"]) == [None, None]


def test_skipped_counts_the_nones_a_reward_returns_and_total_skipped_the_dropped_totals():
    rs = RewardSet([rewards.RewardEntry("half", lambda c, r, **k: [1.0, None]), rewards.RewardEntry("one", constant)])
    b = rs.score(["x", "y"], [ref("c1"), ref("c1")])
    assert b.skipped["half"] == 1 and b.errors["half"] == 0
    assert b.total == [2.0, None] and b.total_skipped == 1


def test_weight_zero_rewards_are_logged_but_do_not_enter_the_total():
    rs = RewardSet([rewards.RewardEntry("log_only", lambda c, r, **k: [None, 7.0], 0.0),
                    rewards.RewardEntry("one", constant)])
    b = rs.score(["x", "y"], [ref("c1"), ref("c1")])
    assert b.total == [1.0, 1.0] and b.per_reward["log_only"] == [None, 7.0]


def test_normalize_then_sum_standardises_each_reward_over_the_batch():
    assert standardize([1.0, 3.0, None]) == [-1.0, 1.0, None]
    assert standardize([2.0, 2.0]) == [0.0, 0.0]
    rs = RewardSet([rewards.RewardEntry("big", lambda c, r, **k: [0.0, 100.0], 1.0),
                    rewards.RewardEntry("small", lambda c, r, **k: [1.0, 0.0], 2.0)], "normalize_then_sum")
    b = rs.score(["x", "y"], [ref("c1"), ref("c1")])
    assert b.total == [pytest.approx(-1.0 + 2.0), pytest.approx(1.0 - 2.0)]


def test_summarize_writes_the_logger_keys():
    rs = RewardSet.from_config([{"name": "accuracy", "dimensions": ["noise"]}])
    b = rs.score([render(Assessment(scores={"noise": 2})), "x"], [ref("c1", noise=2)] * 2)
    s = summarize(b)
    assert s["rewards/accuracy/mean"] == 0.5
    assert s["rewards/accuracy/noise/mean"] == 0.5
    assert s["rewards/total/mean"] == 0.5 and s["rewards/total/std"] == 0.5
    assert s["rewards/accuracy/skipped"] == 0.0 and s["rewards/accuracy/errors"] == 0.0
    assert s["rewards/total/skipped"] == 0.0


def test_summarize_leaves_out_a_mean_over_nothing_rather_than_writing_nan():
    rs = RewardSet([rewards.RewardEntry("judge", failing)])
    s = summarize(rs.score(["x"], [ref("c1")]))
    assert "rewards/judge/mean" not in s and "rewards/total/mean" not in s
    assert s["rewards/judge/errors"] == 1.0 and s["rewards/total/skipped"] == 1.0


def test_config_errors_are_raised_when_the_set_is_built():
    with pytest.raises(ValueError, match="unknown key"):
        RewardSet.from_config([{"name": "accuracy", "wieght": 2}])
    with pytest.raises(ValueError, match="unique"):
        RewardSet.from_config([{"name": "accuracy"}, {"name": "accuracy", "dimensions": ["noise"]}])
    RewardSet.from_config([{"name": "accuracy"}, {"name": "accuracy", "dimensions": ["noise"], "label": "acc_noise"}])
    with pytest.raises(ValueError, match="aggregation"):
        RewardSet.from_config([{"name": "accuracy"}], aggregation="mean")
    with pytest.raises(ValueError, match="unknown or no dimensions"):
        RewardSet.from_config([{"name": "accuracy", "dimensions": ["loudness"]}])
    with pytest.raises(ValueError, match="at least one"):
        RewardSet.from_config([])


def test_mismatched_completions_and_references_are_an_error():
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        RewardSet([rewards.RewardEntry("one", constant)]).score(["a", "b"], [ref("c1")])


class CountingModel(LazyReward):
    loads = 0

    def load(self):
        CountingModel.loads += 1
        return {"bias": 0.25}

    def __call__(self, completions, references, **columns):
        return [self.model["bias"]] * len(completions)


def test_a_reward_set_pickles_and_a_lazy_model_loads_on_first_call_not_when_built():
    rs = RewardSet([rewards.RewardEntry("lazy", CountingModel())])
    rs = RewardSet(rs.entries + RewardSet.from_config([{"name": "accuracy"}, {"name": "semantic"},
                                                       {"name": "signal"}]).entries)
    assert CountingModel.loads == 0
    assert rs.score(["x"], [ref("c1", noise=1)]).per_reward["lazy"] == [0.25]
    assert CountingModel.loads == 1
    clone = pickle.loads(pickle.dumps(rs))
    assert "_model" not in clone.entries[0].fn.__dict__
    assert clone.score(["x"], [ref("c1", noise=1)]).per_reward["lazy"] == [0.25]
    assert CountingModel.loads == 2
