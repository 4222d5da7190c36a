"""``sqrl sft`` and ``sqrl merge``."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft",
        help="calibration or long-form warm-up (SFT with LoRA and an unfrozen audio encoder)",
        description="Supervised stage of the method. The tiny configs build their synthetic corpus when missing.",
    )
    p.add_argument("--config", required=True, help="YAML, e.g. configs/tiny/calibration.yaml")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    p.add_argument("--overwrite", action="store_true", help="remove an existing run in OUT first")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.lr=1e-4")
    p.set_defaults(func=_sft)

    m = sub.add_parser("merge", help="fold an adapter and trained encoder into a new base model")
    m.add_argument("checkpoint", help="model directory written by `sqrl sft` or `sqrl grpo`")
    m.add_argument("--out", required=True, help="directory for the merged model")
    m.set_defaults(func=_merge)


def _sft(args) -> int:
    from sft.config import SFTStageConfig
    from sqrl.config import load_config

    cfg = load_config(SFTStageConfig, args.config, args.overrides)
    if cfg.ray.num_workers > 0:
        from sft.ray_train import run_sft_on_ray

        run_sft_on_ray(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    else:
        from sft.train import run_sft

        run_sft(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"model written to {args.out}")
    return 0


def _merge(args) -> int:
    from sft.merge import merge

    print(json.dumps(merge(args.checkpoint, args.out)))
    return 0
