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
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sqrl.config import arg_range
from sqrl.dimensions import DIMENSIONS, DISPLAY_NAMES
from sqrl.fsutil import read_jsonl
from sqrl.metrics import paired_bootstrap_pcc, reference_matrix, score_matrix, with_expected
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


def read_evals(evals: Sequence[tuple[str, str | Path]]) -> tuple[list[str], dict[str, dict[str, np.ndarray]], np.ndarray]:
    """(clip ids, ``{"greedy"|"expected": {label: (clips, dims)}}``, references ``(clips, dims)``) over the clips
    every folder answered, in the first folder's order. A clip without a parsed answer scores ``MIDPOINT`` (as
    in ``sqrl eval``'s metrics); an expected score falls back on the greedy integer where there is none."""
    ids, rows = answered_by_all(evals)
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


def evaldiff(evals: Sequence[tuple[str, str | Path]], *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    ids, scores, reference = read_evals(evals)
    out: dict[str, Any] = {"n_clips": len(ids), "resamples": resamples, "seed": seed,
                           "baseline": evals[0][0]}
    for kind, per_label in scores.items():
        out[kind] = paired_bootstrap_pcc(per_label, reference, DIMENSIONS, resamples=resamples, seed=seed)
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
    return "\n".join(lines)


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
    return 0
