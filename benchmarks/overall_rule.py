"""Diagnostic: does the model's overall score carry what its own dimension scores carry?

For each clip: the rule that labels the synthetic corpus (sqrl.data.labels.overall / listening_effort) applied to the
model's predicted dimension scores, and again with one predicted dimension replaced by the truth (which dimension
limits overall). PCC against the true overall.
An analysis of an `sqrl eval` folder on the synthetic corpus (its labels follow the rule), not a timing.
usage: python benchmarks/overall_rule.py EVAL_DIR [OUT.json]
"""
import json, sys
import numpy as np
from scipy.stats import pearsonr
from sqrl.data.labels import overall, listening_effort

rows = [json.loads(l) for l in open(sys.argv[1] + "/predictions.jsonl")]
rows = [r for r in rows if r["parsed"]]
dims5 = ("speed", "naturalness", "noise", "distortion", "continuity")
truth = np.array([r["reference"]["scores"]["overall"] for r in rows], float)
pred = [r["parsed"]["scores"] for r in rows]

def derived(scores, swap=None, ref=None, effort_from_rule=True):
    s = {d: int(scores[d]) for d in dims5}
    if swap:
        for d in swap:
            s[d] = int(ref[d])
    s["listening_effort"] = listening_effort(s) if effort_from_rule else int(scores["listening_effort"])
    return overall(s)

out = {"n": len(rows)}
out["model_overall_greedy"] = pearsonr([p["overall"] for p in pred], truth)[0]
out["model_overall_expected"] = pearsonr([r["expected_scores"]["overall"] for r in rows], truth)[0]
out["rule_on_predicted_dims"] = pearsonr([derived(p) for p in pred], truth)[0]
out["rule_on_predicted_dims_model_effort"] = pearsonr([derived(p, effort_from_rule=False) for p in pred], truth)[0]
out["rule_on_truth"] = pearsonr([derived(r["reference"]["scores"]) for r in rows], truth)[0]
out["agree_model_vs_rule_on_own_dims"] = float(np.mean([derived(p) == p["overall"] for p in pred]))
for d in dims5:
    out[f"rule_with_true_{d}"] = pearsonr([derived(p, [d], r["reference"]["scores"]) for p, r in zip(pred, rows)], truth)[0]
out["rule_with_true_naturalness_distortion"] = pearsonr(
    [derived(p, ["naturalness", "distortion"], r["reference"]["scores"]) for p, r in zip(pred, rows)], truth)[0]
out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
print(json.dumps(out, indent=1))
if len(sys.argv) > 2:
    json.dump(out, open(sys.argv[2], "w"), indent=1)
