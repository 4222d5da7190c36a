"""The retry of reward batches whose worker died: one death counts one restart, however many resends find
the worker still restarting. Ray's ``wait``/``get`` are replaced by a scripted stand-in (the cluster
boundary), the clock and the sleep by recorders; the accounting under test is ``get_with_retry`` itself.
The real kill -9 of a reward worker is tests/grpo/test_driver.py and tests/grpo/test_multinode.py."""
from __future__ import annotations

import functools
from collections import Counter

import pytest

ray_exceptions = pytest.importorskip("ray.exceptions")
from grpo.config import RewardConfig  # noqa: E402
from grpo.reward_worker import get_with_retry  # noqa: E402

DIED = ray_exceptions.ActorDiedError
UNAVAILABLE = ray_exceptions.ActorUnavailableError


class ScriptedRay:
    """``ray.get`` of the n-th send of a call gives the n-th entry of its script: an exception class to
    raise, or a value to return."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.sends = Counter()

    def send(self, call):
        n = self.sends[call]
        self.sends[call] += 1
        return (call, n)

    def wait(self, refs, num_returns):
        return refs, []

    def get(self, ref):
        call, n = ref
        outcome = self.scripts[call][n]
        if outcome is UNAVAILABLE:
            raise UNAVAILABLE("restarting", None)
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome()
        return outcome


def scripted(scripts, clock=None, **reward_settings):
    """(``retry()`` running ``get_with_retry`` over one call per script, the counters, the fake Ray, the sleeps)."""
    fake, counters, sleeps = ScriptedRay(scripts), Counter(), []
    calls = [lambda c=c: fake.send(c) for c in range(len(scripts))]
    extra = {"clock": clock} if clock else {}
    retry = functools.partial(get_with_retry, calls, RewardConfig(**reward_settings), counters, ray=fake,
                              sleep=lambda s: sleeps.append(s), **extra)
    return retry, counters, fake, sleeps


def test_resends_to_a_restarting_worker_count_one_restart_and_back_off():
    # worker 0 dies mid-batch, is unavailable twice while Ray restarts it, then scores; worker 1 is fine
    retry, counters, fake, sleeps = scripted([[DIED, UNAVAILABLE, UNAVAILABLE, "a"], ["b"]])
    assert retry() == ["a", "b"]
    assert counters["reward_worker_restarts"] == 1
    assert fake.sends == {0: 4, 1: 1}
    assert sleeps == [0.5, 1.0]


def test_a_worker_that_dies_again_after_restarting_counts_twice():
    retry, counters, _, _ = scripted([[DIED, UNAVAILABLE, DIED, "a"]])
    assert retry() == ["a"]
    assert counters["reward_worker_restarts"] == 2


def test_an_unavailable_worker_before_any_death_counts_as_a_death():
    retry, counters, _, sleeps = scripted([[UNAVAILABLE, "a"]])
    assert retry() == ["a"]
    assert counters["reward_worker_restarts"] == 1
    assert sleeps == []  # a death is resent at once


def test_a_death_is_resent_before_the_back_off_of_another_call():
    # round 1: both workers die; round 2: worker 0 is still restarting (backs off), worker 1 died again
    order = []
    fake, counters = ScriptedRay([[DIED, UNAVAILABLE, "a"], [DIED, DIED, "b"]]), Counter()
    calls = [lambda c=c: (order.append(c), fake.send(c))[1] for c in range(2)]
    results = get_with_retry(calls, RewardConfig(), counters, ray=fake, sleep=lambda s: order.append("sleep"))
    assert results == ["a", "b"]
    assert counters["reward_worker_restarts"] == 3
    assert order == [0, 1, 0, 1, 1, "sleep", 0]  # worker 1's resend in round 2 does not wait for worker 0's


def test_an_error_of_the_reward_itself_is_raised_not_retried():
    retry, counters, fake, _ = scripted([[ValueError]])
    with pytest.raises(ValueError):
        retry()
    assert fake.sends == {0: 1} and counters["reward_worker_restarts"] == 0


def test_more_deaths_than_max_retries_fail_the_step():
    retry, _, _, _ = scripted([[DIED, DIED, DIED]], max_retries=2)
    with pytest.raises(RuntimeError, match="died 3 times"):
        retry()


def test_a_worker_that_never_comes_back_fails_after_restart_wait_s():
    clock = iter(range(0, 1000, 10))  # each failure is 10 s after the last
    retry, counters, _, sleeps = scripted([[DIED] + [UNAVAILABLE] * 20], clock=lambda: next(clock), restart_wait_s=35)
    with pytest.raises(RuntimeError, match="unavailable for 40 s"):
        retry()
    assert counters["reward_worker_restarts"] == 1
    assert sleeps == [0.5, 1.0, 2.0]


def test_restart_wait_s_must_be_positive():
    with pytest.raises(ValueError, match="restart_wait_s"):
        RewardConfig(restart_wait_s=0)
