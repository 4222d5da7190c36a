"""The LLM-judge rewards: ``llm_judge_dimwise`` (Calibration-Reasoning, section 3.2.1 / Figure 2) and
``llm_judge_unified`` (SQ-LLM's Helpfulness, Relevance, Accuracy, Level of Detail).

Both send every judgement of a batch to the judge in one ``Judge.score`` call; identical requests
(the same answer fragment against the same reference, e.g. repeated completions in a GRPO group)
are judged once. A judge failure (timeout, HTTP error, unparseable verdict) makes that component
``None`` and the sample's value ``None``: it is counted (``self.stats`` and the judge's own
counters, logged) and never turned into a 0, which would teach the policy that the judge's outage
was its fault.

Scales:

* ``llm_judge_dimwise``: per dimension the judge gives 0-10, normalised to [0, 1]; the value is the
  sum over the dimensions the reference scores (the paper's "sum of dimension-wise rewards"), so
  it lies in [0, number of dimensions] (7 by default, 6 with ``EVAL_DIMENSIONS``).
* ``llm_judge_unified``: per criterion 0-10 normalised to [0, 1]; the value is the weighted *mean*
  ``sum_k w_k r_k / sum_k w_k`` in [0, 1] (weights 1, 1, 2, 0.5), so it reads like one normalised
  dimension of the dimension-wise reward; ``normalize=False`` gives SQ-LLM's weighted sum in
  [0, 4.5]. Scale either with the reward's ``weight`` in the config.

The judge is given as a config name (``"smollm2"``, ``"qwen3_openai"``), a YAML path, a dict of
``build_judge`` parameters, or a ``Judge`` instance; it is built lazily on the first call, so the
reward pickles small and loads its model in the worker.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterable, Sequence

from judges.base import Judge, judge_from_config, load_judge_config
from judges.prompts import JudgeRequest, PromptSpec, load_prompts
from judges.verdicts import Verdict
from judges.onepass import LinesRequest, check_scale, score_lines
from rewards.base import LazyReward, RewardOutput, parsed_column, register
from rewards.builtin import select_dimensions
from rewards.judge_fields import check_judge_input, render_comparison, render_fields
from sqrl.dimensions import ARTIFACT_DIMENSION, ARTIFACT_KINDS, DISPLAY_NAMES
from sqrl.response import render

log = logging.getLogger("sqrl.rewards")


def kinds_for(dimension: str) -> list[str]:
    """The artifact kinds that explain ``dimension`` (``continuity`` -> ``unnatural_pause``)."""
    return [k for k in ARTIFACT_KINDS if ARTIFACT_DIMENSION[k] == dimension]


def reference_fragment(reference: Any, dimension: str) -> str | None:
    """The reference annotation of one dimension in the canonical answer format: its score and, for
    noise, distortion and continuity, the reference artifacts (or "none"). ``None`` when the
    reference has no score for the dimension: there is nothing to judge against."""
    if reference.scores.get(dimension) is None:
        return None
    return render(reference, dimensions=[dimension], artifacts=kinds_for(dimension) or False, description=False)


def answer_fragment(parsed: Any, completion: Any, dimension: str, description: bool = False) -> str:
    """The part of the answer about ``dimension``, rendered canonically from the parsed answer; the raw
    completion when the parser found neither a score nor an artifact for it (prose the parser missed
    is still judged, and the judge sees everything the model said)."""
    kinds = kinds_for(dimension)
    if parsed.scores.get(dimension) is None and not any(parsed.artifacts_of(k) for k in kinds):
        return completion if isinstance(completion, str) else ""
    return render(parsed, dimensions=[dimension], artifacts=kinds or False, description=description)


class _JudgeReward(LazyReward):
    """Holds the judge config and the prompt set; ``self.model`` is the judge, built on first use."""

    def __init__(self, judge: str | dict | Judge, prompts: str | PromptSpec, judge_input: str = "text") -> None:
        self._judge_obj = judge if isinstance(judge, Judge) else None
        self.judge_config = None if self._judge_obj is not None else load_judge_config(judge)
        if self.judge_config is not None:
            judge_from_config(self.judge_config)  # constructors load nothing: a bad parameter fails here, not in a worker
        self.prompts = prompts if isinstance(prompts, PromptSpec) else load_prompts(prompts)
        self.judge_input = check_judge_input(judge_input, type(self).__name__)
        self.artifact_text = self.judge_input != "structure"
        verdict = self.prompts.extra.get("verdict", "agreement")
        if verdict not in ("agreement", "distance"):
            raise ValueError(f"{self.prompts.source}: verdict must be 'agreement' or 'distance', got {verdict!r}")
        self.distance = verdict == "distance"
        self.stats: Counter[str] = Counter()

    def _fields(self, reference: Any, parsed: Any, dims: list[str]) -> tuple[str, str]:
        """The reference and the answer as the judge reads them under ``judge_input: fields`` or ``structure``."""
        return (render_fields(reference, dims, text=self.artifact_text),
                render_fields(parsed, dims, text=self.artifact_text))

    def _normalized(self, verdict: Verdict) -> float | None:
        """The verdict on [0, 1], 1 best: a ``verdict: distance`` prompt set's judge writes how far the answer is
        from the reference (0 = the same), so its normalised score is turned around."""
        value = verdict.normalized(self.prompts.scale)
        return None if value is None else (1.0 - value if self.distance else value)

    def load(self) -> Judge:
        return self._judge_obj if self._judge_obj is not None else judge_from_config(self.judge_config)

    def _meanings(self, reward: str) -> dict[str, str]:
        """The prompt set's one-line meaning of every judged dimension (``meanings:``), for verdict-line prompts."""
        meanings = self.prompts.extra.get("meanings") or {}
        missing = [d for d in self.dimensions if d not in meanings]
        if missing:
            raise ValueError(f"{reward}: prompt set {self.prompts.source} has no 'meanings' for {missing}")
        return {d: str(meanings[d]).strip() for d in self.dimensions}

    def _needs_transformers(self, reward: str, what: str) -> None:
        """Verdict lines read the judge's key/value cache between lines: only the local transformers backend can."""
        check_scale(self.prompts.scale)
        if self.judge_config is not None and self.judge_config.get("backend") != "transformers":
            raise ValueError(f"{reward}: {what} needs a transformers judge (it reads the key/value cache between verdict "
                             f"lines); got backend {self.judge_config.get('backend')!r}")

    def _judge_all(self, requests: list) -> list[Verdict]:
        """One verdict per request."""
        self.stats["judgements"] += len(requests)
        verdicts = self.model.score(requests) if requests else []
        self._count_failures(verdicts, len(requests))
        return verdicts

    def _judge_lines(self, requests: list) -> list[list[Verdict]]:
        """Every verdict line of each ``LinesRequest``'s reply; the last one is the request's verdict (failures
        are counted on it), the lines before it the judge's analysis."""
        self.stats["judgements"] += len(requests)
        lines = score_lines(self.model, requests) if requests else []
        self._count_failures([verdicts[-1] for verdicts in lines], len(requests))
        return lines

    def _count_failures(self, verdicts: list[Verdict], n: int) -> None:
        failed = sum(v.score is None for v in verdicts)
        if failed:
            self.stats["judge_failures"] += failed
            log.warning("%s: %d of %d judgements failed (components set to None); judge counters: %s",
                        type(self).__name__, failed, n, self.model.stats.as_dict())

    def _unscorable(self, n_failed: int) -> None:
        self.stats["samples_failed"] += n_failed


@register("llm_judge_dimwise")
class LLMJudgeDimwise(_JudgeReward):
    """Dimension-wise LLM-judge reward: the judge grades each dimension of the answer against that
    dimension's reference annotation (score, and artifacts with intervals for noise, distortion,
    continuity), 0-10 each. Components: per dimension, normalised to [0, 1]; ``None`` where the
    reference has no score for it (left out of the sum) or the judge failed. Value: the sum of the
    components, ``None`` if any judgement of the sample failed.

    ``dimensions``: which to judge (default all seven); ``description``: also show the answer's
    long description beside each dimension's fragment. ``onepass``: one request per completion with the
    whole reference and answer and one verdict line per dimension (prompt set ``dimwise_onepass``, scale
    0-9; transformers backend only), about the cost of one judgement instead of one per dimension.
    ``judge_input``: ``text`` (default), ``fields`` (only the parsed fields reach the judge) or ``structure``
    (the fields without any artifact text; ``rewards/judge_fields.py``). A prompt set with ``verdict: distance`` (``dimwise_onepass_compare``, the CPU
    judge that passes the sensitivity bar: docs/judges.md) has the judge write the distance to the reference;
    the component is ``1 - distance / top of the scale``.

    >>> from judges.base import Judge
    >>> from judges.verdicts import Verdict
    >>> class Fixed(Judge):            # a stand-in for the model, at the device boundary
    ...     def _judge(self, requests): return [Verdict(8.0) for _ in requests]
    >>> from sqrl.schema import Record
    >>> reward = LLMJudgeDimwise(judge=Fixed(), dimensions=["noise", "overall"])
    >>> out = reward(["Noise: 2/5"], [Record(scores={"noise": 2, "overall": 3})])
    >>> out.values, out.components
    ([1.6], {'noise': [0.8], 'overall': [0.8]})
    """

    def __init__(self, judge: str | dict | Judge = "smollm2", prompts: str | PromptSpec | None = None,
                 dimensions: Iterable[str] | None = None, description: bool = False, onepass: bool = False,
                 judge_input: str = "text") -> None:
        super().__init__(judge, prompts or ("dimwise_onepass" if onepass else "dimwise"), judge_input)
        self.onepass = bool(onepass)
        if self.onepass:
            self._needs_transformers("llm_judge_dimwise", "onepass")
        if "{comparison}" in self.prompts.user and not (self.onepass and self.judge_input != "text"):
            raise ValueError(f"llm_judge_dimwise: prompt set {self.prompts.source} shows the parsed scores side by side "
                             "({comparison}); it needs onepass: true and judge_input: fields or structure")
        self.dimensions = select_dimensions(dimensions, "llm_judge_dimwise")
        self.description = bool(description)
        self.meanings = self._meanings("llm_judge_dimwise")

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        if self.onepass:
            return self._onepass(parsed, completions, references)
        n = len(parsed)
        comps: dict[str, list] = {d: [None] * n for d in self.dimensions}
        slots, requests = [], []
        for i, (p, c, r) in enumerate(zip(parsed, completions, references)):
            for d in self.dimensions:
                ref = reference_fragment(r, d)
                if ref is None:
                    continue
                if self.judge_input != "text":
                    ref, answer = self._fields(r, p, [d])
                else:
                    answer = answer_fragment(p, c, d, self.description)
                requests.append(self.prompts.request(answer, dimension=DISPLAY_NAMES[d], meaning=self.meanings[d], reference=ref))
                slots.append((d, i))
        failed = [False] * n
        for (d, i), verdict in zip(slots, self._judge_all(requests)):
            comps[d][i] = self._normalized(verdict)
            failed[i] = failed[i] or verdict.score is None
        judged = [False] * n
        for _, i in slots:
            judged[i] = True
        values = [None if failed[i] or not judged[i] else sum(comps[d][i] for d in self.dimensions if comps[d][i] is not None)
                  for i in range(n)]
        self._unscorable(sum(failed))
        return RewardOutput(values, comps)


    def _onepass(self, parsed: list, completions: Sequence[Any], references: Sequence[Any]) -> RewardOutput:
        """One request per completion: the whole reference and answer for the dimensions the reference
        scores, and one verdict line per dimension (``judges/onepass.py``)."""
        n = len(parsed)
        comps: dict[str, list] = {d: [None] * n for d in self.dimensions}
        slots, requests = [], []
        for i, (p, c, r) in enumerate(zip(parsed, completions, references)):
            dims = [d for d in self.dimensions if r.scores.get(d) is not None]
            if not dims:
                continue
            kinds = [k for d in dims for k in kinds_for(d)]
            comparison = ""
            if self.judge_input != "text":
                reference, answer = self._fields(r, p, dims)
                comparison = render_comparison(r, p, dims)
            else:
                reference = render(r, dimensions=dims, artifacts=kinds or False, description=False)
                found = any(p.scores.get(d) is not None for d in dims) or any(p.artifacts_of(k) for k in kinds)
                answer = render(p, dimensions=dims, artifacts=kinds or False, description=self.description) if found else (
                    c if isinstance(c, str) else "")
            labels = tuple(DISPLAY_NAMES[d] for d in dims)
            request = self.prompts.request(answer, reference=reference, dimensions=", ".join(labels), comparison=comparison,
                                           meanings="\n".join(f"{DISPLAY_NAMES[d]}: {self.meanings[d]}" for d in dims))
            requests.append(LinesRequest(request, labels))
            slots.append((dims, i))
        self.stats["judgements"] += sum(len(dims) for dims, _ in slots)
        results = score_lines(self.model, requests) if requests else []
        values: list[float | None] = [None] * n
        for (dims, i), verdicts in zip(slots, results):
            for d, v in zip(dims, verdicts):
                comps[d][i] = self._normalized(v)
            if any(v.score is None for v in verdicts):
                self.stats["judge_failures"] += sum(v.score is None for v in verdicts)
            else:
                values[i] = sum(comps[d][i] for d in dims)
        failed = sum(any(v.score is None for v in verdicts) for verdicts in results)
        if failed:
            log.warning("llm_judge_dimwise (onepass): %d of %d completions had a failed verdict line; judge counters: %s",
                        failed, len(results), self.model.stats.as_dict())
        self._unscorable(failed)
        return RewardOutput(values, comps)


@register("llm_judge_unified")
class LLMJudgeUnified(_JudgeReward):
    """Unified LLM-judge reward (SQ-LLM): the judge grades the whole answer against the whole reference
    on each criterion (helpfulness, relevance, accuracy, level of detail; rubric in
    ``configs/judges/unified.yaml``), 0-10 each. Components: per criterion, normalised to [0, 1].
    Value: ``sum_k w_k r_k / sum_k w_k`` in [0, 1] (``normalize=False``: ``sum_k w_k r_k``), ``None`` if
    any criterion failed. ``weights`` overrides the YAML's (1, 1, 2, 0.5); ``criteria`` picks a subset;
    ``dimensions`` limits the reference's score lines. ``prompts: unified_compare`` (with ``judge_input:
    fields`` or ``structure``) also shows the judge both scores of every dimension side by side, still for one
    grade of the whole answer: the help the dimension-wise CPU judge gets from ``dimwise_onepass_compare``.
    A prompt set with ``lines: dimensions`` (``unified_lines``, transformers backend) has the judge write a
    distance line per dimension first, as its analysis, and the criterion's grade last; only the last line
    is the reward, so the judge still weighs the dimensions into one number itself.

    >>> from judges.base import Judge
    >>> from judges.verdicts import Verdict
    >>> class Fixed(Judge):
    ...     def _judge(self, requests): return [Verdict(5.0) for _ in requests]
    >>> from sqrl.schema import Record
    >>> LLMJudgeUnified(judge=Fixed())(["Noise: 2/5"], [Record(scores={"noise": 2})]).values
    [0.5]
    """

    def __init__(self, judge: str | dict | Judge = "smollm2", prompts: str | PromptSpec = "unified",
                 criteria: Iterable[str] | None = None, weights: dict[str, float] | None = None,
                 normalize: bool = True, dimensions: Iterable[str] | None = None, judge_input: str = "text") -> None:
        super().__init__(judge, prompts, judge_input)
        table = self.prompts.extra.get("criteria")
        if not isinstance(table, dict) or not table:
            raise ValueError(f"llm_judge_unified: prompt set {self.prompts.source} has no 'criteria'")
        self.criteria = tuple(criteria) if criteria is not None else tuple(table)
        unknown = [c for c in list(self.criteria) + list(weights or {}) if c not in table]
        if unknown or not self.criteria:
            raise ValueError(f"llm_judge_unified: unknown or no criteria {unknown or self.criteria}; known: {', '.join(table)}")
        self.table = {c: table[c] for c in self.criteria}
        self.weights = {c: float((weights or {}).get(c, table[c].get("weight", 1.0))) for c in self.criteria}
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"llm_judge_unified: weights must be >= 0 with a positive sum, got {self.weights}")
        self.normalize = bool(normalize)
        self.dimensions = select_dimensions(dimensions, "llm_judge_unified")
        self.comparison = "{comparison}" in self.prompts.user
        if self.comparison and self.judge_input == "text":
            raise ValueError(f"llm_judge_unified: prompt set {self.prompts.source} shows the parsed scores side by side "
                             "({comparison}); it needs judge_input: fields or structure")
        lines = self.prompts.extra.get("lines")
        if lines not in (None, "dimensions"):
            raise ValueError(f"{self.prompts.source}: lines must be 'dimensions' or absent, got {lines!r}")
        self.lines = lines == "dimensions"
        if self.lines:
            self._needs_transformers("llm_judge_unified", "a prompt set with analysis lines")
            self.meanings = self._meanings("llm_judge_unified")

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        n = len(completions)
        comps: dict[str, list] = {c: [None] * n for c in self.criteria}
        slots, requests, analysed = [], [], []
        fields = self.judge_input != "text"
        parsed = parsed_column(completions, columns) if fields else [None] * n
        for i, (c, p, r) in enumerate(zip(completions, parsed, references)):
            if all(r.scores.get(d) is None for d in self.dimensions) and not r.description and not r.artifacts:
                continue  # an unannotated clip: nothing to judge against (the same for its whole group)
            extra, scored = {}, [d for d in self.dimensions if r.scores.get(d) is not None]
            if fields:
                reference = render_fields(r, self.dimensions, text=self.artifact_text)
                answer = render_fields(p, self.dimensions, text=self.artifact_text)
                if self.comparison:
                    extra["comparison"] = render_comparison(r, p, scored)
            else:
                reference, answer = render(r, dimensions=self.dimensions), c if isinstance(c, str) else ""
            if self.lines:
                extra["dimensions"] = ", ".join(DISPLAY_NAMES[d] for d in scored)
                extra["meanings"] = "\n".join(f"{DISPLAY_NAMES[d]}: {self.meanings[d]}" for d in scored)
            for k in self.criteria:
                name = self.table[k].get("name", k)
                request = self.prompts.request(answer, criterion=name, rubric=str(self.table[k]["rubric"]).strip(),
                                               reference=reference, **extra)
                requests.append(LinesRequest(request, tuple(DISPLAY_NAMES[d] for d in scored) + (name,))
                                if self.lines else request)
                slots.append((k, i))
                analysed.append(scored)
        failed = [False] * n
        if self.lines:
            # the analysis lines are logged beside the reward (``analysis/<dim>``, 1 - distance / 4), never part of it
            replies = self._judge_lines(requests)
            verdicts = [reply[-1] for reply in replies]
            for d in self.dimensions:
                comps[f"analysis/{d}"] = [None] * n
            for (_, i), dims, reply in zip(slots, analysed, replies):
                for d, verdict in zip(dims, reply[:-1]):
                    comps[f"analysis/{d}"][i] = self._normalized(verdict)
        else:
            verdicts = self._judge_all(requests)
        for (k, i), verdict in zip(slots, verdicts):
            comps[k][i] = self._normalized(verdict)
            failed[i] = failed[i] or verdict.score is None
        scale = sum(self.weights.values()) if self.normalize else 1.0
        judged = {i for _, i in slots}
        values = [None if failed[i] or i not in judged else sum(self.weights[k] * comps[k][i] for k in self.criteria) / scale
                  for i in range(n)]
        self._unscorable(sum(failed))
        return RewardOutput(values, comps)
