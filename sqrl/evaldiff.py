"""``sqrl evaldiff``: is one model's PCC really above another's on the same held-out clips?

Two evaluations of one seed each differ by the model and by the test clips that happen to be easy or hard for
it. This reads several ``sqrl eval`` folders (``--evals LABEL=DIR``, the first the baseline), keeps the clips
every one answered, and reports each model's PCC per dimension and the six-dimension mean, greedy and expected
scores, with its difference from the baseline and a paired bootstrap interval over the clips
(``sqrl.metrics.paired_bootstrap_pcc``)::

    sqrl evaldiff --evals random=runs/small/eval_calibration_random --evals grouped=runs/small/eval_calibration \\
        --out runs/small/evaldiff.json --plot runs/small/evaldiff.png

The interval is the spread the choice of test clips alone gives; differences between training seeds are not
in it (run seeds for that: ``sqrl compare``).

It also counts how often each model gives each score, per dimension, against the reference labels
(``score_shares``; ``--shares-plot``): a change of PCC is often a change of how often a score is given (a
training run whose clips over-represent a score teaches the model to give it more often), which the PCC
alone does not show.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sqrl.config import arg_range
from sqrl.dimensions import DIMENSIONS, DISPLAY_NAMES, SCORE_MAX, SCORE_MIN, valid_score
from sqrl.fsutil import read_jsonl
from sqrl.metrics import paired_bootstrap_pcc, predicted_score, reference_matrix, score_matrix, with_expected
from sqrl.schema import Assessment

log = logging.getLogger(__name__)


def parse_evals(items: Sequence[str]) -> list[tuple[str, str]]:
    """``--evals LABEL=DIR`` arguments as (label, folder) pairs; a malformed or repeated label is an error."""
    pairs = []
    for item in items:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"--evals {item!r}: expected LABEL=DIR")
        pairs.append((label, folder))
    if len({label for label, _ in pairs}) != len(pairs):
        raise SystemExit("--evals: every evaluation needs its own label")
    return pairs


def answered_by_all(evals: Sequence[tuple[str, str | Path]]) -> tuple[list[str], list[dict[str, dict[str, Any]]]]:
    """(the clip ids every evaluation answered, in the first one's order; per evaluation, its
    ``predictions.jsonl`` rows by clip id). ``evals``: (label, ``sqrl eval`` folder or its predictions.jsonl)."""
    if len(evals) < 2:
        raise ValueError("--evals needs at least two evaluations to compare")
    rows = []
    for label, path in evals:
        path = Path(path)
        file = path / "predictions.jsonl" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"--evals {label}: {file} does not exist (an `sqrl eval` folder writes it)")
        rows.append({r["id"]: r for r in read_jsonl(file)})
    ids = [c for c in rows[0] if all(c in r for r in rows[1:])]
    dropped = {label: len(r) - len(ids) for (label, _), r in zip(evals, rows) if len(r) != len(ids)}
    if dropped:
        log.warning("clips not answered by every evaluation left out: %s", dropped)
    return ids, rows


def read_evals(evals: Sequence[tuple[str, str | Path]], answered: tuple[list[str], list[dict[str, dict[str, Any]]]] | None = None
               ) -> tuple[list[str], dict[str, dict[str, np.ndarray]], np.ndarray]:
    """(clip ids, ``{"greedy"|"expected": {label: (clips, dims)}}``, references ``(clips, dims)``) over the clips
    every folder answered, in the first folder's order (``answered``: ``answered_by_all(evals)``, if already
    read). A clip without a parsed answer scores ``MIDPOINT`` (as in ``sqrl eval``'s metrics); an expected score
    falls back on the greedy integer where there is none."""
    ids, rows = answered or answered_by_all(evals)
    if len(ids) < 3:
        raise ValueError(f"--evals: {len(ids)} clips answered by every evaluation; at least 3 are needed")
    for clip in ids:
        refs = [(r[clip].get("reference") or {}).get("scores", {}) for r in rows]
        if any(ref != refs[0] for ref in refs[1:]):
            raise ValueError(f"--evals: clip {clip!r} has different reference scores in different folders "
                             "(evaluations of different manifests)")
    reference = reference_matrix([Assessment(scores=dict((rows[0][c].get("reference") or {}).get("scores", {})))
                                  for c in ids])
    scores: dict[str, dict[str, np.ndarray]] = {"greedy": {}, "expected": {}}
    for (label, _), by_id in zip(evals, rows):
        parsed = [by_id[clip].get("parsed") for clip in ids]
        greedy = [Assessment(scores=dict(p.get("scores") or {})) if p else None for p in parsed]
        expected = with_expected(greedy, [by_id[clip].get("expected_scores") or {} for clip in ids])
        scores["greedy"][label], scores["expected"][label] = score_matrix(greedy), score_matrix(expected)
    return ids, scores, reference


SCORES = list(range(SCORE_MIN, SCORE_MAX + 1))


def _shares(values: Sequence[Any]) -> dict[str, Any]:
    """Share of ``values`` equal to each score (``shares``, in score order) and share that is not a valid score."""
    n = max(len(values), 1)
    shares = [sum(1 for v in values if valid_score(v) and v == k) / n for k in SCORES]
    return {"shares": shares, "unscored": 1.0 - sum(shares)}


def score_shares(evals: Sequence[tuple[str, str | Path]], dims: Sequence[str] = DIMENSIONS,
                 answered: tuple[list[str], list[dict[str, dict[str, Any]]]] | None = None) -> dict[str, dict[str, Any]]:
    """Per dimension, how often each score is the greedy answer of each evaluation (its label) and the reference
    label (``"reference"``), over the clips every evaluation answered: ``{dim: {label: {"shares": [s1..s5],
    "unscored": u, "tv": d}}}``. ``unscored``: no parsed answer, or none for this dimension (no label, for the
    reference); ``tv``: total variation distance of the model's shares from the reference's, both over the
    clips each scored (0: the same distribution of scores, 1: none in common). ``answered``: as in ``read_evals``."""
    if any(label == "reference" for label, _ in evals):
        raise ValueError("--evals: the label 'reference' is taken by the labels' own shares; name the model otherwise")
    ids, rows = answered or answered_by_all(evals)
    out: dict[str, dict[str, Any]] = {}
    first = rows[0]
    for d in dims:
        ref = _shares([((first[c].get("reference") or {}).get("scores") or {}).get(d) for c in ids])
        per: dict[str, Any] = {"reference": ref}
        for (label, _), by_id in zip(evals, rows):
            parsed = [by_id[c].get("parsed") for c in ids]
            row = _shares([predicted_score(Assessment(scores=dict(p.get("scores") or {})), d) if p else None
                           for p in parsed])
            row["tv"] = _tv(row, ref)
            per[label] = row
        out[d] = per
    return out


def _tv(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    sa, sb = 1.0 - a["unscored"], 1.0 - b["unscored"]
    if sa <= 0 or sb <= 0:
        return None
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a["shares"], b["shares"]))


def evaldiff(evals: Sequence[tuple[str, str | Path]], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    answered = answered_by_all(evals)  # read once: the PCCs and the score shares are over the same clips
    ids, scores, reference = read_evals(evals, answered)
    out: dict[str, Any] = {"n_clips": len(ids), "resamples": resamples, "seed": seed,
                           "baseline": evals[0][0]}
    for kind, per_label in scores.items():
        out[kind] = paired_bootstrap_pcc(per_label, reference, DIMENSIONS, resamples=resamples, seed=seed)
    out["score_shares"] = score_shares(evals, answered=answered)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['n_clips']} clips answered by every evaluation; intervals: 95%, paired bootstrap over the "
             f"clips ({result['resamples']} resamples); P = share of resamples where the model is not above "
             f"`{result['baseline']}`. n/a: a constant prediction (no PCC; it counts 0 in the mean and the differences).", ""]
    for kind in ("greedy", "expected"):
        res = result[kind]
        labels = list(res)
        lines += [f"**{kind} scores**", "",
                  "| dimension | " + " | ".join(labels) + " | " + " | ".join(f"{l} - {labels[0]} [95%], P" for l in labels[1:]) + " |",
                  "|---" * (1 + 2 * len(labels) - 1) + "|"]
        for name in [*DIMENSIONS, "mean"]:
            cells = [_f(res[label][name]["pcc"]) for label in labels]
            for label in labels[1:]:
                r = res[label][name]
                cells.append("n/a" if r.get("diff") is None else
                             f"{r['diff']:+.3f} [{r.get('low', float('nan')):+.3f}, {r.get('high', float('nan')):+.3f}], "
                             f"{r.get('p_not_better', float('nan')):.3f}")
            lines.append(f"| {DISPLAY_NAMES.get(name, 'mean (6 dims)')} | " + " | ".join(cells) + " |")
        lines.append("")
    if "score_shares" in result:
        lines += shares_table(result["score_shares"])
    return "\n".join(lines)


def shares_table(shares: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: per dimension, each column's shares of the scores 1-5 and (models) its TV distance."""
    labels = list(next(iter(shares.values())))
    lines = ["**how often each score is given** (greedy answers; share of the clips for scores 1/2/3/4/5; "
             "TV: total variation distance from the reference's shares)", "",
             "| dimension | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
    for d, per in shares.items():
        cells = []
        for label in labels:
            row = per[label]
            cell = "/".join(f"{v:.2f}" for v in row["shares"])
            if row["unscored"] > 0.005:
                cell += f", none {row['unscored']:.2f}"
            if label != "reference":
                cell += " (TV n/a)" if row["tv"] is None else f" (TV {row['tv']:.2f})"
            cells.append(cell)
        lines.append(f"| {DISPLAY_NAMES.get(d, d)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaldiff", help="PCC differences between evaluations of the same clips, with paired "
                                        "bootstrap intervals")
    p.add_argument("--evals", action="append", required=True, metavar="LABEL=DIR",
                   help="an `sqrl eval` folder (or its predictions.jsonl); give two or more, the first is the baseline")
    p.add_argument("--resamples", type=arg_range(int, ge=100), default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--plot", default=None, help="draw the differences and their intervals to this PNG")
    p.add_argument("--shares-plot", default=None,
                   help="draw how often each model gives each score, per dimension, against the reference, to this PNG")
    p.set_defaults(func=_run)


def _run(args) -> int:
    evals = parse_evals(args.evals)
    result = evaldiff(evals, resamples=args.resamples, seed=args.seed)
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.plot:
        from sqrl.plots import difference_intervals

        print(f"plot: {difference_intervals({k: result[k] for k in ('greedy', 'expected')}, args.plot)}")
    if args.shares_plot:
        from sqrl.plots import score_share_bars

        print(f"shares plot: {score_share_bars(result['score_shares'], args.shares_plot)}")
    return 0
