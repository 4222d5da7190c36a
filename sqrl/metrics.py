"""The paper's evaluation (Tables 1 and 3): score correlation per dimension, artifact detection, localisation
and description, and long-form ROUGE-L. Also the interval and artifact-text helpers the rewards share.

Decisions (they change numbers, so they are fixed here and documented once):

* **Missing predictions count against the model.** A prediction that lacks a score (unparseable answer,
  failed generation) is filled with the scale midpoint 3 for PCC, SRCC and MAE; ``parse_rate`` reports how
  often that happened. A clip whose *reference* lacks the score is left out of that dimension.
* **Undefined correlations are ``None``, never NaN.** Pearson/Spearman need two or more clips and variance on
  both sides. ``pcc[dim]`` is ``None`` when undefined. ``pcc["mean"]`` averages the paper's six dimensions
  (``EVAL_DIMENSIONS``); a dimension whose *predictions* are constant (while references vary) enters the mean
  as 0.0 (no predictive correlation), one whose references cannot support a correlation (fewer than two clips,
  or constant) is left out. Same for ``srcc``.
* **Artifacts.** A clip is positive for a kind when it has at least one artifact of that kind. ``f1`` is
  detection F1 over clips (``None`` when no clip is positive on either side). ``iou`` is the mean IoU of the
  union of predicted vs reference intervals over clips where both detect the kind (a reference whose intervals
  have zero total length has no usable time and is left out). ``similarity`` is the mean
  ``(cos + 1) / 2`` of the all-MiniLM-L6-v2 embeddings of the predicted vs reference description (the kind's
  texts joined in time order) over clips where both detect. ``None`` when no clip qualifies.
* **Voice** (the voice line, ``Assessment.voice``) over clips whose reference names the voice: ``stated``
  is the fraction of answers with a voice line, ``exact`` the fraction equal to the reference (case and
  spacing ignored; the synthetic corpus writes one fixed phrase per kind and level), ``similarity`` the mean
  eq.-5 similarity with the empty-text rule (a missing line scores 0). ``n`` is 0 and the rest ``None`` when
  no reference names the voice.
* **ROUGE-L** is the mean F-measure (``rouge-score``, stemming on) over clips with a reference description; a
  missing predicted description scores 0.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np

from sqrl.dimensions import ARTIFACT_KINDS, DIMENSIONS, EVAL_DIMENSIONS, SCORE_MAX, SCORE_MIN, valid_score
from sqrl.schema import Assessment

MIDPOINT = 3  # fill value for a missing predicted score
Interval = tuple[float, float]


# ------------------------------------------------------------------------------------ shared helpers
def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """Sorted, non-overlapping union of ``(start, end)`` intervals (touching ones merge).

    >>> merge_intervals([(2.0, 3.0), (0.0, 1.0), (0.5, 1.5)])
    [(0.0, 1.5), (2.0, 3.0)]
    """
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in intervals if e >= s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def total_length(intervals: Sequence[Interval]) -> float:
    return float(sum(e - s for s, e in merge_intervals(intervals)))


def intersection_length(a: Sequence[Interval], b: Sequence[Interval]) -> float:
    """Length of the intersection of the unions of ``a`` and ``b``."""
    a, b = merge_intervals(a), merge_intervals(b)
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def interval_iou(pred: Sequence[Interval], ref: Sequence[Interval]) -> float | None:
    """IoU of the union of ``pred`` and the union of ``ref``; ``None`` when both unions have zero length.

    >>> interval_iou([(0.0, 2.0)], [(1.0, 3.0)])  # overlap 1 s, union 3 s
    0.3333333333333333
    """
    inter = intersection_length(pred, ref)
    union = total_length(pred) + total_length(ref) - inter
    return inter / union if union > 0 else None


def kind_intervals(answer: Assessment, kind: str) -> list[Interval]:
    return [(a.start, a.end) for a in answer.artifacts if a.kind == kind]


def kind_text(answer: Assessment, kind: str) -> str | None:
    """The brief description of ``kind`` in ``answer``: its artifacts' texts joined in time order with ``"; "``,
    ``""`` when detected but not described, ``None`` when the kind is absent."""
    found = sorted((a for a in answer.artifacts if a.kind == kind), key=lambda a: (a.start, a.end))
    if not found:
        return None
    return "; ".join(a.text.strip() for a in found if a.text and a.text.strip())


def predicted_score(answer: Assessment | None, dim: str) -> float | None:
    """The predicted score if usable: an integer on the 1-5 scale, or a real number in [1, 5] (an
    expected score from ``sqrl eval``'s probability readout)."""
    value = answer.scores.get(dim) if answer is not None else None
    if isinstance(value, float) and math.isfinite(value) and SCORE_MIN <= value <= SCORE_MAX:
        return value
    return value if valid_score(value) else None


# ----------------------------------------------------------------------------------- correlations
def _correlation(kind: str, pred: np.ndarray, ref: np.ndarray) -> tuple[float | None, str]:
    """``(value, status)`` with status ``ok``, ``constant_prediction`` or ``unusable_reference``."""
    if len(ref) < 2 or np.ptp(ref) == 0:
        return None, "unusable_reference"
    if np.ptp(pred) == 0:
        return None, "constant_prediction"
    from scipy import stats

    fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
    value = float(fn(pred, ref)[0])
    return (value, "ok") if math.isfinite(value) else (None, "constant_prediction")


def score_metrics(predictions: Sequence[Assessment | None], references: Sequence[Assessment]) -> dict[str, dict]:
    """``{"pcc": {...}, "srcc": {...}, "mae": {...}}``, each per dimension plus ``mean`` over EVAL_DIMENSIONS."""
    out: dict[str, dict] = {"pcc": {}, "srcc": {}, "mae": {}}
    status: dict[str, dict[str, str]] = {"pcc": {}, "srcc": {}}
    for dim in DIMENSIONS:
        pairs = [(predicted_score(p, dim) or MIDPOINT, r.scores.get(dim))
                 for p, r in zip(predictions, references) if valid_score(r.scores.get(dim))]
        pred = np.array([p for p, _ in pairs], dtype=float)
        ref = np.array([r for _, r in pairs], dtype=float)
        out["mae"][dim] = float(np.mean(np.abs(pred - ref))) if pairs else None
        for key, kind in (("pcc", "pearson"), ("srcc", "spearman")):
            out[key][dim], status[key][dim] = _correlation(kind, pred, ref)
    maes = [out["mae"][d] for d in EVAL_DIMENSIONS if out["mae"][d] is not None]
    out["mae"]["mean"] = float(np.mean(maes)) if maes else None
    for key in ("pcc", "srcc"):
        usable = [d for d in EVAL_DIMENSIONS if status[key][d] != "unusable_reference"]
        vals = [out[key][d] if out[key][d] is not None else 0.0 for d in usable]
        out[key]["mean"] = float(np.mean(vals)) if vals else None
    return out


def parse_rate(predictions: Sequence[Assessment | None], references: Sequence[Assessment]) -> float | None:
    """Fraction of clips whose prediction has a valid score for every dimension the reference scores."""
    if not references:
        return None
    ok = 0
    for p, r in zip(predictions, references):
        dims = [d for d in DIMENSIONS if valid_score(r.scores.get(d))]
        ok += all(predicted_score(p, d) is not None for d in dims) and (p is not None)
    return ok / len(references)


# --------------------------------------------------------------------------------------- artifacts
def detection_f1(pred_pos: Sequence[bool], ref_pos: Sequence[bool]) -> float | None:
    """F1 of clip-level detection; ``None`` when neither side has a positive.

    >>> detection_f1([True, True, False, False], [True, False, True, False])  # tp=1 fp=1 fn=1
    0.5
    """
    tp = sum(p and r for p, r in zip(pred_pos, ref_pos))
    fp = sum(p and not r for p, r in zip(pred_pos, ref_pos))
    fn = sum(r and not p for p, r in zip(pred_pos, ref_pos))
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None


def artifact_metrics(predictions: Sequence[Assessment | None], references: Sequence[Assessment],
                     *, embed: bool = True) -> dict[str, dict[str, float | None]]:
    """``{kind: {"f1", "iou", "similarity"}}``; ``embed=False`` skips the embedder (similarity ``None``)."""
    preds = [p if p is not None else Assessment() for p in predictions]
    out = {}
    for kind in ARTIFACT_KINDS:
        pred_pos = [bool(kind_intervals(p, kind)) for p in preds]
        ref_pos = [bool(kind_intervals(r, kind)) for r in references]
        both = [i for i, (p, r) in enumerate(zip(pred_pos, ref_pos)) if p and r]
        ious = [interval_iou(kind_intervals(preds[i], kind), kind_intervals(references[i], kind)) for i in both
                if total_length(kind_intervals(references[i], kind)) > 0]
        ious = [x for x in ious if x is not None]
        sim = None
        if embed and both:
            sim = float(np.mean(text_similarity([kind_text(preds[i], kind) or "" for i in both],
                                                [kind_text(references[i], kind) or "" for i in both])))
        out[kind] = {"f1": detection_f1(pred_pos, ref_pos),
                     "iou": float(np.mean(ious)) if ious else None,
                     "similarity": sim}
    return out


def text_similarity(pred: Sequence[str], ref: Sequence[str]) -> list[float]:
    """Paper eq. 5 per pair, with the empty-text rule: both empty -> 1, exactly one empty -> 0."""
    out: list[float | None] = [None] * len(pred)
    todo = []
    for i, (p, r) in enumerate(zip(pred, ref)):
        if not p or not r:
            out[i] = 1.0 if (not p and not r) else 0.0
        else:
            todo.append(i)
    if todo:
        from sqrl.embedder import similarity

        for i, s in zip(todo, similarity([pred[i] for i in todo], [ref[i] for i in todo])):
            out[i] = s
    return [float(x) for x in out]  # type: ignore[arg-type]


def voice_metrics(predictions: Sequence[Assessment | None], references: Sequence[Assessment],
                  *, embed: bool = True) -> dict[str, float | int | None]:
    """``{"n", "stated", "exact", "similarity"}`` for the voice line (module docstring);
    ``embed=False`` skips the embedder.

    >>> from sqrl.schema import Record
    >>> refs = [Record(voice="natural"), Record(voice="strongly robotic"), Record()]
    >>> m = voice_metrics([Assessment(voice="Natural"), Assessment(), None], refs, embed=False)
    >>> m["n"], m["stated"], m["exact"]
    (2, 0.5, 0.5)
    """
    pairs = [((p.voice if p is not None else None) or "", r.voice.strip())
             for p, r in zip(predictions, references) if r.voice and r.voice.strip()]
    if not pairs:
        return {"n": 0, "stated": None, "exact": None, "similarity": None}
    norm = lambda t: " ".join(t.lower().split()).strip(" .;,")  # noqa: E731  (as the parser reads a voice line)
    return {"n": len(pairs),
            "stated": float(np.mean([bool(p) for p, _ in pairs])),
            "exact": float(np.mean([norm(p) == norm(r) for p, r in pairs])),
            "similarity": float(np.mean(text_similarity(*zip(*pairs)))) if embed else None}


# --------------------------------------------------------------------------------------- long form
def rouge_l(predictions: Sequence[Assessment | None], references: Sequence[Assessment]) -> float | None:
    """Mean ROUGE-L F-measure over clips with a reference description; a missing prediction scores 0."""
    pairs = [((p.description if p is not None else None) or "", r.description)
             for p, r in zip(predictions, references) if r.description and r.description.strip()]
    if not pairs:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(r, p)["rougeL"].fmeasure if p.strip() else 0.0 for p, r in pairs]))


# ------------------------------------------------------------------------------------------- entry
def compute_metrics(predictions: Sequence[Assessment | None], references: Sequence[Assessment],
                    *, embed: bool = True, descriptions: bool = True) -> dict[str, Any]:
    """All metrics for ``predictions`` (parsed model answers; ``None`` for a failed generation) against
    ``references`` (the manifest's records), JSON-ready and NaN-free. Keys: ``pcc`` and ``srcc`` (per dimension
    and ``mean``), ``mae`` (per dimension), ``parse_rate``, ``artifacts`` (``{kind: {f1, iou, similarity}}``),
    ``voice`` (``{n, stated, exact, similarity}``), ``long_form`` (``{rouge_l}``), ``n``. See the module docstring for the rules on missing values.
    ``descriptions=False`` says the prompts asked for no description: ROUGE-L is then None, not a 0 for answers
    that rightly have none.

    >>> from sqrl.schema import Record
    >>> refs = [Record(scores={"noise": s}) for s in (1, 2, 3)]
    >>> preds = [Assessment(scores={"noise": s}) for s in (1, 3, 3)]
    >>> m = compute_metrics(preds, refs, embed=False)
    >>> round(m["pcc"]["noise"], 4), round(m["mae"]["noise"], 4), m["n"]
    (0.866, 0.3333, 3)
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    bad = [i for i, p in enumerate(predictions) if p is not None and not isinstance(p, Assessment)]
    if bad:
        raise TypeError(f"predictions must be Assessment or None; entry {bad[0]} is "
                        f"{type(predictions[bad[0]]).__name__} (parse answers with sqrl.response.parse)")
    out: dict[str, Any] = score_metrics(predictions, references)
    out["parse_rate"] = parse_rate(predictions, references)
    out["artifacts"] = artifact_metrics(predictions, references, embed=embed)
    out["voice"] = voice_metrics(predictions, references, embed=embed)
    out["long_form"] = {"rouge_l": rouge_l(predictions, references) if descriptions else None}
    out["n"] = len(references)
    return out


def with_expected(preds: list[Assessment | None], expected: list[dict[str, float]]) -> list[Assessment | None]:
    """Copies of ``preds`` whose scores are the expected scores where there is one (the integer elsewhere)."""
    out: list[Assessment | None] = []
    for pred, exp in zip(preds, expected):
        if pred is None:
            out.append(None)
            continue
        scores = {d: exp.get(d, v) if v is not None else None for d, v in pred.scores.items()}
        out.append(Assessment(scores=scores, artifacts=list(pred.artifacts), description=pred.description,
                              voice=pred.voice))
    return out


# ----------------------------------------------------------------------------------- paired bootstrap
def score_matrix(predictions: Sequence[Assessment | None], dims: Sequence[str] = DIMENSIONS) -> np.ndarray:
    """``(clips, dims)`` predicted scores as ``score_metrics`` reads them (a missing one is ``MIDPOINT``)."""
    return np.array([[predicted_score(p, d) or MIDPOINT for d in dims] for p in predictions], dtype=float)


def reference_matrix(references: Sequence[Assessment], dims: Sequence[str] = DIMENSIONS) -> np.ndarray:
    """``(clips, dims)`` reference scores, NaN where a clip has no valid label for a dimension."""
    return np.array([[float(r.scores[d]) if valid_score(r.scores.get(d)) else np.nan for d in dims]
                     for r in references], dtype=float)


def _weighted_pcc(weights: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """PCC of ``pred`` against ``ref`` for each row of clip weights ``(R, n)`` (a bootstrap resample's counts):
    0 where the prediction is constant, NaN where the reference is (as ``score_metrics``' mean counts them)."""
    total = weights.sum(axis=1)
    mp, mr = weights @ pred / total, weights @ ref / total
    cov = weights @ (pred * ref) / total - mp * mr
    vp = np.clip(weights @ (pred * pred) / total - mp ** 2, 0, None)
    vr = np.clip(weights @ (ref * ref) / total - mr ** 2, 0, None)
    tiny = 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        pcc = np.where(vp <= tiny, 0.0, cov / np.sqrt(vp * vr))
    return np.where(vr <= tiny, np.nan, np.clip(pcc, -1.0, 1.0))


def paired_bootstrap_pcc(scores: dict[str, np.ndarray], reference: np.ndarray, dims: Sequence[str] = DIMENSIONS,
                         *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """PCC per dimension and the mean over ``EVAL_DIMENSIONS`` for several models scored on the same clips, and
    each model's difference from the first with a paired bootstrap interval: the clips are resampled with
    replacement, the same resample for every model, ``resamples`` times.

    ``scores``: label -> ``(clips, dims)`` (``score_matrix``; the first label is the baseline); ``reference``:
    ``(clips, dims)`` (``reference_matrix``). Returns ``{label: {dim: {"pcc", "diff", "low", "high",
    "p_not_better"}}}`` with ``diff``/``low``/``high`` (the ``level`` percentile interval of the difference) and
    ``p_not_better`` (the share of resamples where the model is not above the baseline) absent for the baseline.
    As in ``score_metrics`` (whose values the points equal), a constant prediction has no PCC of its own
    (``pcc`` None) and counts 0 in the mean, and in the differences; a constant reference drops the dimension
    from the mean. The interval says how much the test clips alone
    move the difference; it says nothing of training seeds."""
    labels = list(scores)
    if not labels:
        raise ValueError("no model to compare")
    n = reference.shape[0]
    for label, mat in scores.items():
        if mat.shape != reference.shape:
            raise ValueError(f"{label}: scores of shape {mat.shape}, references {reference.shape}")
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)]).astype(float)
    weights = np.vstack([np.ones((1, n)), counts])  # row 0: the clips as they are (the point estimate)
    eval_cols = [j for j, d in enumerate(dims) if d in EVAL_DIMENSIONS]
    per: dict[str, np.ndarray] = {}
    constant: dict[str, set[int]] = {}
    for label, mat in scores.items():
        cols = []
        constant[label] = set()
        for j in range(len(dims)):
            valid = ~np.isnan(reference[:, j])
            cols.append(_weighted_pcc(weights[:, valid], mat[valid, j], reference[valid, j]))
            if valid.any() and np.ptp(mat[valid, j]) == 0:
                constant[label].add(j)
        pcc = np.stack(cols, axis=1)  # (1 + R, dims)
        with warnings.catch_warnings():  # a resample where every dimension's reference is constant: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(pcc[:, eval_cols], axis=1)
        per[label] = np.column_stack([pcc, mean])
    names = [*dims, "mean"]
    tail = (1 - level) / 2
    out: dict[str, Any] = {}
    for label in labels:
        rows = {}
        for j, name in enumerate(names):
            point = per[label][0, j]
            row: dict[str, Any] = {"pcc": None if np.isnan(point) or j in constant[label] else float(point)}
            if label != labels[0]:
                diff = per[label][:, j] - per[labels[0]][:, j]
                boot = diff[1:][~np.isnan(diff[1:])]
                row["diff"] = None if np.isnan(diff[0]) else float(diff[0])
                if len(boot):
                    row["low"], row["high"] = (float(v) for v in np.quantile(boot, [tail, 1 - tail]))
                    row["p_not_better"] = float(np.mean(boot <= 0))
            rows[name] = row
        out[label] = rows
    return out
