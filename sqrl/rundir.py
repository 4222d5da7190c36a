"""What a command does with an ``--out`` folder that already holds something (docs/run_folders.md).

One rule for every command that writes a run folder: an absent or empty folder is used; a non-empty one
is refused unless ``--resume`` (the commands that can continue a run: ``sqrl sft``, ``sqrl grpo``) or
``--overwrite``, which removes the old folder first. Without this, a new run wrote beside an old one:
``checkpoint-1`` next to the old ``checkpoint-3``, both runs in ``metrics.jsonl``, and a later ``--resume``
continuing the old run.

``--overwrite`` removes only what looks like sqrl output (a folder holding one of ``MARKERS``), never the
file system root, the home folder, the working directory or a folder above it; the old folder is first
renamed aside in one step, so an interrupted removal never leaves a half-deleted run under the name.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

MARKERS = ("sqrl_config.yaml", "sqrl_model.json", "metrics.jsonl", "metrics.json", "checkpoints", "predictions.jsonl",
           "report.md", "eval_run.json", "pipeline.yaml", "compare.yaml", "results.json", "stats.json", "train.jsonl", "tensorboard")
"""Entries of which at least one marks a folder as sqrl output (a run, an evaluation, a corpus)."""


def is_taken(out: str | os.PathLike) -> bool:
    """Whether ``out`` exists and holds anything (a file in place of the folder counts too)."""
    out = Path(out)
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def prepare_out(out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, can_resume: bool = True,
                create: bool = True) -> Path:
    """Check ``out`` under the rule above (removing it first with ``overwrite``); returns it as a ``Path``.

    ``can_resume``: whether the command has ``--resume`` (named in the error). ``create``: make the folder."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if is_taken(out) and not (resume and can_resume):
        if not overwrite:
            how = "pass --resume to continue it, --overwrite to replace it" if can_resume else \
                "pass --overwrite to replace it"
            raise FileExistsError(f"{out} is not empty (it holds {_sample(out)}); {how}, or choose another --out")
        remove_run(out)
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def remove_run(out: str | os.PathLike) -> None:
    """Remove the sqrl output folder ``out`` (``--overwrite``), refusing anything that does not look like one."""
    out = Path(out)
    check_removable(out)
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, aside / out.name)
    log.info("--overwrite: removing the previous %s", out)
    shutil.rmtree(aside)


def check_removable(out: str | os.PathLike) -> None:
    """Raise ``FileExistsError`` unless ``out`` is a folder of sqrl output that ``--overwrite`` may remove."""
    out = Path(out)
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"--overwrite: {out} is not a folder; remove it yourself")
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor) or real == Path.home().resolve() or real == cwd or real in cwd.parents:
        raise FileExistsError(f"--overwrite: refusing to remove {out} (the root, home or working folder, or above it)")
    if not any((out / m).exists() for m in MARKERS):
        raise FileExistsError(f"--overwrite: {out} does not look like sqrl output (none of {', '.join(MARKERS[:6])}, "
                              "...); remove it yourself or choose another --out")


def _sample(out: Path) -> str:
    if not out.is_dir():
        return "a file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
