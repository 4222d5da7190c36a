"""The ``sqrl`` command line, the top of the house: each layer's module adds its subcommands through
``register(subparsers)``. Nothing imports this module but the entry points (the ``sqrl`` console script and
``python -m sqrl``, whose ``sqrl/__main__.py`` imports it lazily)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = (
    "sqrl.data.cli",
    "sqrl.backbones.cli",
    "sft.cli",
    "sqrl.evaluate",
    "sqrl.evaldiff",
    "sqrl.assess",
    "sqrl.baselines",
    "grpo.agreement",
    "recipes.bootstrap",  # sqrl grpo: builds model.init from model.bootstrap first, then the GRPO stage
    "recipes.pipeline",
    "recipes.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqrl",
        description="Speech-quality RL: calibrate an audio LLM on quality dimensions, then GRPO with "
        "dimension-wise rewards (Calibration-Reasoning).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sqrl.runtime import configure_logging, configure_torch

    configure_torch()
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    from sqrl.config import ConfigError

    try:
        result = args.func(args)
    except ConfigError as exc:  # a bad key or value names itself; no traceback needed
        print(f"sqrl {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
