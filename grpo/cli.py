"""``sqrl grpo --config CONFIG --out DIR [--resume] [dotted.key=value ...]``.

Also runnable on its own: ``python -m grpo.cli --config ... --out ...`` (the same arguments).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML, e.g. configs/tiny/grpo_accsem_dimwise.yaml")
    p.add_argument("--out", required=True, help="run directory: metrics.jsonl, checkpoints/, and the final policy")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT")
    p.add_argument("--overwrite", action="store_true", help="remove an existing run in OUT first")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. rollout.temperature=0.9")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grpo",
        help="GRPO reasoning stage on Ray (rollout, reward and DeepSpeed policy workers)",
        description="Reinforcement stage of the method (paper 3.2). Starts from model.init, the merged "
        "calibration model; the tiny configs build it when missing. `sqrl eval --model OUT` takes the result.",
    )
    add_arguments(p)
    p.set_defaults(func=_grpo)


def _grpo(args: argparse.Namespace) -> int:
    from grpo.config import GRPOConfig
    from grpo.driver import run_grpo
    from sqrl.config import load_config

    cfg = load_config(GRPOConfig, args.config, args.overrides)
    out = run_grpo(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"policy written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="python -m grpo.cli", description="GRPO reasoning stage")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return _grpo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
