"""``sqrl compare``'s results and report: the spread over seeds of every metric, Tables 1 and 3, the GRPO
training rewards and the plots. Reads only results (``results.json``'s rows); knows nothing of stages.

A row of results.json (``row_entry``) holds its description (label, encoder mode, calibrated, how its
reasoning was trained), the eval metrics per seed, their ``summary`` over seeds and, for a GRPO row, its
``reward_curve`` from each seed's logged steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from recipes.compare_plan import Row

# The metrics of sqrl eval that are aggregated over seeds (numbers, or nested mappings of numbers).
AGGREGATED = ("pcc", "srcc", "mae", "parse_rate", "artifacts", "long_form", "expected")
REWARD_KEY = "rewards/total/mean"
# A GRPO step's phases as the driver times them (wall seconds around the Ray calls; grpo/tracking.py).
STEP_PHASES = ("generate", "score", "update", "sync")


# ------------------------------------------------------------------------------------ aggregation
def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; None for fewer than two values), min and max over the
    defined values; ``n`` counts them and ``undefined`` the ``None`` ones (e.g. a PCC left undefined by a
    constant prediction)."""
    defined = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"mean": None, "std": None, "min": None, "max": None, "n": len(defined),
                           "undefined": len(values) - len(defined)}
    if defined:
        mean = sum(defined) / len(defined)
        out.update(mean=mean, min=min(defined), max=max(defined))
        if len(defined) > 1:
            out["std"] = math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1))
    return out


def aggregate(runs: Sequence[Mapping[str, Any]]) -> Any:
    """The same nesting as each run, with every numeric leaf replaced by its ``spread`` over the runs. A key
    missing from a run counts as undefined there."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    out: dict[str, Any] = {}
    for key in keys:
        values = [run.get(key) for run in runs]
        if any(isinstance(v, Mapping) for v in values):
            out[key] = aggregate([v if isinstance(v, Mapping) else {} for v in values])
        elif all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            out[key] = spread(values)
    return out


def summarize_metrics(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Spread over seeds of the aggregated ``sqrl eval`` metrics (PCC/SRCC/MAE, parse rate, artifacts, ROUGE-L)."""
    return aggregate([{k: m.get(k) for k in AGGREGATED} for m in per_seed.values()])


def reward_curve(per_seed_rows: Mapping[str, Sequence[Mapping[str, Any]]], window: int = 5,
                 keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Reward curves of one GRPO row from each seed's ``metrics.jsonl`` rows: for the total reward and each
    reward's mean (``rewards/<name>/mean``), the per-seed series and their mean/std/min/max per step; and
    ``first``/``last``: the spread over seeds of the total reward's mean over the first and last ``window``
    steps (at most half the steps, at least one); ``change``: of last minus first."""
    steps = sorted({int(r["step"]) for rows in per_seed_rows.values() for r in rows if "step" in r})
    if keys is None:
        found = [k for rows in per_seed_rows.values() for r in rows for k in r
                 if k.startswith("rewards/") and k.endswith("/mean") and k.count("/") == 2]
        keys = [REWARD_KEY] + [k for k in dict.fromkeys(found) if k != REWARD_KEY]
    curves: dict[str, Any] = {}
    for key in keys:
        series = {}
        for seed, rows in per_seed_rows.items():
            by_step = {int(r["step"]): r.get(key) for r in rows if "step" in r}
            series[seed] = [by_step.get(s) for s in steps]
        stats = [spread([series[seed][i] for seed in series]) for i in range(len(steps))]
        curves[key] = {"per_seed": series, **{s: [x[s] for x in stats] for s in ("mean", "std", "min", "max")}}
    k = max(1, min(window, len(steps) // 2))
    total = curves.get(REWARD_KEY, {"per_seed": {}})["per_seed"]

    first = [spread(v[:k])["mean"] for v in total.values()]
    last = [spread(v[-k:])["mean"] for v in total.values()]
    change = [b - a if a is not None and b is not None else None for a, b in zip(first, last)]
    return {"steps": steps, "curves": curves, "window": k,
            "first": spread(first), "last": spread(last), "change": spread(change)}


def step_times(per_seed_rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Where a GRPO row's step time goes: for ``step`` and each of ``STEP_PHASES``, the spread over seeds of the
    per-seed mean seconds per logged step (``time/<phase>`` in ``metrics.jsonl``); ``steps``: the steps averaged."""
    out: dict[str, Any] = {}
    for phase in ("step", *STEP_PHASES):
        key = f"time/{phase}"
        means = []
        for rows in per_seed_rows.values():
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            means.append(sum(values) / len(values) if values else None)
        out[phase] = spread(means)
    out["steps"] = spread([float(sum(1 for r in rows if r.get("time/step") is not None))
                           for rows in per_seed_rows.values()])
    return out


def row_entry(row: Row, per_seed: Mapping[str, Mapping[str, Any]], encoder: str | None = None,
              logged: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, window: int = 5) -> dict[str, Any]:
    """A row of results.json: its description, the eval metrics per seed (``{seed: metrics.json}``; a
    seed-independent row, the untrained or a shared SFT one, has the one key ``all``), their ``summary`` over
    seeds and, for a GRPO row, its ``reward_curve`` from each seed's logged steps."""
    entry: dict[str, Any] = {"label": row.label, "stage": row.stage, "encoder": encoder, "calibrated": row.calibrated,
                             "reasoning": row.reasoning, "seed_independent": row.seed_independent,
                             "per_seed": dict(per_seed), "summary": summarize_metrics(per_seed)}
    if logged is not None:
        entry["reward_curve"] = reward_curve(logged, window=window)
        entry["step_time"] = step_times(logged)
    return entry


# ------------------------------------------------------------------------------------------ report
def _pm(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone when one value; ``n/a`` when none); a dagger when some seeds were
    undefined (their values are left out)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:.{digits}f}"
    if stat.get("undefined"):
        text += " †"
    return text


def _get(tree: Mapping[str, Any], *path: str) -> Any:
    node: Any = tree
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


ENC_MARK = {"trainable": "✓", "lora": "LoRA", "frozen": "x", None: "—"}


def table1_lines(results: Mapping[str, Any]) -> list[str]:
    """Table 1 of the paper: PCC per dimension and the six-dimension mean, mean ± std over seeds, per row
    (plus the parse rate, which the paper does not need: its answers come parsed by GPT-4o)."""
    from sqrl.dimensions import EVAL_DIMENSIONS

    short = {"naturalness": "Nat.", "noise": "Noise", "distortion": "Distort.", "listening_effort": "Effort",
             "continuity": "Cont.", "overall": "MOS"}
    head = ["Row", "Learned Enc.", "Calibration", *[short[d] for d in EVAL_DIMENSIONS], "Avg.", "Avg., expected",
            "parse rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["rows"].items():
        s = row["summary"]
        cells = [row["label"], ENC_MARK.get(row.get("encoder"), str(row.get("encoder"))),
                 "✓" if row.get("calibrated") else "x",
                 *[_pm(_get(s, "pcc", d)) for d in EVAL_DIMENSIONS], f"**{_pm(_get(s, 'pcc', 'mean'))}**",
                 _pm(_get(s, "expected", "pcc", "mean")), _pm(_get(s, "parse_rate"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table3_lines(results: Mapping[str, Any]) -> list[str]:
    """Table 3 of the paper: artifact detection F1, description similarity ((cos + 1) / 2 of MiniLM embeddings,
    where the paper asks GPT-4o for a correlation score) and interval IoU per kind, and long-form ROUGE-L."""
    from sqrl.dimensions import ARTIFACT_DISPLAY_NAMES, ARTIFACT_KINDS

    head = ["Row"]
    for kind in ARTIFACT_KINDS:
        name = ARTIFACT_DISPLAY_NAMES[kind]
        head += [f"{name} F1", f"{name} Sim.", f"{name} IoU"]
    head.append("Long-form ROUGE-L")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["rows"].values():
        s = row["summary"]
        cells = [row["label"]]
        for kind in ARTIFACT_KINDS:
            cells += [_pm(_get(s, "artifacts", kind, m)) for m in ("f1", "similarity", "iou")]
        cells.append(_pm(_get(s, "long_form", "rouge_l")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def reward_table_lines(results: Mapping[str, Any]) -> list[str]:
    """GRPO training reward per row: each row's own reward (scales differ between variants), first vs last steps."""
    lines = ["| Row | rewards | steps | first steps | last steps | change |", "|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        rc = row.get("reward_curve")
        if not rc:
            continue
        names = ", ".join(k.split("/")[1] for k in rc["curves"] if k != REWARD_KEY) or "total"
        lines.append(f"| {row['label']} | {names} | {len(rc['steps'])} | {_pm(rc['first'])} | {_pm(rc['last'])} | "
                     f"{_pm(rc['change'])} |")
    return lines


def step_time_lines(results: Mapping[str, Any]) -> list[str]:
    """Seconds per GRPO step and its split into generate, score, update and sync, per row."""
    lines = ["| Row | seconds a step | generate | score | update | sync |", "|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        t = row.get("step_time")
        if not t:
            continue
        lines.append(f"| {row['label']} | " + " | ".join(_pm(t[p], 1) for p in ("step", *STEP_PHASES)) + " |")
    return lines


def shared_sft_rows(results: Mapping[str, Any]) -> list[str]:
    """The names of the SFT rows trained once for every seed (``sft_seed``); none without it."""
    if results.get("sft_seed") is None:
        return []
    return [name for name, r in results["rows"].items() if r.get("stage") == "sft" and r.get("seed_independent")]


def other_metrics_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| Row | mean SRCC | mean MAE | eval clips | seeds |", "|---|---|---|---|---|"]
    shared = shared_sft_rows(results)
    for name, row in results["rows"].items():
        s = row["summary"]
        n = {m.get("n") for m in row["per_seed"].values()}
        seeds = "one model" if row.get("seed_independent") else ", ".join(row["per_seed"])
        if name in shared:
            seeds = f"one model (shared, train.seed={results['sft_seed']})"
        lines.append(f"| {row['label']} | {_pm(_get(s, 'srcc', 'mean'))} | {_pm(_get(s, 'mae', 'mean'))} | "
                     f"{', '.join(str(x) for x in sorted(n, key=str))} | {seeds} |")
    return lines


def best_row(results: Mapping[str, Any]) -> tuple[str, str] | None:
    """(row, seed) with the highest mean PCC: the row by its mean over seeds (the first in table order on a
    tie), then its best seed."""
    scored = [(r["summary"]["pcc"]["mean"]["mean"], name) for name, r in results["rows"].items()
              if _get(r, "summary", "pcc", "mean", "mean") is not None]
    if not scored:
        return None
    top = max(v for v, _ in scored)
    name = next(n for v, n in scored if v == top)
    per_seed = results["rows"][name]["per_seed"]
    seed = max(per_seed, key=lambda s: _get(per_seed[s], "pcc", "mean") if _get(per_seed[s], "pcc", "mean")
               is not None else -math.inf)
    return name, seed


def write_plots(out: Path, results: Mapping[str, Any]) -> dict[str, Path]:
    """plots/pcc_by_row.png (bars: mean over seeds, error bars: std), plots/reward_curves.png (GRPO rows:
    mean total reward per step, shaded min-max over seeds), plots/scatter_best.png (predicted vs true of the
    best row's best seed)."""
    from sqrl.plots import pcc_bars, reward_curves, scatter_per_dimension

    plots = out / "plots"
    written: dict[str, Path] = {}
    means = {r["label"]: {d: v.get("mean") for d, v in r["summary"].get("pcc", {}).items()} for r in results["rows"].values()}
    stds = {r["label"]: {d: v.get("std") for d, v in r["summary"].get("pcc", {}).items()} for r in results["rows"].values()}
    written["pcc"] = pcc_bars(means, plots / "pcc_by_row.png", errors=stds,
                              title=f"PCC per dimension, mean ± std over seeds {results['seeds']}")
    curves = {}
    for row in results["rows"].values():
        rc = row.get("reward_curve")
        if rc and REWARD_KEY in rc["curves"]:
            c = rc["curves"][REWARD_KEY]
            curves[row["label"]] = {"steps": rc["steps"], "mean": c["mean"], "lo": c["min"], "hi": c["max"]}
    if curves:
        written["rewards"] = reward_curves(curves, plots / "reward_curves.png", ylabel="mean total reward (own scale)")
    best = best_row(results)
    if best is not None:
        from sqrl.schema import record_from_dict

        name, seed = best
        predictions = Path(results["rows"][name]["per_seed"][seed]["eval"])
        if not predictions.is_absolute():
            predictions = out / predictions
        preds, refs = [], []
        with open(predictions / "predictions.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                refs.append(record_from_dict(row["reference"]))
                preds.append(_assessment(row.get("parsed")))
        written["scatter"] = scatter_per_dimension(preds, refs, plots / "scatter_best.png")
    return written


def _assessment(parsed: Mapping[str, Any] | None):
    from sqrl.schema import Artifact, Assessment, empty_scores

    if parsed is None:
        return None
    scores = empty_scores()
    scores.update({k: v for k, v in (parsed.get("scores") or {}).items() if k in scores})
    artifacts = [Artifact(a["kind"], float(a["start"]), float(a["end"]), a.get("text") or "")
                 for a in parsed.get("artifacts") or []]
    return Assessment(scores, artifacts, parsed.get("description"))


def write_report(out: Path, results: Mapping[str, Any]) -> Path:
    """report.md: Table 1 and Table 3 (mean ± std over seeds), the GRPO rewards, the plots."""
    plots = write_plots(out, results)
    best = best_row(results)
    seeds = results["seeds"]
    lines = [
        "# sqrl compare", "",
        f"Seeds {seeds}; {results.get('eval_clips', '?')} held-out clips of `{results.get('manifest', '?')}`; "
        f"total time {results.get('seconds', 0) / 60:.1f} min (this call). Cells are mean ± std over seeds "
        "(sample std); † marks a value undefined for some seeds (constant predictions), left out of the mean. "
        "The untrained model does not depend on the seed and is evaluated once.", "",
    ]
    shared = shared_sft_rows(results)
    if shared:
        lines += [
            f"**Shared SFT rows** (`sft_seed: {results['sft_seed']}`): "
            f"{', '.join(results['rows'][n]['label'] for n in shared)} were trained once, with "
            f"train.seed={results['sft_seed']}, and every seed's GRPO rows start from that one model; the seeds differ "
            "only in the GRPO stages. These rows have one value each (no ± part).", ""]
    lines += [
        "## Table 1: PCC per dimension", "", *table1_lines(results), "",
        "PCC of the greedy answers' integer scores, as the paper reports. *Avg., expected*: the six-dimension "
        "mean PCC of the expected scores (sum of k p(k) over the score digits the model wrote; `sqrl eval`), "
        "which keeps the ranking that the argmax flattens when a model hesitates.", "",
        "![PCC per row](plots/pcc_by_row.png)", "",
        "## Table 3: description quality", "",
        "Artifact detection F1 over clips, description similarity ((cos + 1) / 2 of all-MiniLM-L6-v2 embeddings "
        "where the paper asks GPT-4o for a correlation score) and interval IoU over clips where both sides "
        "detect the kind; long-form ROUGE-L.", "", *table3_lines(results), "",
    ]
    reward_lines = reward_table_lines(results)
    if len(reward_lines) > 2:
        windows = sorted({r["reward_curve"]["window"] for r in results["rows"].values() if r.get("reward_curve")})
        lines += ["## GRPO training rewards", "",
                  "Total training reward (each row's own rewards, so scales differ between rows) averaged over the "
                  f"first and the last {'/'.join(map(str, windows))} logged steps, and last minus first; mean ± std "
                  "over seeds.", "", *reward_lines, ""]
        if "rewards" in plots:
            lines += ["![reward curves](plots/reward_curves.png)", ""]
        lines += ["Seconds per GRPO step and where they go (the driver's wall time around each phase: rollout "
                  "generation, reward scoring, the policy update with its reference pass, the weight sync; the step "
                  "also holds data loading and the periodic sync check, so the phases need not add up to it), mean "
                  "over the logged steps, then mean ± std over seeds:", "", *step_time_lines(results), ""]
    lines += ["## Other score metrics", "", *other_metrics_lines(results), ""]
    if best is not None:
        which = "its only model" if results["rows"][best[0]].get("seed_independent") else f"seed {best[1]}"
        lines += [f"Predicted vs true scores of the best row by mean PCC, **{results['rows'][best[0]]['label']}** "
                  f"({which}):", "", "![predicted vs true](plots/scatter_best.png)", ""]
    where = "`seed<S>/eval/<row>/report.md`" + (" and `shared/eval/<row>/report.md`" if shared else "")
    lines += [f"Per-model reports: {where}; all numbers: `results.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
