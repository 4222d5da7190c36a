"""Wall time of a GRPO step on this machine, per tiny reward variant, split into its phases.

Two measurements per variant (``accsem_dimwise``, ``llmjudge_dimwise``, ``unified``), one JSON line each:

* ``mode: "step"``: the real loop (Ray, rollout, reward and DeepSpeed policy workers) for ``--steps``
  steps of the variant's tiny config with B clips x G completions; the median over the steps after the
  first of ``time/step``, ``time/generate``, ``time/score``, ``time/update``, ``time/sync`` and the
  rollout tokens/s, with each phase's worker compute (``<phase>_worker_s``: the workers' own seconds),
  the orchestration overhead (``overhead_s``, ``overhead_fraction``: the step minus the workers'
  compute; Ray calls, serialisation, waiting, the driver's own work) and each phase's share of the
  step (``share``). ``--init`` is the model to start from; by default an *untrained* tiny model, whose
  random answers run to ``max_new_tokens`` and give the judges unparseable text (an upper bound on
  generation, not a faithful judge cost).
* ``mode: "score"``: the variant's rewards alone on B x G answer-like completions (the clips' reference
  answers with 40% of the scores changed), best and median of ``--repeats`` after a warm-up: what the
  judge costs per step on a calibrated policy's answers (in this process, ``OMP_NUM_THREADS=1`` unless set).

``--metrics RUN/metrics.jsonl ...`` instead summarises runs that already exist (``mode: "run"``, same
fields; runs logged before the worker timers existed lack the ``*_worker_s`` and overhead fields).

    .venv/bin/python benchmarks/bench_grpo_step.py                         # all variants, 3 steps
    .venv/bin/python benchmarks/bench_grpo_step.py --variants accsem_dimwise --init runs/tiny/calibrated
    .venv/bin/python benchmarks/bench_grpo_step.py --metrics runs/tiny/grpo_llmjudge/metrics.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As in a Ray worker with no CPUs reserved (the tiny configs): one thread. On 2 shared cores this was
# 3-5x faster than 2 threads per worker, for the loop and for the judge alike.
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = ("accsem_dimwise", "llmjudge_dimwise", "unified")
PHASES = ("generate", "score", "update", "sync")


def step_summary(rows: list[dict]) -> dict:
    """Medians over the steps after the first (the first loads models and warms caches) of the step's
    phases, their worker compute and the orchestration overhead; ``share``: each phase's (and the
    overhead's) median seconds over the median step."""
    later = rows[1:] or rows

    def median(key: str) -> float | None:
        values = [r[key] for r in later if key in r]
        return statistics.median(values) if values else None

    out: dict = {"steps": len(rows), "first_step_s": round(rows[0]["time/step"], 2)}
    step = median("time/step")
    out["step_s"] = round(step, 3)
    share = {}
    for phase in PHASES:
        out[f"{phase}_s"] = round(median(f"time/{phase}"), 3)
        worker = median(f"time/{phase}_worker")
        if worker is not None:
            out[f"{phase}_worker_s"] = round(worker, 3)
        share[phase] = round(out[f"{phase}_s"] / step, 3)
    if median("time/overhead") is not None:
        out["overhead_s"] = round(median("time/overhead"), 3)
        out["overhead_fraction"] = round(median("time/overhead_fraction"), 3)
        share["overhead"] = round(out["overhead_s"] / step, 3)
    out["share"] = share
    out["completion_tokens_mean"] = round(statistics.mean(r["completion/mean_length"] for r in later), 1)
    out["rollout_tokens_per_s"] = round(median("tokens_per_s/generate"), 1)
    return out


def load_variant(name: str, overrides: list[str]):
    from grpo.config import GRPOConfig
    from sqrl.config import load_config

    return load_config(GRPOConfig, REPO / "configs" / "tiny" / f"grpo_{name}.yaml", overrides)


def bench_step(name: str, args: argparse.Namespace, init: Path, manifest: Path, out: Path) -> dict:
    from grpo.driver import Driver
    from grpo.tracking import read_metrics

    cfg = load_variant(name, [f"model.init={init}", "model.bootstrap=null", f"data.train={manifest}", "data.synth=null",
                              f"train.steps={args.steps}", "train.save_every=0", "train.check_sync_every=0",
                              f"train.batch_size={args.batch}", f"rollout.max_new_tokens={args.new_tokens}",
                              "logging.progress=false", "logging.tensorboard=false", "logging.plot=false",
                              *args.override])
    t0 = time.perf_counter()
    rows = read_metrics(Driver(cfg, out / name).run() / "metrics.jsonl")
    total = time.perf_counter() - t0
    return {"variant": name, "mode": "step", "init": str(init), "clips_per_step": cfg.train.batch_size,
            "group_size": cfg.rollout.group_size, "max_new_tokens": cfg.rollout.max_new_tokens,
            "run_wall_s": round(total, 1), **step_summary(rows), "load_avg": os.getloadavg()}


def bench_metrics(path: Path) -> dict:
    """``step_summary`` of an existing run's metrics.jsonl, with the run's config where it is saved."""
    from grpo.tracking import read_metrics

    rows = read_metrics(path)
    out: dict = {"run": str(path.parent), "mode": "run"}
    cfg_path = path.parent / "sqrl_config.yaml"
    if cfg_path.exists():
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text())
        out.update(clips_per_step=cfg["train"]["batch_size"], group_size=cfg["rollout"]["group_size"],
                   max_new_tokens=cfg["rollout"]["max_new_tokens"], rollout_backend=cfg["rollout"]["backend"],
                   rewards=[e["name"] for e in cfg["rewards"]["entries"]])
    return {**out, **step_summary(rows)}


def bench_score(name: str, args: argparse.Namespace, manifest: Path) -> dict:
    from rewards import RewardSet
    from sqrl.response import render
    from sqrl.schema import read_manifest

    cfg = load_variant(name, args.override)
    records = read_manifest(manifest)[:args.batch]
    rng = random.Random(0)
    texts, refs = [], []
    for rec in records:
        for _ in range(cfg.rollout.group_size):
            answer = rec.assessment()
            for dim in answer.scores:
                if rng.random() < 0.4:
                    answer.scores[dim] = rng.randint(1, 5)
            texts.append(render(answer))
            refs.append(rec)
    rewards = RewardSet.from_config(cfg.rewards.entries, cfg.rewards.aggregation)
    t0 = time.perf_counter()
    rewards.score(texts[:1], refs[:1])  # loads the models (embedder, judge)
    load = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rewards.score(texts, refs)
        times.append(time.perf_counter() - t0)
    return {"variant": name, "mode": "score", "completions": len(texts), "load_s": round(load, 1),
            "best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2),
            "load_avg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--modes", nargs="+", default=["step", "score"], choices=["step", "score"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="clips per step (Table 2: 4)")
    p.add_argument("--new-tokens", type=int, default=192)
    p.add_argument("--init", default=None, help="full sqrl model dir to start from (default: untrained tiny)")
    p.add_argument("--window", type=int, default=30, help="Whisper window of the untrained tiny model")
    p.add_argument("--clips", type=int, default=16, help="synthetic corpus size")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRICS_JSONL",
                   help="summarise these runs' metrics.jsonl instead of running anything")
    p.add_argument("override", nargs="*", help="dotted.key=value overrides for every variant")
    args = p.parse_args()
    if args.metrics:
        for path in args.metrics:
            print(json.dumps(bench_metrics(Path(path))), flush=True)
        return

    from sqrl.models import untrained_init
    from sqrl.data.synth import ensure_corpus

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_grpo_"))
    manifest = ensure_corpus(work / "synth", args.clips, 0) / "train.jsonl"
    init = Path(args.init) if args.init else untrained_init(work / f"init-w{args.window}", window_s=args.window)
    for name in args.variants:
        if "step" in args.modes:
            print(json.dumps(bench_step(name, args, init, manifest, Path(tempfile.mkdtemp(dir=work)))), flush=True)
        if "score" in args.modes:
            print(json.dumps(bench_score(name, args, manifest)), flush=True)


if __name__ == "__main__":
    main()
