"""Throughput of the paper's Accuracy + Semantic rewards: pairs (completion, reference) per second.

256 clips x G = 4 completions = 1,024 pairs, scored by one ``RewardSet`` (parse once, accuracy, semantic),
the way a reward worker sees a GRPO step. Completions are canonical answers with perturbed scores and artifact
descriptions drawn per completion, so most descriptions in a batch are distinct (the embedder's worst case).

    python benchmarks/bench_rewards.py [--clips 256] [--group 4] [--seed 0]

Prints JSON: model load time, then cold (empty embedding cache) and warm (the same batch again) timings, each
the median of three runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rewards import RewardSet  # noqa: E402
from sqrl import embedder  # noqa: E402
from sqrl.dimensions import ARTIFACT_KINDS, DIMENSIONS  # noqa: E402
from sqrl.response import parse, render  # noqa: E402
from sqrl.schema import Artifact, Assessment, Record  # noqa: E402

ADJ = ["steady", "faint", "loud", "intermittent", "low", "sharp", "muffled", "constant", "harsh", "soft"]
NOUN = {"noise": ["hiss", "hum", "buzz", "chatter", "rumble", "static"],
        "distortion": ["clipping", "crackle", "muffling", "crunch", "warble", "bit-crushing"],
        "unnatural_pause": ["gap", "silence", "dropout", "break", "cut", "stall"]}
WHERE = ["in the background", "over the speech", "near the start", "towards the end", "mid-sentence", ""]


def phrase(rng: random.Random, kind: str) -> str:
    return f"a {rng.choice(ADJ)} {rng.choice(NOUN[kind])} {rng.choice(WHERE)}".strip()


def artifacts(rng: random.Random) -> list[Artifact]:
    out = []
    for kind in ARTIFACT_KINDS:
        if rng.random() < 0.5:
            start = round(rng.uniform(0, 2.5), 2)
            out.append(Artifact(kind, start, round(start + rng.uniform(0.2, 1.0), 2), phrase(rng, kind)))
    return out


def make_batch(clips: int, group: int, seed: int) -> tuple[list[str], list[Record]]:
    rng = random.Random(seed)
    completions, references = [], []
    for c in range(clips):
        ref = Record(id=f"c{c}", audio=f"c{c}.wav", scores={d: rng.randint(1, 5) for d in DIMENSIONS},
                     artifacts=artifacts(rng), description="The speech is mostly clear.")
        for _ in range(group):
            scores = {d: min(5, max(1, s + rng.choice([-1, 0, 0, 1]))) for d, s in ref.scores.items()}
            answer = Assessment(scores=scores, artifacts=artifacts(rng), description="Some description.")
            completions.append(render(answer))
            references.append(ref)
    return completions, references


def timed(fn, repeats: int = 1, setup=None) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs (``setup`` before each, untimed) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        if setup:
            setup()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    completions, references = make_batch(args.clips, args.group, args.seed)
    n = len(completions)
    load_s, _ = timed(embedder.get_model)
    parse_s, _ = timed(lambda: [parse(c) for c in completions], repeats=3)
    reward_set = RewardSet.from_config([{"name": "accuracy"}, {"name": "semantic"}])
    accuracy_only = RewardSet.from_config([{"name": "accuracy"}])
    acc_s, _ = timed(lambda: accuracy_only.score(completions, references), repeats=3)
    cold_s, batch = timed(lambda: reward_set.score(completions, references), repeats=3, setup=embedder.clear_cache)
    encoded = embedder.stats()["encoded"]
    warm_s, _ = timed(lambda: reward_set.score(completions, references), repeats=3)
    import torch

    print(json.dumps({
        "benchmark": "rewards accuracy+semantic",
        "pairs": n, "clips": args.clips, "group": args.group,
        "model_load_s": round(load_s, 3),
        "parse_pairs_per_s": round(n / parse_s, 1),
        "accuracy_only_pairs_per_s": round(n / acc_s, 1),
        "accuracy_semantic_cold_pairs_per_s": round(n / cold_s, 1),
        "accuracy_semantic_cold_s": round(cold_s, 3),
        "accuracy_semantic_warm_pairs_per_s": round(n / warm_s, 1),
        "distinct_texts_encoded_cold": encoded,
        "mean_total": round(sum(t for t in batch.total if t is not None) / n, 4),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
