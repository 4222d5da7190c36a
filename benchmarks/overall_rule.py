"""Does the model's overall score carry what its own dimension scores carry? Prints (and writes) one JSON object.

On the synthetic corpus overall is a rule over the other dimensions (``sqrl.data.labels``: ``listening_effort``
and ``overall``). For each clip of an ``sqrl eval`` folder this applies the rule to the model's predicted
dimension scores, and again with one predicted dimension (or naturalness and distortion together) replaced by
the truth: which dimension limits overall. Every value is a PCC against the true overall, except
``agree_model_vs_rule_on_own_dims`` (the share of clips where the model's overall equals the rule over its own
dimensions). An analysis of the synthetic corpus, not a timing (docs/small.md, "Two and a half epochs").

    .venv/bin/python benchmarks/overall_rule.py runs/small/eval_calibration_2p5ep [--out overall_rule.json]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from scipy.stats import pearsonr

from sqrl.data.labels import listening_effort, overall
from sqrl.fsutil import read_jsonl

log = logging.getLogger("overall_rule")
MEASURED = ("speed", "naturalness", "noise", "distortion", "continuity")  # what the rule starts from


def rule(scores: dict, truth: dict | None = None, swap: tuple[str, ...] = (), own_effort: bool = False) -> int:
    """Overall by the corpus rule from ``scores``, with the dimensions in ``swap`` taken from ``truth``."""
    s = {d: int((truth if d in swap else scores)[d]) for d in MEASURED}
    s["listening_effort"] = int(scores["listening_effort"]) if own_effort else listening_effort(s)
    return overall(s)


def analyse(eval_dir: Path) -> dict:
    rows = list(read_jsonl(eval_dir / "predictions.jsonl"))
    usable = [r for r in rows if r["parsed"] and all(r["parsed"]["scores"].get(d) is not None
                                                      for d in (*MEASURED, "listening_effort", "overall"))]
    if len(usable) < len(rows):
        log.warning("%d of %d answers left out: unparsed or missing a score", len(rows) - len(usable), len(rows))
    if len(usable) < 3:
        raise SystemExit(f"{eval_dir}: {len(usable)} usable answers; a PCC needs at least 3")
    pred = [r["parsed"]["scores"] for r in usable]
    ref = [r["reference"]["scores"] for r in usable]
    y = [t["overall"] for t in ref]

    def pcc(values) -> float:
        return round(float(pearsonr(list(values), y)[0]), 4)

    out: dict = {"n": len(usable), "model_overall_greedy": pcc(p["overall"] for p in pred)}
    if all("expected_scores" in r for r in usable):
        out["model_overall_expected"] = pcc(r["expected_scores"]["overall"] for r in usable)
    out["rule_on_predicted_dims"] = pcc(rule(p) for p in pred)
    out["rule_on_predicted_dims_model_effort"] = pcc(rule(p, own_effort=True) for p in pred)
    out["rule_on_truth"] = pcc(rule(t) for t in ref)  # 1.0 unless the labels do not follow the rule
    out["agree_model_vs_rule_on_own_dims"] = round(sum(rule(p) == p["overall"] for p in pred) / len(pred), 4)
    for swap in [(d,) for d in MEASURED] + [("naturalness", "distortion")]:
        out["rule_with_true_" + "_".join(swap)] = pcc(rule(p, t, swap) for p, t in zip(pred, ref))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("eval_dir", type=Path, help="an `sqrl eval` folder (its predictions.jsonl)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = analyse(args.eval_dir)
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
