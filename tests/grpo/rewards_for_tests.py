"""Rewards for the GRPO tests, named in configs by dotted path (``tests.grpo.rewards_for_tests.<name>``).

An untrained tiny model writes random tokens: the builtin rewards give every completion of a clip the
same value, so these give the loop something to learn from, per-dimension components, flat groups on
chosen clips, and a worker crash.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rewards import RewardOutput


def is_flat_clip(clip_id: str, every: int = 2) -> bool:
    """A stable choice of clips whose groups get a constant reward (all but every ``every``-th hash)."""
    return int(hashlib.sha256(clip_id.encode()).hexdigest(), 16) % every != 0


def text_stats(completions, references, flat_every: int = 0, **columns):
    """Per completion: the share of vowels (``vowels``) and of spaces (``spaces``) in its text; the value is
    their sum. With ``flat_every`` > 0, clips chosen by ``is_flat_clip`` get 1.0 for every completion."""
    vowels, spaces = [], []
    for text, ref in zip(completions, references):
        if flat_every and is_flat_clip(ref.id, flat_every):
            vowels.append(0.5)
            spaces.append(0.5)
            continue
        n = max(len(text), 1)
        vowels.append(sum(ch in "aeiouAEIOU" for ch in text) / n)
        spaces.append(text.count(" ") / n)
    return RewardOutput([v + s for v, s in zip(vowels, spaces)], {"vowels": vowels, "spaces": spaces})


def crash_once(completions, references, marker: str = "", **columns):
    """Kills its own process (as ``kill -9`` would) the first time it is called, then scores 0."""
    if marker and not Path(marker).exists():
        Path(marker).write_text("crashed")
        os.kill(os.getpid(), 9)
    return [0.0] * len(completions)


def always_fails(completions, references, **columns):
    """A custom reward with a bug: raises on every call."""
    return [len(c) + "chars" for c in completions]  # TypeError: int + str
