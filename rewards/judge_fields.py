"""What a judge reads of a completion under ``judge_input: fields``: the fields our parser found, nothing else.

With ``judge_input: text`` (the default) the judge gets the answer rendered from the parsed fields, its
description, and the raw completion where the parser found nothing for the judged dimensions, so prose the
parser missed is still judged, and so is anything else the policy wrote, an instruction to the grader
included. With ``judge_input: fields`` the completion is parsed by ``sqrl.response.parse`` (the parser the
accuracy and format rewards read) and only its fields reach the judge:

* per judged dimension its score, or ``missing``;
* for noise, distortion and continuity the artifacts of that kind: kind, interval and their one-line text.

The description and every line the parser did not read (text before, between or after the fields) never
reach the judge. The artifact text is the one piece of free text that does; it stays because a wrong
artifact description is part of what the judge grades, and it reaches the judge fenced and neutralised like
any answer (``judges.prompts.delimit``).

``judge_input: structure`` drops the artifact text too: the judge reads scores, artifact kinds and intervals, no
free text at all, so no attack anywhere in a completion changes what it reads (the 1.5B judge on ``fields`` was
moved by +0.025 and +0.04 by two attacks in an artifact's text: tests/judges/test_injection.py); it cannot tell a
wrong artifact description either.

The reference is rendered by the same function, so the judge compares two texts in one layout.
"""
from __future__ import annotations

from typing import Any, Iterable

from sqrl.dimensions import ARTIFACT_DIMENSION, ARTIFACT_DISPLAY_NAMES, ARTIFACT_KINDS, DISPLAY_NAMES
from sqrl.response import render_artifact
from sqrl.schema import Artifact

JUDGE_INPUTS = ("text", "fields", "structure")


def check_judge_input(value: str, reward: str) -> str:
    if value not in JUDGE_INPUTS:
        raise ValueError(f"{reward}: judge_input must be one of {JUDGE_INPUTS}, got {value!r}")
    return value


def render_fields(assessment: Any, dimensions: Iterable[str], artifacts: bool = True, text: bool = True) -> str:
    """The scores of ``dimensions`` (``missing`` where there is none) and, with ``artifacts``, the artifacts
    of the kinds that explain them (``none`` where there are none), in the canonical answer layout; without
    ``text``, the artifacts' kinds and intervals only.

    >>> from sqrl.schema import Artifact, Assessment
    >>> print(render_fields(Assessment(scores={"noise": 2}, artifacts=[Artifact("noise", 0, 1.5, "hiss")],
    ...                                description="ignored"), ["noise", "overall"]))
    Scores:
    - Noise: 2/5
    - Overall quality: missing
    Artifacts:
    - Noise [0.00-1.50 s]: hiss
    """
    dims = list(dimensions)
    lines = ["Scores:"]
    for d in dims:
        score = assessment.scores.get(d)
        lines.append(f"- {DISPLAY_NAMES[d]}: {'missing' if score is None else f'{score}/5'}")
    kinds = [k for k in ARTIFACT_KINDS if ARTIFACT_DIMENSION[k] in dims]
    if artifacts and kinds:
        lines.append("Artifacts:")
        for kind in kinds:
            found = [a for a in assessment.artifacts if a.kind == kind]
            lines += [render_artifact(a if text else Artifact(a.kind, a.start, a.end, "")) for a in found] or [f"- {ARTIFACT_DISPLAY_NAMES[kind]}: none"]
    return "\n".join(lines)


def render_comparison(reference: Any, answer: Any, dimensions: Iterable[str]) -> str:
    """Per dimension the reference's and the answer's score side by side, for prompts with a ``{comparison}``
    placeholder. Only parsed integer scores go in, never text, so it may stand outside the fenced answer.

    >>> from sqrl.schema import Assessment
    >>> print(render_comparison(Assessment(scores={"noise": 2, "overall": 4}), Assessment(scores={"noise": 5}),
    ...                         ["noise", "overall"]))
    - Noise: reference 2/5, model 5/5
    - Overall quality: reference 4/5, model missing
    """
    def score(value: Any) -> str:
        return "missing" if value is None else f"{int(value)}/5"

    return "\n".join(f"- {DISPLAY_NAMES[d]}: reference {score(reference.scores.get(d))}, model {score(answer.scores.get(d))}"
                     for d in dimensions)
