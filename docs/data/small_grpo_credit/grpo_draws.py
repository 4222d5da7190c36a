"""How often each score 1-5 is the label of the clips a GRPO run drew (its samples.jsonl, one count per clip and
step), against the training corpus. How often the models *give* each score: `sqrl evaldiff ... --shares-plot`.

    python docs/data/small_grpo_credit/grpo_draws.py runs/small/grpo_s3_credit/samples.jsonl runs/small/grpo_s3_nobal/samples.jsonl
"""
import collections
import json
import sys

CORPUS = "data/synth/synth-v1-n2000-s0-sr16000/train.jsonl"
DIMS = ["speed", "naturalness", "noise", "distortion", "listening_effort", "continuity", "overall"]


def shares(rows, d):
    c = collections.Counter(r.get(d) for r in rows)
    return "/".join(f"{c.get(k, 0) / max(len(rows), 1):.2f}" for k in range(1, 6))


corpus = [json.loads(line)["scores"] for line in open(CORPUS)]
runs = {}
for path in sys.argv[1:]:
    drawn = {}
    for line in open(path):
        s = json.loads(line)
        drawn[(s["step"], s["clip"])] = s["reference"]
    runs[path] = list(drawn.values())
print("| dimension | corpus | " + " | ".join(runs) + " |")
print("|---" * (2 + len(runs)) + "|")
for d in DIMS:
    print(f"| {d} | {shares(corpus, d)} | " + " | ".join(shares(rows, d) for rows in runs.values()) + " |")
