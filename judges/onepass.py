"""Dimension-wise judging at the cost of one call: every dimension's verdict from one pass over the answer.

The per-dimension judge (``llm_judge_dimwise``) asks the judge once per (answer, dimension): with 4-7
dimensions it costs 2.5x and more the unified judge. Here one prompt holds the rubric, the whole reference
and the whole answer, and the judge's reply is a list of verdict lines, one per dimension, in a fixed
order::

    Noise: 7
    Distortion: 3
    ...

``score_lines`` runs it on a local ``TransformersJudge``:

* ``logit`` mode: the assistant turn is opened with the first label ("Noise: "); the distribution over the
  digit tokens there gives that dimension's expected score. Then the greedy digit and the next label's
  tokens ("\\nDistortion: ") are appended on the key/value cache, a few tokens per step, and so on. The
  answer is read once; each further dimension costs a step of a handful of tokens. The prompts of a batch
  share rubric and reference (the G completions of a clip), which run once (the judge's prefix cache).
* ``generate`` mode: greedy decoding of all the lines, each parsed by its label.

Scores are single digits (a scale within 0-9), so each verdict is one token and no trie walk is needed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from judges.base import Judge, unique_requests
from judges.prompts import JudgeRequest
from judges.verdicts import Verdict, expected_verdict


@dataclass(frozen=True)
class LinesRequest:
    """One answer to grade on several labelled verdict lines (``labels``, in reply order)."""

    request: JudgeRequest
    labels: tuple[str, ...]


def check_scale(scale: tuple[int, int]) -> None:
    lo, hi = scale
    if not 0 <= lo < hi <= 9:
        raise ValueError(f"one-pass judging reads one digit per verdict: the scale must lie within 0-9, got {scale}")


def parse_lines(text: str, labels: Sequence[str], scale: tuple[int, int]) -> list[Verdict]:
    """The score after each label in ``text`` ("Noise: 7", "- **Noise**: 7/9"); the last such line wins.
    A missing or out-of-range line is a failed ``Verdict`` that says why."""
    lo, hi = scale
    out = []
    for label in labels:
        found = re.findall(rf"(?im)^[\s\-*#]*{re.escape(label)}[\s*]*:[\s*]*(\d+(?:\.\d+)?)", text)
        if not found:
            out.append(Verdict(None, f"unparseable: no '{label}:' line in {text.strip()[:80]!r}", text=text))
            continue
        value = float(found[-1])
        if not lo <= value <= hi:
            out.append(Verdict(None, f"out of range: {label} {value:g} not in [{lo}, {hi}]", text=text))
        else:
            out.append(Verdict(value, None, text=text))
    return out


def score_lines(judge: Judge, requests: Sequence[LinesRequest]) -> list[list[Verdict]]:
    """One list of verdicts (one per label) for each request. Identical requests are judged once.

    Needs a local ``TransformersJudge`` (it reads the key/value cache between lines); other backends raise
    ``TypeError`` (use the per-dimension reward there)."""
    from judges.transformers_judge import TransformersJudge

    if not isinstance(judge, TransformersJudge):
        raise TypeError(f"one-pass judging needs the transformers backend, got {type(judge).__name__}; "
                        "use llm_judge_dimwise without onepass for the openai and vllm backends")
    requests, unique = unique_requests(requests, judge.stats)
    if not unique:
        return []
    judge.load()
    todo = list(unique)
    results: list[list[Verdict] | None] = [None] * len(todo)
    groups: dict[tuple, list[int]] = {}
    for k, r in enumerate(todo):
        check_scale(r.request.scale)
        groups.setdefault((r.labels, r.request.scale), []).append(k)
    for (labels, scale), members in groups.items():
        ids, ok = [], []
        for k in members:
            prompt = judge.prompt_ids(todo[k].request, f"{labels[0]}: ")
            if len(prompt) > judge.max_input_tokens:
                error = f"prompt too long: {len(prompt)} tokens > max_input_tokens {judge.max_input_tokens}"
                results[k] = [Verdict(None, error) for _ in labels]
            else:
                ids.append(prompt)
                ok.append(k)
        run = _logit_lines if judge.mode == "logit" else _generate_lines
        for k, verdicts in zip(ok, run(judge, ids, labels, scale)):
            results[k] = verdicts
    for verdicts in results:
        for v in verdicts or []:
            if v.score is None:
                judge.stats.fail(v.error or "unknown: no reason given")
            else:
                judge.stats.add("scored")
    return [results[unique[r]] for r in requests]  # type: ignore[misc]


def _digit_ids(judge: Any, scale: tuple[int, int]) -> list[int]:
    ids = []
    for value in range(scale[0], scale[1] + 1):
        tok = judge._tok(str(value), add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            raise ValueError(f"the judge's tokenizer writes {value} as {len(tok)} tokens; one-pass judging needs one")
        ids.append(tok[0])
    return ids


def _logit_lines(judge: Any, prompts: list[list[int]], labels: tuple[str, ...], scale: tuple[int, int]) -> list[list[Verdict]]:
    digits = _digit_ids(judge, scale)
    # "\nDistortion: " after a digit: Qwen and SmolLM2 keep digits and newlines as their own tokens
    steps = [judge._tok(f"\n{label}: ", add_special_tokens=False)["input_ids"] for label in labels[1:]]
    out = []
    for vecs in judge._line_dists(prompts, digits, steps):
        reply = f"{labels[0]}: "  # the greedy reply so far, kept in each verdict's text
        verdicts = []
        for step, vec in enumerate(vecs):
            verdict = expected_verdict({scale[0] + j: q for j, q in enumerate(vec)}, judge.min_score_mass)
            verdict.text = reply
            verdicts.append(verdict)
            best = max(range(len(vec)), key=vec.__getitem__)
            reply += str(scale[0] + best) + (f"\n{labels[step + 1]}: " if step + 1 < len(labels) else "")
        out.append(verdicts)
    return out


def _generate_lines(judge: Any, prompts: list[list[int]], labels: tuple[str, ...], scale: tuple[int, int]) -> list[list[Verdict]]:
    first = f"{labels[0]}: "
    max_new = 4 + 6 * len(labels)  # a digit, a newline and a label of a few tokens per line
    return [parse_lines(first + reply, labels, scale) for reply in judge._greedy_texts(prompts, max_new)]
