"""Step time of the tiny backbones on CPU: batching, a LoRA training step, and generation.

For each tiny family and Whisper window it prints one JSON object: parameter counts, the time to
build a batch of ``--batch`` clips of ~``--seconds`` s with ~120-token answers, the time of forward +
backward on it (LoRA on the LLM, encoder trainable: the calibration setting), the time of
``generate`` of ``--new-tokens`` tokens for the same clips, and what that means for a calibration
run of 2,000 clips x 3 epochs (batching + forward + backward; the optimizer step is extra). Times
are the best of ``--repeats`` runs after one warm-up, with the median beside them.

    .venv/bin/python benchmarks/bench_backbone_step.py                 # both families, 30-s and 5-s windows
    .venv/bin/python benchmarks/bench_backbone_step.py --windows 30 --families tiny-af3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sqrl.backbones import get_backbone  # noqa: E402

ANSWER = (
    "Scores:\n- Speed: 3/5\n- Naturalness: 4/5\n- Noise: 2/5\n- Distortion: 5/5\n- Listening effort: 3/5\n"
    "- Continuity: 4/5\n- Overall quality: 3/5\nArtifacts:\n- Noise [0.00-1.70 s]: a steady hiss like wind\n"
    "- Distortion: none\n- Unnatural pause [1.20-1.50 s]: the speech stops mid-word\n"
    "Description: The speech is intelligible, but a steady hiss runs through the first two seconds."
)


def prompt_text() -> str:
    """The all-dimensions rubric prompt when sqrl.prompts is present, else a short stand-in."""
    try:
        from sqrl.prompts import Rubric

        return Rubric().all_dimensions()
    except Exception as exc:  # the benchmark should still run on a partial checkout
        print(f"# sqrl.prompts unavailable ({exc}); using a short prompt", file=sys.stderr)
        return "Rate every quality dimension from 1 to 5 and list the artifacts with their times."


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(best, median) wall seconds and best process CPU seconds over ``repeats`` runs after a warm-up.

    On a shared machine other work only ever adds wall time, so the best run is the cleaner
    estimate; with ``--threads 1`` the CPU seconds hardly depend on what else runs.
    """
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), statistics.median(walls), min(cpus)


def workload(args: argparse.Namespace) -> tuple[list[np.ndarray], list[str], list[str]]:
    """``--batch`` noise clips spread around ``--seconds`` s, the rubric prompt, the ~120-token answer."""
    rng = np.random.default_rng(0)
    seconds = np.linspace(args.seconds - 0.4, args.seconds + 0.4, args.batch)
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]
    return waves, [prompt_text()] * args.batch, [ANSWER] * args.batch


def bench(name: str, window: int, args: argparse.Namespace) -> dict:
    backbone = get_backbone(name, window_s=window)
    model, processor = backbone.load()
    waves, prompts, answers = workload(args)
    batch = backbone.build_inputs(processor, waves, prompts, answers)
    gen_inputs = backbone.build_inputs(processor, waves, prompts)
    sizes = {
        "parameters": model.num_parameters(),  # before LoRA, which adds adapters and copies the tower
        "encoder_parameters": sum(p.numel() for p in model.get_submodule(backbone.encoder_modules[0]).parameters()),
    }
    peft_model = backbone.apply_lora(model, rank=args.rank, encoder_mode="trainable")

    def train_step():
        peft_model.zero_grad(set_to_none=True)
        peft_model(**batch).loss.backward()

    def generate():
        with torch.no_grad():
            peft_model.generate(**gen_inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                do_sample=False)

    batch_s = timed(lambda: backbone.build_inputs(processor, waves, prompts, answers), args.repeats)
    peft_model.train()
    step_s = timed(train_step, args.repeats)
    peft_model.eval()
    gen_s = timed(generate, args.repeats)
    print(f"# {name} {window}s: batch {batch_s[0]:.3f}s, step {step_s[0]:.3f}s, generate {gen_s[0]:.3f}s",
          file=sys.stderr, flush=True)
    return {
        "backbone": name,
        "window_s": window,
        **sizes,
        "trainable_parameters": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "lora_rank": args.rank,
        "batch": args.batch,
        "clip_seconds": args.seconds,
        "sequence_tokens": int(batch["input_ids"].shape[1]),
        "answer_tokens": int(batch["completion_mask"][0].sum()),
        "mel_frames": int(batch["input_features"].shape[-1]),
        "build_inputs_s": round(batch_s[0], 3),
        "forward_backward_s": round(step_s[0], 3),
        "forward_backward_median_s": round(step_s[1], 3),
        "forward_backward_cpu_s": round(step_s[2], 3),
        "generate_s": round(gen_s[0], 3),
        "generate_median_s": round(gen_s[1], 3),
        "generate_cpu_s": round(gen_s[2], 3),
        "generate_new_tokens": args.new_tokens,
        "calibration_2000x3_estimate_s": round(3 * 2000 / args.batch * (step_s[0] + batch_s[0])),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["tiny-af3", "tiny-qwen2-audio"])
    parser.add_argument("--windows", nargs="+", type=int, default=[30, 5])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = [bench(name, window, args) for name in args.families for window in args.windows]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
