"""Judge throughput: completions judged per second, unified vs dimension-wise vs one-pass dimension-wise.

The completions go through the real rewards (``llm_judge_unified``: one call per criterion, 4;
``llm_judge_dimwise``: one per dimension; ``llm_judge_dimwise`` with ``onepass``: one per completion), so the
prompts have their production length, in groups of ``--group`` completions per clip as in GRPO. Completions
are distinct (random scores and artifacts from a fixed seed), so deduplication does not flatter the numbers.
``cost_vs_unified`` is each variant's time per completion over the unified judge's, per mode. Prints one JSON
object.

    .venv/bin/python benchmarks/bench_judge.py --judge qwen2.5-coder-0.5b --completions 8 --modes logit
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

from judges import judge_from_config, load_judge_config  # noqa: E402
from rewards.llm_judge import LLMJudgeDimwise, LLMJudgeUnified  # noqa: E402
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


def run(judge, kind: str, n: int, dims: list[str], seed: int, group: int) -> dict:
    """Judge ``n`` distinct completions (``group`` per clip, as in GRPO) with one reward variant."""
    rng = random.Random(seed)
    refs = [random_assessment(rng, Record, id=f"clip{i // group}", audio="x.wav") for i in range(n)]
    refs = [refs[i - i % group] for i in range(n)]
    completions = [render(random_assessment(rng)) for _ in range(n)]
    if kind == "unified":
        reward = LLMJudgeUnified(judge=judge, dimensions=dims)
    else:
        reward = LLMJudgeDimwise(judge=judge, dimensions=dims, onepass=kind == "onepass")
    before = judge.stats.as_dict()
    start = time.perf_counter()
    out = reward(completions, refs)
    elapsed = time.perf_counter() - start
    stats = {k: v - before.get(k, 0) for k, v in judge.stats.as_dict().items()}
    calls = stats.get("unique", 0)
    return {
        "variant": kind,
        "mode": judge.mode,
        "completions": n,
        "judge_calls": calls,
        "seconds": round(elapsed, 2),
        "completions_per_s": round(n / elapsed, 3),
        "prompt_tokens_per_completion": round(stats.get("tokens/prompt", 0) / n, 1),
        "computed_tokens_per_completion": round(stats.get("tokens/computed", 0) / n, 1),
        "failed": stats.get("failed", 0),
        "failures": {k: v for k, v in stats.items() if k.startswith("failed/")},
        "mean_value": round(sum(v for v in out.values if v is not None) / max(1, sum(v is not None for v in out.values)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=8)
    ap.add_argument("--judge", default="smollm2", help="judge config name (smollm2, qwen2.5-coder-0.5b, ...)")
    ap.add_argument("--variants", nargs="+", default=["unified", "dimwise", "onepass"], choices=["unified", "dimwise", "onepass"])
    ap.add_argument("--dimensions", nargs="+", default=["noise", "distortion", "continuity", "overall"])
    ap.add_argument("--modes", nargs="+", default=["logit", "generate"], choices=["logit", "generate"])
    ap.add_argument("--group", type=int, default=4, help="completions per clip (GRPO's G)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    judge = judge_from_config({**load_judge_config(args.judge), "batch_size": args.batch_size,
                               "max_new_tokens": args.max_new_tokens})
    start = time.perf_counter()
    judge.load()
    load_s = time.perf_counter() - start
    results = []
    for mode in args.modes:
        judge.mode = mode
        results += [run(judge, kind, args.completions, args.dimensions, args.seed, args.group) for kind in args.variants]
    table = {}
    for mode in args.modes:
        rows = {r["variant"]: r for r in results if r["mode"] == mode}
        if "unified" in rows:  # cost of judging one completion, relative to the unified judge's
            table[mode] = {k: round(rows["unified"]["completions_per_s"] / r["completions_per_s"], 2) for k, r in rows.items()}
    print(json.dumps({
        "benchmark": "judge_completions_per_second",
        "judge": args.judge, "load_s": round(load_s, 2),
        "completions": args.completions, "group": args.group, "dimensions": args.dimensions,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cost_vs_unified": table,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
