"""Reward workers: Ray actors holding the configured ``RewardSet`` (rewards and their judges).

A worker builds its ``RewardSet`` from the plain config entries, so a worker that Ray restarts after
a crash rebuilds it the same way; model-backed rewards (the sentence embedder, an LLM judge) load
lazily on their first call inside the worker. The driver hands each worker whole groups (a group's
completions share a clip, and ``RewardSet`` decides ``None`` handling per group) and merges the
``ScoredBatch`` results with ``merge_scored``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

from grpo.worker_env import Secret, install_secrets
from rewards import RewardSet, ScoredBatch


@dataclass
class TimedScores(ScoredBatch):
    """A worker's ``ScoredBatch`` and the seconds its ``score`` call worked (logged as ``time/score_worker``;
    the rest of ``time/score`` is Ray and serialisation). The first call includes loading the reward models."""

    seconds: float = 0.0


class RewardWorker:
    """Scores completions against their clips' references; total plus components per reward and dimension."""

    def __init__(self, entries: Sequence[dict[str, Any]], aggregation: str = "sum", pass_audio: bool = False,
                 max_seconds: float | None = None, secrets: Mapping[str, Secret] | None = None):
        install_secrets(secrets)  # e.g. the judge's api_key_env, never in the runtime env (grpo/worker_env.py)
        self.reward_set = RewardSet.from_config(list(entries), aggregation)
        self.pass_audio = pass_audio
        self.max_seconds = max_seconds

    def score(self, completions: Sequence[str], references: Sequence[Any], prompts: Sequence[str],
              audio: Sequence[str]) -> TimedScores:
        """``references`` are the clips' ``Record``s, one per completion; ``audio`` their paths."""
        t0 = time.perf_counter()
        columns: dict[str, Any] = {"prompts": list(prompts)}
        if self.pass_audio:
            from grpo.batch import SAMPLING_RATE, load_waves

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


def merge_scored(parts: Sequence[ScoredBatch]) -> ScoredBatch:
    """Concatenate the workers' results in order. A key missing from a part (a reward that failed
    on that worker's batch has no components) is filled with ``None`` for its samples."""
    sizes = [len(p.total) for p in parts]

    def concat(attr: str) -> dict[str, list]:
        keys = list(dict.fromkeys(k for p in parts for k in getattr(p, attr)))
        return {k: [v for p, n in zip(parts, sizes) for v in getattr(p, attr).get(k, [None] * n)] for k in keys}

    def add(attr: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in parts:
            for k, v in getattr(p, attr).items():
                out[k] = out.get(k, 0) + v
        return out

    return ScoredBatch(total=[t for p in parts for t in p.total], per_reward=concat("per_reward"),
                       components=concat("components"), skipped=add("skipped"), errors=add("errors"),
                       total_skipped=sum(p.total_skipped for p in parts),
                       failures={k: v for p in parts for k, v in p.failures.items()})
