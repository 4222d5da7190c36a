"""Per model: accuracy of greedy and sampled scores, and how often the sampled score equals the greedy one."""
import json, sys
DIMS = ["speed", "naturalness", "noise", "distortion", "listening_effort", "continuity", "overall"]
pairs = {"start": ("runs/small_s3/eval/warmup", "runs/small_s3/eval/warmup_sampled"),
         "grpo20": ("runs/small_s3/eval/grpo", "runs/small_s3/eval/grpo_sampled"),
         "grpo60": ("runs/small/eval_grpo60", "runs/small/eval_t07_grpo60")}
def rows(d):
    return {r["id"]: r for r in map(json.loads, open(f"{d}/predictions.jsonl"))}
out = {}
for name, (g, s) in pairs.items():
    try:
        G, S = rows(g), rows(s)
    except FileNotFoundError:
        continue
    res = {}
    for d in DIMS:
        n = same = ag = as_ = 0
        for i, gr in G.items():
            sr = S.get(i)
            ref = gr["reference"]["scores"].get(d)
            gs = (gr["parsed"] or {}).get("scores", {}).get(d)
            ss = ((sr or {}).get("parsed") or {}).get("scores", {}).get(d)
            if ref is None:
                continue
            n += 1; same += gs is not None and gs == ss; ag += gs == ref; as_ += ss == ref
        res[d] = {"same": round(same / n, 3), "acc_greedy": round(ag / n, 3), "acc_sampled": round(as_ / n, 3)}
    res["mean"] = {k: round(sum(res[d][k] for d in DIMS) / len(DIMS), 3) for k in ("same", "acc_greedy", "acc_sampled")}
    out[name] = res
print(json.dumps(out, indent=1))
