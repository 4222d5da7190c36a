"""How often each score 1-5 is predicted per dimension, against the truth of the held-out clips, the training
corpus and (with --samples) the clips a GRPO run drew.

    python docs/data/small_grpo_credit/score_distribution.py start=runs/small_s3/eval/warmup \
        grpo20=runs/small_s3/eval/grpo credit=runs/small/eval_grpo_credit grpo60=runs/small/eval_grpo60 \
        --samples runs/small/grpo_s3_credit/samples.jsonl
"""
import argparse
import collections
import json

CORPUS = "data/synth/synth-v1-n2000-s0-sr16000"
DIMS = ["speed", "naturalness", "noise", "distortion", "listening_effort", "continuity", "overall"]


def dist(rows, d):
    c = collections.Counter(r.get(d) for r in rows)
    n = sum(c.values())
    return [round(c.get(k, 0) / n, 2) for k in range(1, 6)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("evals", nargs="+", help="LABEL=EVAL_DIR")
    ap.add_argument("--samples", help="a GRPO run's samples.jsonl: the label distribution of the clips it drew")
    args = ap.parse_args()
    truth = [json.loads(line)["scores"] for line in open(f"{CORPUS}/test.jsonl")]
    train = [json.loads(line)["scores"] for line in open(f"{CORPUS}/train.jsonl")]
    drawn = None
    if args.samples:
        clips = {}
        for line in open(args.samples):
            s = json.loads(line)
            clips[(s["step"], s["clip"])] = s["reference"]
        drawn = list(clips.values())
    preds = {}
    for item in args.evals:
        label, folder = item.split("=", 1)
        preds[label] = [json.loads(line).get("parsed", {}).get("scores") or {} for line in open(f"{folder}/predictions.jsonl")]
    print("share of scores 1..5")
    for d in DIMS:
        print(f"{d}: test truth {dist(truth, d)}  train corpus {dist(train, d)}"
              + (f"  GRPO draws {dist(drawn, d)}" if drawn else ""))
        for label, rows in preds.items():
            print(f"    {label:>8} predicted {dist(rows, d)}")


if __name__ == "__main__":
    main()
