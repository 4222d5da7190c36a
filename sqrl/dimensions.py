"""The QualiSpeech quality dimensions, artifact kinds and the 1-5 scale.

Every stage names dimensions with these keys; display names are for prompts and answers only.
"""
from __future__ import annotations

SCORE_MIN = 1
SCORE_MAX = 5
# Higher is better on every dimension except speed, where 3 is a natural pace, 1 very slow and 5 very
# fast (QualiSpeech's convention; the paper leaves speed out of its evaluation for its imbalance).

# Order matters: it is the order of the canonical answer (sqrl/response.py).
DIMENSIONS: tuple[str, ...] = (
    "speed",
    "naturalness",
    "noise",
    "distortion",
    "listening_effort",
    "continuity",
    "overall",
)

# The paper evaluates six dimensions; speed is excluded for its imbalance (section 4.1, footnote 2).
EVAL_DIMENSIONS: tuple[str, ...] = tuple(d for d in DIMENSIONS if d != "speed")

DISPLAY_NAMES: dict[str, str] = {
    "speed": "Speed",
    "naturalness": "Naturalness",
    "noise": "Noise",
    "distortion": "Distortion",
    "listening_effort": "Listening effort",
    "continuity": "Continuity",
    "overall": "Overall quality",
}

ARTIFACT_KINDS: tuple[str, ...] = ("noise", "distortion", "unnatural_pause")

ARTIFACT_DISPLAY_NAMES: dict[str, str] = {
    "noise": "Noise",
    "distortion": "Distortion",
    "unnatural_pause": "Unnatural pause",
}

# The score dimension that each artifact kind explains (used by dimension-wise rewards).
ARTIFACT_DIMENSION: dict[str, str] = {
    "noise": "noise",
    "distortion": "distortion",
    "unnatural_pause": "continuity",
}


def check_dimension(name: str) -> str:
    """Return ``name`` if it is a known dimension, else raise ``ValueError`` listing the known ones."""
    if name not in DIMENSIONS:
        raise ValueError(f"unknown dimension {name!r}; known: {', '.join(DIMENSIONS)}")
    return name


def check_artifact_kind(kind: str) -> str:
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(ARTIFACT_KINDS)}")
    return kind


def valid_score(value: object) -> bool:
    """True for an integer (not bool) on the 1-5 scale."""
    return isinstance(value, int) and not isinstance(value, bool) and SCORE_MIN <= value <= SCORE_MAX
