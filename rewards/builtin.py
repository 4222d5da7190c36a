"""Builtin reference-based rewards: ``accuracy`` (paper eq. 4), ``semantic`` (eq. 5), ``format``, ``interval_iou``.

Each is a small picklable class registered by name; YAML ``params`` go to ``__init__``. All of them are
dimension-wise: they return ``RewardOutput`` whose components are per dimension (``accuracy``, ``format``) or
per artifact kind (``semantic``, ``interval_iou``), and whose value is the sum of the available components
(``format``: their mean). A component is ``None`` only when the *reference* cannot support it, so that a
``None`` is the same for every completion of a clip (see ``rewards.base.RewardSet``).

``dimensions`` (default: all seven ``DIMENSIONS``; speed is trained even though the paper does not evaluate it,
because the answer contains it) selects what a reward looks at. For the artifact rewards a dimension selects
the kinds that explain it (``continuity`` -> ``unnatural_pause``), and kind names are accepted too.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from rewards.base import RewardOutput, add_components, parsed_column, register
from sqrl.dimensions import ARTIFACT_DIMENSION, ARTIFACT_KINDS, DIMENSIONS, SCORE_MAX, SCORE_MIN, valid_score
from sqrl.metrics import interval_iou, kind_intervals, kind_text, text_similarity, total_length

SCALE = SCORE_MAX - SCORE_MIN  # 4: the largest possible score error


def select_dimensions(dimensions: Iterable[str] | str | None, reward: str) -> tuple[str, ...]:
    """Validated dimension names (default: all ``DIMENSIONS``)."""
    if dimensions is None:
        return DIMENSIONS
    dims = (dimensions,) if isinstance(dimensions, str) else tuple(dimensions)
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown or not dims:
        raise ValueError(f"{reward}: unknown or no dimensions {unknown or dims}; known: {', '.join(DIMENSIONS)}")
    return tuple(dict.fromkeys(dims))


def select_kinds(dimensions: Iterable[str] | str | None, reward: str) -> tuple[str, ...]:
    """Artifact kinds selected by dimension or kind names (default: all kinds); an empty selection is an error."""
    if dimensions is None:
        return ARTIFACT_KINDS
    names = (dimensions,) if isinstance(dimensions, str) else tuple(dimensions)
    unknown = [n for n in names if n not in DIMENSIONS and n not in ARTIFACT_KINDS]
    if unknown:
        raise ValueError(f"{reward}: unknown dimensions/kinds {unknown}; "
                         f"kinds: {', '.join(ARTIFACT_KINDS)}; dimensions: {', '.join(DIMENSIONS)}")
    kinds = tuple(k for k in ARTIFACT_KINDS if k in names or ARTIFACT_DIMENSION[k] in names)
    if not kinds:
        explained = sorted(set(ARTIFACT_DIMENSION.values()))
        raise ValueError(f"{reward}: none of {list(names)} has an artifact kind; use one of "
                         f"{', '.join(ARTIFACT_KINDS)} or the dimensions they explain ({', '.join(explained)})")
    return kinds


@register("accuracy")
class Accuracy:
    """Score accuracy per dimension: ``1[s_pred == s_ref]`` (paper eq. 4), or with ``soft=True``
    ``1 - |s_pred - s_ref| / 4``. A missing predicted score gives 0 (the model failed to answer); a missing
    reference score leaves that dimension out; ``None`` only when the reference scores none of the dimensions.
    Value: the sum over dimensions.

    >>> from sqrl.schema import Assessment, Record
    >>> ref = Record(scores={"noise": 2, "distortion": 5})
    >>> pred = Assessment(scores={"noise": 2, "distortion": 3})
    >>> out = Accuracy(dimensions=["noise", "distortion"])(["..."], [ref], parsed=[pred])
    >>> out.values, out.components
    ([1.0], {'noise': [1.0], 'distortion': [0.0]})
    >>> Accuracy(soft=True, dimensions=["noise", "distortion"])(["..."], [ref], parsed=[pred]).values
    [1.5]
    """

    score_digits_only = True
    """Each component reads one dimension's score digit and nothing else (``algorithm.credit: scores``)."""

    def __init__(self, soft: bool = False, dimensions: Iterable[str] | None = None):
        self.soft = bool(soft)
        self.dimensions = select_dimensions(dimensions, "accuracy")

    def score(self, pred: Any, ref: Any) -> float | None:
        if not valid_score(ref):
            return None
        if not valid_score(pred):
            return 0.0
        return 1.0 - abs(pred - ref) / SCALE if self.soft else float(pred == ref)

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        comps = {d: [self.score(p.scores.get(d), r.scores.get(d)) for p, r in zip(parsed, references)]
                 for d in self.dimensions}
        return RewardOutput(add_components(comps, len(parsed)), comps)


@register("semantic")
class Semantic:
    """Similarity of each artifact kind's brief description to the reference's: ``(cos(e_pred, e_ref) + 1) / 2``
    (paper eq. 5) with all-MiniLM-L6-v2 (``sqrl.embedder``; each distinct text embedded once per batch).

    Per kind: both sides report no artifact -> 1; one reports it and the other does not -> 0; both report it ->
    the similarity of the texts, where several artifacts of a kind are joined in time order with ``"; "`` (so
    describing all of them is rewarded, not just the best one); a detected but undescribed artifact counts as
    empty text, and empty vs text -> 0, empty vs empty -> 1. Value: the sum over kinds; never ``None``.

    >>> from sqrl.schema import Artifact, Assessment, Record
    >>> ref = Record(artifacts=[Artifact("noise", 0.0, 1.0, "a steady hiss")])
    >>> pred = Assessment()  # says no noise, distortion, pause
    >>> Semantic()(["..."], [ref], parsed=[pred]).components
    {'noise': [0.0], 'distortion': [1.0], 'unnatural_pause': [1.0]}
    """

    def __init__(self, dimensions: Iterable[str] | None = None):
        self.kinds = select_kinds(dimensions, "semantic")

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        comps: dict[str, list] = {k: [None] * len(parsed) for k in self.kinds}
        slots, pred_texts, ref_texts = [], [], []
        for i, (p, r) in enumerate(zip(parsed, references)):
            for k in self.kinds:
                pt, rt = kind_text(p, k), kind_text(r, k)
                if pt is None or rt is None:
                    comps[k][i] = 1.0 if pt is None and rt is None else 0.0
                else:  # both detect: compare texts, in one embedding batch for the whole call
                    slots.append((k, i))
                    pred_texts.append(pt)
                    ref_texts.append(rt)
        for (k, i), sim in zip(slots, text_similarity(pred_texts, ref_texts)):
            comps[k][i] = sim
        return RewardOutput(add_components(comps, len(parsed)), comps)


@register("format")
class Format:
    """Fraction of the selected dimensions whose score is present and parseable (an integer 1-5); with
    ``description=True`` the long-form description counts as one more item. Never ``None``.

    >>> Format(dimensions=["noise", "distortion"])(["Noise: 4/5\\nDistortion: 7/5"], [None]).values
    [0.5]
    """

    def __init__(self, dimensions: Iterable[str] | None = None, description: bool = False):
        self.dimensions = select_dimensions(dimensions, "format")
        self.description = bool(description)

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        comps = {d: [float(valid_score(p.scores.get(d))) for p in parsed] for d in self.dimensions}
        if self.description:
            comps["description"] = [float(bool(p.description and p.description.strip())) for p in parsed]
        values = [sum(c[i] for c in comps.values()) / len(comps) for i in range(len(parsed))]
        return RewardOutput(values, comps)


@register("interval_iou")
class IntervalIoU:
    """Per artifact kind, IoU of the union of the claimed intervals with the union of the reference's.

    Both sides report none -> 1; exactly one reports the kind -> 0; a reference whose intervals of that kind
    have zero total length (time not annotated) -> ``None`` for that kind. Value: the sum over the available
    kinds (``None`` when no kind is available).

    >>> from sqrl.schema import Artifact, Assessment, Record
    >>> ref = Record(artifacts=[Artifact("noise", 0.0, 2.0, "hiss")])
    >>> pred = Assessment(artifacts=[Artifact("noise", 1.0, 3.0, "hiss")])
    >>> IntervalIoU(dimensions=["noise"])(["..."], [ref], parsed=[pred]).values  # 1 s overlap / 3 s union
    [0.3333333333333333]
    """

    def __init__(self, dimensions: Iterable[str] | None = None):
        self.kinds = select_kinds(dimensions, "interval_iou")

    @staticmethod
    def score(pred: list, ref: list) -> float | None:
        if not pred and not ref:
            return 1.0
        if ref and total_length(ref) <= 0:
            return None
        if not pred or not ref:
            return 0.0
        return interval_iou(pred, ref) or 0.0  # ref has length, so union > 0; `or` maps a 0-length pred to 0

    def __call__(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> RewardOutput:
        parsed = parsed_column(completions, columns)
        comps = {k: [self.score(kind_intervals(p, k), kind_intervals(r, k)) for p, r in zip(parsed, references)]
                 for k in self.kinds}
        return RewardOutput(add_components(comps, len(parsed)), comps)
