"""Two custom rewards, named in YAML by dotted path (``configs/examples/custom_reward.yaml``).

Run from the repository root to score a small batch with them beside the builtin ones::

    python examples/my_rewards.py [configs/examples/custom_reward.yaml]

A reward is ``fn(completions, references, **columns) -> list[float | None]``. ``columns["parsed"]`` holds each
completion already parsed into an ``Assessment`` (scores, artifacts, description). Return ``None`` only when a
clip cannot be scored at all (never for a bad answer: that is a low value), and accept ``**columns``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from rewards import RewardOutput, RewardSet, summarize
from sqrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN


def brevity(completions, references, max_words=120, **columns):
    """1 while the long description stays within ``max_words``, then falling linearly to 0 at twice that;
    0 without a description.

    >>> from sqrl.schema import Assessment
    >>> brevity(["", ""], [None, None], max_words=4,
    ...         parsed=[Assessment(description="one two three"), Assessment(description="a b c d e f")])
    [1.0, 0.5]
    """
    out = []
    for answer in columns["parsed"]:
        words = len((answer.description or "").split())
        out.append(0.0 if words == 0 else max(0.0, min(1.0, 2.0 - words / max_words)))
    return out


def consistency(completions, references, dimensions=("naturalness", "noise", "distortion", "continuity"),
                **columns):
    """Reference-free: the overall score should sit near the mean of the other scores the answer gives.

    Value ``1 - |overall - mean(others)| / 4``; 0 when the answer lacks the overall score or all the others.
    Components: the gap per answer, for logging only.
    """
    values, gaps = [], []
    for answer in columns["parsed"]:
        others = [answer.scores[d] for d in dimensions if answer.scores.get(d) is not None]
        overall = answer.scores.get("overall")
        if overall is None or not others:
            values.append(0.0)
            gaps.append(None)
            continue
        gap = abs(overall - sum(others) / len(others))
        values.append(1.0 - gap / (SCORE_MAX - SCORE_MIN))
        gaps.append(gap)
    return RewardOutput(values, {"gap": gaps})


def _demo_batch():
    """Two clips, two completions each (G = 2), as a GRPO step would hand them over."""
    from sqrl.response import render
    from sqrl.schema import Artifact, Record

    clip = Record(id="c1", audio="c1.wav", scores={d: 4 for d in DIMENSIONS} | {"noise": 2, "overall": 3},
                  artifacts=[Artifact("noise", 0.0, 1.7, "a steady hiss")], description="Clear voice, hissy.")
    clean = Record(id="c2", audio="c2.wav", scores={d: 5 for d in DIMENSIONS}, description="Clean speech.")
    good = render(clip)
    sloppy = "Noise: 4/5\nOverall quality: 5/5\nArtifacts: none\nDescription: " + "very " * 300 + "good"
    return [good, sloppy, render(clean), "I cannot tell."], [clip, clip, clean, clean]


def main(config: str = "configs/examples/custom_reward.yaml") -> dict:
    spec = yaml.safe_load(Path(config).read_text())["rewards"]
    reward_set = RewardSet.from_config(spec["entries"], aggregation=spec.get("aggregation", "sum"))
    completions, references = _demo_batch()
    batch = reward_set.score(completions, references)
    report = {"rewards": reward_set.names, "total": batch.total, **summarize(batch)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(*sys.argv[1:])
