"""The judge interface: one method per backend, and the rest they share (dedup, counting, retries, config).

A *judge* is a text-only LLM that grades one answer against a reference and returns a number.
Every backend (``transformers``, ``openai``, ``vllm``) implements one method, ``_judge``, over a
batch of unique requests; this module does the rest:

* ``Judge.score`` judges identical requests once and counts every failure by kind (``JudgeStats``).
* ``RetryPolicy`` retries with exponential backoff; ``CircuitBreaker`` stops sending to a server that
  keeps refusing connections.
* ``build_judge`` / ``judge_from_config`` make a backend from flat config or a YAML name.

Prompts are built in ``judges.prompts`` and verdicts read in ``judges.verdicts``.
"""
from __future__ import annotations

import importlib
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import yaml

from judges.prompts import JudgeRequest, render_messages, resolve_config
from judges.verdicts import Verdict
from sqrl.config import bounded, check_ranges, check_value

log = logging.getLogger("sqrl.judges")

MODES = ("generate", "logit")



def unique_requests(requests: Iterable[Hashable], stats: JudgeStats) -> tuple[list, dict]:
    """``(requests as a list, each distinct request -> its index among the distinct ones)``; counts both in
    ``stats`` (``requests``, ``unique``). Identical requests (the same answer from several completions of a
    group) are judged once."""
    requests = list(requests)
    unique: dict = {}
    for r in requests:
        unique.setdefault(r, len(unique))
    stats.add("requests", len(requests))
    stats.add("unique", len(unique))
    return requests, unique

class JudgeStats:
    """Thread-safe counters: requests, unique requests, scored, failed and failures by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def fail(self, error: str) -> None:
        kind = error.split(":", 1)[0].strip() or "unknown"
        with self._lock:
            self.counts["failed"] += 1
            self.counts[f"failed/{kind}"] += 1
            first = self.counts[f"failed/{kind}"] <= 3
        if first:  # the first few of each kind are logged in full; the counters carry the rest
            log.warning("judge failure (%s): %s", kind, error[:300])

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


# ------------------------------------------------------------------------------ retries


@dataclass
class RetryPolicy:
    """Exponential backoff: attempt ``k`` (from 0) waits ``min(backoff_max_s, backoff_s * 2**k)``
    times a jitter factor in ``[1 - jitter, 1]`` before the next attempt."""

    max_attempts: int = bounded(4, ge=1)
    backoff_s: float = bounded(0.5, ge=0)
    backoff_max_s: float = bounded(8.0, ge=0)
    jitter: float = bounded(0.1, ge=0, le=1)

    def __post_init__(self) -> None:
        check_ranges(self)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        return base * (1 - self.jitter * (rng or random).random())


class RetryableError(Exception):
    """A failure worth another attempt (timeout, connection error, HTTP 429 or 5xx)."""


class GaveUp(Exception):
    """Not sent: the circuit breaker is open (``CircuitBreaker``). Never retried."""


class CircuitBreaker:
    """Stops sending to a server that keeps refusing connections (a dead judge server).

    ``record`` is told how each judgement's request ended. After ``give_up_after`` judgements in a row
    that failed for good with a connection error (each after its own retries), the breaker opens:
    ``check`` raises ``GaveUp`` for ``cooldown_s``, so the rest of the batch fails at once (``failed/gave
    up``) instead of each request going through its retries and failing one by one, and requests already
    in their retries stop before their next attempt. After the cool-down requests go out again; the first
    one that ends in a connection error opens it again, any answer from the server (even an HTTP error)
    or a timeout resets the count. ``give_up_after: 0`` never opens. Thread-safe; a pickled breaker
    arrives closed.
    """

    def __init__(self, give_up_after: int = 4, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        check_value("give_up_after", give_up_after, ge=0)
        check_value("give_up_cooldown_s", cooldown_s, ge=0)
        self.give_up_after, self.cooldown_s, self.clock = give_up_after, cooldown_s, clock
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._streak = 0
        self._open_until: float | None = None

    def check(self, target: str) -> None:
        """Raise ``GaveUp`` while the breaker is open; after the cool-down, let requests through again."""
        with self._lock:
            if self._open_until is None:
                return
            left = self._open_until - self.clock()
            if left <= 0:  # half-open: one more connection failure opens it again
                self._open_until = None
                self._streak = max(self._streak, self.give_up_after - 1)
                return
            streak = self._streak
        raise GaveUp(f"gave up: {target} refused the last {streak} judgements' connections; not sent "
                     f"(give_up_after {self.give_up_after}), tried again in {left:.0f} s")

    def record(self, connection_failed: bool, stats: JudgeStats | None = None) -> None:
        """How one judgement's request ended: a connection error after its retries, or anything else."""
        with self._lock:
            if not connection_failed:
                self._streak = 0
                return
            self._streak += 1
            opens = bool(self.give_up_after) and self._streak >= self.give_up_after and self._open_until is None
            if opens:
                self._open_until = self.clock() + self.cooldown_s
            streak = self._streak
        if opens:
            if stats is not None:
                stats.add("gave_up")
            log.warning("judge server unreachable: %d judgements in a row failed to connect; failing the "
                        "rest at once for %g s (give_up_after)", streak, self.cooldown_s)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None and self._open_until > self.clock()

    def __getstate__(self) -> dict:
        return {"give_up_after": self.give_up_after, "cooldown_s": self.cooldown_s, "clock": self.clock}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


def with_retries(fn: Callable[[], Any], policy: RetryPolicy, stats: JudgeStats | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """Call ``fn`` until it returns, retrying ``RetryableError`` with backoff; the last error is raised."""
    for attempt in range(policy.max_attempts):
        try:
            return fn()
        except RetryableError:
            if attempt + 1 == policy.max_attempts:
                raise
            if stats is not None:
                stats.add("retries")
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------ the interface


class Judge(ABC):
    """Scores ``JudgeRequest``s. Backends implement ``_judge`` over unique requests.

    Parameters shared by every backend: ``mode`` (``generate``: parse the number the judge
    writes; ``logit``: expected value over the score tokens), ``max_answer_chars`` (the answer is
    cut beyond it), ``min_score_mass`` (logit mode: below it the verdict fails instead of
    renormalising noise). Instances are picklable; models load lazily on the first ``score``.
    """

    backend = "base"

    def __init__(self, *, mode: str = "generate", max_answer_chars: int = 6000, min_score_mass: float = 0.05) -> None:
        if mode not in MODES:
            raise ValueError(f"judge mode must be one of {MODES}, got {mode!r}")
        if max_answer_chars < 1:
            raise ValueError("max_answer_chars must be >= 1")
        self.mode = mode
        self.max_answer_chars = max_answer_chars
        self.min_score_mass = min_score_mass
        self.stats = JudgeStats()

    def score(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One ``Verdict`` per request, in order. Identical requests are judged once."""
        requests, unique = unique_requests(requests, self.stats)
        if not unique:
            return []
        verdicts = self._judge(list(unique))
        if len(verdicts) != len(unique):
            raise RuntimeError(f"{type(self).__name__}._judge returned {len(verdicts)} verdicts for {len(unique)} requests")
        for v in verdicts:
            if v.score is None:
                self.stats.fail(v.error or "unknown: no reason given")
            else:
                self.stats.add("scored")
        return [verdicts[unique[req]] for req in requests]

    def messages(self, request: JudgeRequest) -> list[dict]:
        return render_messages(request, self.max_answer_chars, self._truncate_tokens)

    def _truncate_tokens(self, text: str) -> str:
        return text  # backends with a tokenizer cut by tokens too

    @abstractmethod
    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """Judge unique requests; one verdict each, in order; failures as ``Verdict(None, error)``."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["stats"] = None  # locks do not pickle; a shipped judge starts counting afresh
        return self._drop_runtime(state)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stats = JudgeStats()

    def _drop_runtime(self, state: dict) -> dict:
        return state


BACKENDS = {
    "transformers": "judges.transformers_judge:TransformersJudge",
    "openai": "judges.openai_judge:OpenAIJudge",
    "vllm": "judges.vllm_judge:VLLMJudge",
}


# The numeric settings the judge backends share, and their ranges: checked once, in build_judge.
PARAM_RANGES: dict[str, dict[str, Any]] = {
    "max_tokens": {"ge": 1}, "max_new_tokens": {"ge": 1}, "max_input_tokens": {"ge": 1},
    "max_answer_tokens": {"ge": 1}, "max_answer_chars": {"ge": 1}, "top_logprobs": {"ge": 1},
    "temperature": {"ge": 0}, "timeout_s": {"gt": 0}, "connect_timeout_s": {"gt": 0}, "concurrency": {"ge": 1},
    "batch_size": {"ge": 1}, "threads": {"ge": 1}, "min_score_mass": {"ge": 0, "le": 1},
    "branch_eps": {"ge": 0, "lt": 1}, "max_attempts": {"ge": 1}, "backoff_s": {"ge": 0}, "backoff_max_s": {"ge": 0},
    "jitter": {"ge": 0, "le": 1}, "gpu_memory_utilization": {"gt": 0, "le": 1},
    "give_up_after": {"ge": 0}, "give_up_cooldown_s": {"ge": 0},
}


def build_judge(backend: str, **params: Any) -> Judge:
    """Build a judge from flat config: ``build_judge(backend="openai", base_url=..., mode="logit")``.

    ``backend`` is a name in ``BACKENDS`` or a dotted ``module:Class`` path; unknown parameters
    raise ``TypeError`` from the backend's constructor, and a number out of its range (``PARAM_RANGES``)
    a ``ValueError`` naming it (``judge.timeout_s must be > 0, got -1``).
    """
    for name, bounds in PARAM_RANGES.items():
        if isinstance(params.get(name), (int, float)):
            check_value(f"judge.{name}", params[name], **bounds)
    target = BACKENDS.get(backend, backend)
    if ":" not in target:
        raise ValueError(f"unknown judge backend {backend!r}; known: {', '.join(BACKENDS)} or 'module:Class'")
    module, cls = target.split(":", 1)
    return getattr(importlib.import_module(module), cls)(**params)


def load_judge_config(spec: str | Path | dict) -> dict[str, Any]:
    """A judge config as a flat dict: a dict as is, else a YAML file by path or by name."""
    if isinstance(spec, dict):
        data = dict(spec)
    else:
        data = yaml.safe_load(resolve_config(spec).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "backend" not in data:
        raise ValueError(f"judge config {spec!r} must be a mapping with a 'backend' key")
    return data


def judge_from_config(spec: str | Path | dict) -> Judge:
    """``build_judge`` from a YAML file, a config name (``"smollm2"``) or a dict."""
    return build_judge(**load_judge_config(spec))


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
