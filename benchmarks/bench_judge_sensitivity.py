"""Can the dimension-wise judge tell a right answer from a wrong one? Prints one JSON object.

For N training clips of the synthetic corpus, the judge (``llm_judge_dimwise``, SmolLM2 by default) grades
(a) the reference answer itself and (b) the same answer with every judged score moved to the far end of the
scale (1 for a reference of 3-5, 5 for 1-2) and the artifacts dropped. A judge that GRPO can learn from
scores (a) well above (b); the gap bounds the signal one wrong dimension puts into a group's rewards.

    .venv/bin/python benchmarks/bench_judge_sensitivity.py --clips 16
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from rewards.llm_judge import LLMJudgeDimwise  # noqa: E402
from sqrl.response import render  # noqa: E402
from sqrl.schema import Assessment, read_manifest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=None, help="default: the synthetic corpus' train.jsonl under data/synth")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--dimensions", nargs="+", default=["noise", "distortion", "continuity", "overall"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    manifest = args.manifest or sorted(glob.glob("data/synth/*/train.jsonl"))[0]
    clips = random.Random(args.seed).sample(read_manifest(manifest), args.clips)
    right, wrong = [], []
    for r in clips:
        right.append(render(Assessment(scores=dict(r.scores), artifacts=list(r.artifacts), description=r.description)))
        bad = dict(r.scores)
        for d in args.dimensions:
            bad[d] = 1 if (r.scores[d] or 3) >= 3 else 5
        wrong.append(render(Assessment(scores=bad, artifacts=[], description=r.description)))
    reward = LLMJudgeDimwise(judge=args.judge, dimensions=args.dimensions)
    start = time.perf_counter()
    a, b = reward(right, clips), reward(wrong, clips)
    out = {"benchmark": "judge_sensitivity", "judge": args.judge, "manifest": manifest, "clips": len(clips),
           "seconds": round(time.perf_counter() - start, 1), "load_average_1m": os.getloadavg()[0], "dimensions": {}}
    for d in args.dimensions:
        ra, rb = np.array(a.components[d], dtype=float), np.array(b.components[d], dtype=float)
        out["dimensions"][d] = {"right": round(float(np.nanmean(ra)), 3), "wrong": round(float(np.nanmean(rb)), 3),
                                "gap": round(float(np.nanmean(ra - rb)), 3),
                                "right_beats_wrong": round(float(np.mean(ra > rb)), 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
