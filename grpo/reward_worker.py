"""Reward workers: Ray actors holding the configured ``RewardSet`` (rewards and their judges).

A worker builds its ``RewardSet`` from the plain config entries, so a worker that Ray restarts after
a crash rebuilds it the same way; model-backed rewards (the sentence embedder, an LLM judge) load
lazily on their first call inside the worker. The driver hands each worker whole groups (a group's
completions share a clip, and ``RewardSet`` decides ``None`` handling per group) and joins the results
(``ScoredGroups.concat``). Reward workers hold no state, so Ray restarts a dead one (on another node if its
node is gone; its placement-group bundle is rescheduled there) and ``get_with_retry`` sends its batch again.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from grpo.messages import TimedScores
from grpo.worker_env import Secret, install_secrets
from rewards import RewardSet, ScoredBatch
from rewards.base import add_import_path

if TYPE_CHECKING:
    from grpo.config import GRPOConfig, RewardConfig

log = logging.getLogger(__name__)


class RewardWorker:
    """Scores completions against their clips' references; total plus components per reward and dimension."""

    def __init__(self, entries: Sequence[dict[str, Any]], aggregation: str = "sum", pass_audio: bool = False,
                 max_seconds: float | None = None, secrets: Mapping[str, Secret] | None = None,
                 python_path: Sequence[str] = ()):
        install_secrets(secrets)  # e.g. the judge's api_key_env, never in the runtime env (grpo/worker_env.py)
        # the folders the driver found custom rewards in: this worker may run elsewhere (another folder, node)
        add_import_path(python_path)
        self.reward_set = RewardSet.from_config(list(entries), aggregation)
        self.pass_audio = pass_audio
        self.max_seconds = max_seconds

    def score(self, completions: Sequence[str], references: Sequence[Any], prompts: Sequence[str],
              audio: Sequence[str]) -> TimedScores:
        """``references`` are the clips' ``Record``s, one per completion; ``audio`` their paths."""
        t0 = time.perf_counter()
        columns: dict[str, Any] = {"prompts": list(prompts)}
        if self.pass_audio:
            from grpo.model_io import SAMPLING_RATE, load_waves

            waves, _ = load_waves(audio, self.max_seconds)
            columns.update(audio=[waves.get(p) for p in audio], sampling_rate=SAMPLING_RATE)
        scored = self.reward_set.score(list(completions), list(references), **columns)
        return TimedScores(**{f.name: getattr(scored, f.name) for f in fields(ScoredBatch)},
                           seconds=time.perf_counter() - t0)

    def pid(self) -> int:
        return os.getpid()


def split_groups(n_groups: int, n_workers: int) -> list[range]:
    """Contiguous ranges of group indices, one per worker (empty ranges dropped)."""
    base, extra = divmod(n_groups, n_workers)
    out, start = [], 0
    for w in range(n_workers):
        size = base + (w < extra)
        if size:
            out.append(range(start, start + size))
        start += size
    return out


def build_reward_workers(cfg: GRPOConfig, place: Callable[[str, int], dict], runtime_env: dict[str, Any],
                         secrets: Mapping[str, Secret] | None = None, python_path: Sequence[str] = ()) -> list[Any]:
    """``rewards.num_workers`` Ray actors that Ray restarts up to ``rewards.max_restarts`` times (the driver,
    not Ray, resends a dead worker's batch: ``max_task_retries=0``). ``secrets`` reach them as a constructor
    argument, never through ``runtime_env`` (grpo/worker_env.py); ``python_path``: the folders custom rewards
    are imported from (``rewards.python_path`` and the driver's working folder)."""
    import ray

    r = cfg.rewards
    cls = ray.remote(RewardWorker)
    return [cls.options(runtime_env=runtime_env, max_restarts=r.max_restarts, max_task_retries=0,
                        **place("reward", i)).remote(r.entries, r.aggregation, r.pass_audio, cfg.data.max_seconds,
                                                      secrets=secrets, python_path=list(python_path))
            for i in range(r.num_workers)]


def get_with_retry(calls: Sequence[Callable[[], Any]], settings: RewardConfig, counters: Counter, *, ray: Any = None,
                   sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> list[Any]:
    """``ray.get`` of every call (a function that sends it and returns its object ref); a call whose reward
    worker died (Ray restarts it) is sent again, up to ``settings.max_retries`` times each, and counted in
    ``counters["reward_worker_restarts"]``.

    One death counts once: after a failure, a resent call that finds the worker still restarting
    (``ActorUnavailableError``) is sent again after a back-off (0.5 s doubling to 5 s) without counting a
    new restart or using a retry, for up to ``settings.restart_wait_s`` seconds. A further
    ``ActorDiedError`` (the restarted worker died too) counts as another restart. Any other error (one of
    the reward itself) is raised."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    if ray is None:
        import ray
    refs = [c() for c in calls]
    results: list[Any] = [None] * len(calls)
    tries = [0] * len(calls)
    waiting_since: list[float | None] = [None] * len(calls)  # set while a call waits for its worker
    resent = [0] * len(calls)  # resends to a worker still restarting, for the back-off
    pending = list(range(len(calls)))
    while pending:
        ray.wait([refs[i] for i in pending], num_returns=len(pending))
        resend, wait_then_resend, backoff = [], [], 0.0
        for i in pending:
            try:
                results[i] = ray.get(refs[i])
            except RayActorError as exc:
                now = clock()
                if waiting_since[i] is not None and isinstance(exc, ActorUnavailableError):
                    waited = now - waiting_since[i]
                    if waited > settings.restart_wait_s:
                        raise RuntimeError(f"reward worker {i} was unavailable for {waited:.0f} s after dying "
                                           f"(rewards.restart_wait_s={settings.restart_wait_s})") from exc
                    backoff = max(backoff, min(0.5 * 2 ** resent[i], 5.0))
                    resent[i] += 1
                    log.info("reward worker %d is still restarting (%.1f s); resending its batch", i, waited)
                    wait_then_resend.append(i)
                else:
                    tries[i] += 1
                    counters["reward_worker_restarts"] += 1
                    if tries[i] > settings.max_retries:
                        raise RuntimeError(f"reward worker {i} died {tries[i]} times on one batch (or Ray "
                                           f"gave up restarting it: rewards.max_restarts)") from exc
                    log.warning("reward worker %d died (%s); retrying its batch (%d/%d)", i,
                                type(exc).__name__, tries[i], settings.max_retries)
                    waiting_since[i], resent[i] = now, 0
                    resend.append(i)
        for i in resend:  # a death: sent again at once (Ray holds it until the worker is up, or refuses)
            refs[i] = calls[i]()
        if backoff:
            sleep(backoff)
        for i in wait_then_resend:
            refs[i] = calls[i]()
        pending = resend + wait_then_resend
    return results
