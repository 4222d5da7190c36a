"""The Judge interface: deduplication, counting, pickling, building from config, retries."""
import pickle

import pytest

from judges.base import CircuitBreaker, GaveUp, Judge, JudgeStats, RetryableError, RetryPolicy, build_judge, judge_from_config, with_retries
from judges.prompts import JudgeRequest
from judges.verdicts import Verdict


class Recording(Judge):
    """A backend that scores by the answer's length and records what reached it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def _judge(self, requests):
        self.seen.append(list(requests))
        return [Verdict(float(len(r.answer))) if r.answer else Verdict(None, "unparseable: empty verdict") for r in requests]


def req(answer):
    return JudgeRequest(system="s", user="{answer_block}", answer=answer)


def test_identical_requests_are_judged_once_and_answered_in_order():
    judge = Recording()
    verdicts = judge.score([req("aa"), req("b"), req("aa"), req("b"), req("ccc")])
    assert [v.score for v in verdicts] == [2.0, 1.0, 2.0, 1.0, 3.0]
    assert [r.answer for r in judge.seen[0]] == ["aa", "b", "ccc"]
    assert judge.stats.as_dict() == {"requests": 5, "unique": 3, "scored": 3}


def test_failures_are_counted_by_kind_and_never_become_zero():
    judge = Recording()
    verdicts = judge.score([req(""), req("x"), req("")])
    assert verdicts[0].score is None and verdicts[0].error.startswith("unparseable")
    stats = judge.stats.as_dict()
    assert stats["failed"] == 1 and stats["failed/unparseable"] == 1 and stats["scored"] == 1


def test_an_empty_batch_calls_no_backend():
    judge = Recording()
    assert judge.score([]) == [] and judge.seen == []


def test_a_backend_returning_the_wrong_number_of_verdicts_is_an_error():
    class Short(Judge):
        def _judge(self, requests):
            return []

    with pytest.raises(RuntimeError, match="0 verdicts for 1 requests"):
        Short().score([req("a")])


def test_a_judge_pickles_without_its_counters_lock_and_counts_afresh():
    judge = Recording()
    judge.score([req("a")])
    clone = pickle.loads(pickle.dumps(judge))
    assert clone.stats.as_dict() == {}
    assert clone.score([req("abc")])[0].score == 3.0


def test_verdicts_normalise_linearly_to_unit_range():
    assert Verdict(7.5).normalized((0, 10)) == 0.75
    assert Verdict(2.0).normalized((1, 5)) == 0.25
    assert Verdict(None, "timeout").normalized((0, 10)) is None


def test_build_judge_rejects_unknown_backends_modes_and_parameters():
    with pytest.raises(ValueError, match="unknown judge backend 'nope'"):
        build_judge("nope")
    with pytest.raises(ValueError, match="mode"):
        build_judge("openai", base_url="http://127.0.0.1:1/v1", model="m", mode="vibes")
    with pytest.raises(TypeError):
        build_judge("openai", base_url="http://127.0.0.1:1/v1", model="m", temprature=0.1)
    with pytest.raises(ValueError, match="base_url"):
        build_judge("openai", base_url="localhost:8000", model="m")


def test_build_judge_accepts_a_dotted_backend_path():
    judge = build_judge(f"{__name__}:Recording", mode="logit")
    assert isinstance(judge, Recording) and judge.mode == "logit"


def test_every_backend_config_builds_without_loading_anything():
    for name in ("smollm2", "qwen3_local", "qwen3_vllm", "qwen3_openai"):
        judge = judge_from_config(name)
        assert judge.mode == "logit"


def test_retry_delays_grow_exponentially_up_to_the_cap():
    policy = RetryPolicy(max_attempts=6, backoff_s=0.5, backoff_max_s=3.0, jitter=0.0)
    assert [policy.delay(k) for k in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(backoff_s=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(0) <= 1.0 for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_with_retries_retries_only_retryable_errors_and_reraises_the_last():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError(f"http 500: attempt {len(calls)}")
        return "ok"

    policy = RetryPolicy(max_attempts=4, backoff_s=0.1, jitter=0.0)
    assert with_retries(flaky, policy, sleep=slept.append) == "ok"
    assert slept == [0.1, 0.2]

    def always():
        raise RetryableError("timeout: slow")

    slept.clear()
    with pytest.raises(RetryableError, match="timeout"):
        with_retries(always, RetryPolicy(max_attempts=3, backoff_s=0.1, jitter=0.0), sleep=slept.append)
    assert slept == [0.1, 0.2]

    def broken():
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        with_retries(broken, policy, sleep=slept.append)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_breaker_opens_after_give_up_after_connection_failures_in_a_row_and_retries_after_the_cool_down():
    clock, stats = Clock(), JudgeStats()
    breaker = CircuitBreaker(give_up_after=3, cooldown_s=30, clock=clock)
    for connection_failed in (True, True, False, True, True):  # an answer in between resets the count
        breaker.check("srv")
        breaker.record(connection_failed, stats)
    assert not breaker.is_open
    breaker.record(True, stats)  # the third in a row
    assert breaker.is_open and stats.as_dict() == {"gave_up": 1}
    with pytest.raises(GaveUp, match=r"gave up: srv refused the last 3 .* tried again in 30 s"):
        breaker.check("srv")
    clock.now += 29.5
    with pytest.raises(GaveUp):
        breaker.check("srv")
    clock.now += 1  # the cool-down is over: requests go out; one more connection failure opens it again
    breaker.check("srv")
    breaker.record(True, stats)
    assert breaker.is_open and stats.as_dict() == {"gave_up": 2}
    clock.now += 31
    breaker.check("srv")
    breaker.record(False, stats)  # the server is back: closed, the count starts over
    breaker.record(True, stats)
    breaker.record(True, stats)
    assert not breaker.is_open


def test_give_up_after_zero_never_opens_and_a_pickled_breaker_arrives_closed():
    never = CircuitBreaker(give_up_after=0)
    for _ in range(50):
        never.record(True)
    never.check("srv")
    opened = CircuitBreaker(give_up_after=1, cooldown_s=60)
    opened.record(True)
    assert opened.is_open
    copy = pickle.loads(pickle.dumps(opened))
    assert not copy.is_open and copy.give_up_after == 1 and copy.cooldown_s == 60
    with pytest.raises(ValueError, match="give_up_after"):
        build_judge("openai", base_url="http://127.0.0.1:1/v1", model="m", give_up_after=-1)
