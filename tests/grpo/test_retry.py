"""The driver's retry of reward batches whose worker died: one death counts one restart, however many
resends find the worker still restarting. Ray's ``wait``/``get`` are replaced by a scripted stand-in (the
cluster boundary); the accounting under test is ``Driver.get_with_retry`` itself. The real kill -9 of a
reward worker is tests/grpo/test_driver.py and tests/grpo/test_multinode.py."""
from __future__ import annotations

import types
from collections import Counter

import pytest

ray_exceptions = pytest.importorskip("ray.exceptions")
from grpo.config import RewardConfig  # noqa: E402
from grpo.driver import Driver  # noqa: E402

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


def make_driver(scripts, monkeypatch, **reward_settings):
    sleeps = []
    monkeypatch.setattr("grpo.driver.time.sleep", sleeps.append)
    fake = ScriptedRay(scripts)
    driver = Driver.__new__(Driver)
    driver.ray = fake
    driver.cfg = types.SimpleNamespace(rewards=RewardConfig(**reward_settings))
    driver.counters = Counter()
    calls = [lambda c=c: fake.send(c) for c in range(len(scripts))]
    return driver, calls, fake, sleeps


def test_resends_to_a_restarting_worker_count_one_restart_and_back_off(monkeypatch):
    # worker 0 dies mid-batch, is unavailable twice while Ray restarts it, then scores; worker 1 is fine
    driver, calls, fake, sleeps = make_driver([[DIED, UNAVAILABLE, UNAVAILABLE, "a"], ["b"]], monkeypatch)
    assert driver.get_with_retry(calls) == ["a", "b"]
    assert driver.counters["reward_worker_restarts"] == 1
    assert fake.sends == {0: 4, 1: 1}
    assert sleeps == [0.5, 1.0]


def test_a_worker_that_dies_again_after_restarting_counts_twice(monkeypatch):
    driver, calls, _, _ = make_driver([[DIED, UNAVAILABLE, DIED, "a"]], monkeypatch)
    assert driver.get_with_retry(calls) == ["a"]
    assert driver.counters["reward_worker_restarts"] == 2


def test_an_unavailable_worker_before_any_death_counts_as_a_death(monkeypatch):
    driver, calls, _, sleeps = make_driver([[UNAVAILABLE, "a"]], monkeypatch)
    assert driver.get_with_retry(calls) == ["a"]
    assert driver.counters["reward_worker_restarts"] == 1
    assert sleeps == []  # a death is resent at once


def test_a_death_is_resent_before_the_back_off_of_another_call(monkeypatch):
    # round 1: both workers die; round 2: worker 0 is still restarting (backs off), worker 1 died again
    driver, calls, fake, sleeps = make_driver([[DIED, UNAVAILABLE, "a"], [DIED, DIED, "b"]], monkeypatch)
    order = []
    monkeypatch.setattr("grpo.driver.time.sleep", lambda s: (sleeps.append(s), order.append("sleep")))
    send = fake.send
    fake.send = lambda c: (order.append(c), send(c))[1]
    assert driver.get_with_retry(calls) == ["a", "b"]
    assert driver.counters["reward_worker_restarts"] == 3
    assert order == [0, 1, 0, 1, 1, "sleep", 0]  # worker 1's resend in round 2 does not wait for worker 0's


def test_an_error_of_the_reward_itself_is_raised_not_retried(monkeypatch):
    driver, calls, fake, _ = make_driver([[ValueError]], monkeypatch)
    with pytest.raises(ValueError):
        driver.get_with_retry(calls)
    assert fake.sends == {0: 1} and driver.counters["reward_worker_restarts"] == 0


def test_more_deaths_than_max_retries_fail_the_step(monkeypatch):
    driver, calls, _, _ = make_driver([[DIED, DIED, DIED]], monkeypatch, max_retries=2)
    with pytest.raises(RuntimeError, match="died 3 times"):
        driver.get_with_retry(calls)


def test_a_worker_that_never_comes_back_fails_after_restart_wait_s(monkeypatch):
    clock = iter(range(0, 1000, 10))  # each failure is 10 s after the last
    monkeypatch.setattr("grpo.driver.time.monotonic", lambda: next(clock))
    driver, calls, _, sleeps = make_driver([[DIED] + [UNAVAILABLE] * 20], monkeypatch, restart_wait_s=35)
    with pytest.raises(RuntimeError, match="unavailable for 40 s"):
        driver.get_with_retry(calls)
    assert driver.counters["reward_worker_restarts"] == 1
    assert sleeps == [0.5, 1.0, 2.0]


def test_restart_wait_s_must_be_positive():
    with pytest.raises(ValueError, match="restart_wait_s"):
        RewardConfig(restart_wait_s=0)
