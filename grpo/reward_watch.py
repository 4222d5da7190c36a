"""Stop a GRPO run whose reward keeps failing.

A reward that raises (or breaks its contract) on every call scores ``None`` everywhere: every total is
``None``, every advantage 0, and the run would "succeed" on the KL term alone with only
``rewards/<name>/errors`` to show for it. ``RewardWatch`` counts, per reward, the consecutive steps in which
the reward failed on the whole batch, and after ``rewards.max_failed_steps`` of them raises
``RewardFailedError`` naming the reward and its error. A step in which the reward scored anything resets
its count: an intermittent failure (a judge that times out now and then) is counted and logged, not fatal.
"""
from __future__ import annotations

from rewards import ScoredBatch


class RewardFailedError(RuntimeError):
    """A reward failed on the whole batch for ``rewards.max_failed_steps`` consecutive steps."""


class RewardWatch:
    """Per-reward count of consecutive whole-batch failures; ``observe`` once per step.

    >>> watch = RewardWatch(max_failed_steps=2)
    >>> failed = ScoredBatch([None], {"r": [None]}, {}, {"r": 0}, {"r": 1}, 1, {"r": "TypeError: boom"})
    >>> watch.observe(failed, step=1)
    >>> watch.observe(failed, step=2)
    Traceback (most recent call last):
    ...
    grpo.reward_watch.RewardFailedError: reward 'r' failed on the whole batch in 2 consecutive steps (1-2; \
rewards.max_failed_steps=2): TypeError: boom
    """

    def __init__(self, max_failed_steps: int):
        self.max_failed_steps = max_failed_steps
        self.failed_steps: dict[str, int] = {}

    def observe(self, scores: ScoredBatch, step: int) -> None:
        n = len(scores.total)
        for name, errors in scores.errors.items():
            whole_batch = n > 0 and errors >= n
            self.failed_steps[name] = self.failed_steps.get(name, 0) + 1 if whole_batch else 0
            count = self.failed_steps[name]
            if count >= self.max_failed_steps:
                error = scores.failures.get(name, "no error message (every value was an error)")
                raise RewardFailedError(
                    f"reward {name!r} failed on the whole batch in {count} consecutive steps "
                    f"({step - count + 1}-{step}; rewards.max_failed_steps={self.max_failed_steps}): {error}")
