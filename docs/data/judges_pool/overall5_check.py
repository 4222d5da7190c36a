"""Does a judge pay an answer for calling a bad clip excellent? For each judge row and seed of the pool run:
on training clips whose reference overall quality is 1 or 2, the mean reward of completions that say
"Overall quality: 5/5", of those that give the reference's score, and of the rest; and the share of all
completions that say 5/5 in steps 1-10 and 31-40.

    python docs/data/judges_pool/overall5_check.py            # from the slim copies in this folder
"""
import collections
import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def overall(text):
    match = re.search(r"Overall quality: (\d)/5", text or "")
    return int(match[1]) if match else None


for row in ("grpo_unified_lines", "grpo_llmjudge"):
    for seed in (0, 1):
        rows = [json.loads(line) for line in open(HERE / f"{row}_seed{seed}_samples.jsonl")]
        by = collections.defaultdict(list)
        for r in rows:
            said, ref = overall(r["text"]), r["reference"]["overall"]
            if ref in (1, 2):
                by["says 5/5" if said == 5 else "says the reference" if said == ref else "other"].append(r["reward"])
        share = lambda lo, hi: np.mean([overall(r["text"]) == 5 for r in rows if lo <= r["step"] <= hi])  # noqa: E731
        cells = ", ".join(f"{k}: {np.mean(v):.3f} (n={len(v)})" for k, v in sorted(by.items()))
        print(f"{row} seed {seed}: {cells}; share 5/5 steps 1-10 {share(1, 10):.2f}, 31-40 {share(31, 40):.2f}")
