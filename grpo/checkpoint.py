"""Atomic GRPO checkpoints: ``DIR/checkpoints/step-000010/``, written to a temporary folder and renamed.

A checkpoint holds

* ``policy/engine/``: the DeepSpeed engine state of every policy rank (trainable weights, the AdamW
  moments) in DeepSpeed's own per-rank format, the only one it restores ZeRO partitions from;
* ``policy/adapter/``: the adapter (LoRA and the trained encoder/projector) in safetensors, loadable
  by peft on its own;
* ``policy/rng_rank<r>.safetensors``: each rank's torch RNG state;
* ``rng.safetensors`` and ``trainer_state.json``: the driver's RNG states (torch, numpy, python), the
  step, the data cursor, counters and the run seed (rollout sampling is seeded from it and the step).

The folder is renamed into place only after everything is written, so after a ``kill -9`` the last
``step-*`` folder is always whole; half-written ``.step-*`` folders are removed on the next start.
Last before the rename, ``sqrl_sha256.json`` records every file's hash (sqrl/integrity.py); ``verify``
checks it before anything of the checkpoint is loaded (DeepSpeed unpickles its engine state).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sqrl.integrity import verify_manifest, write_manifest

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def begin(run_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (beside its final place)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".step-{step:06d}.", dir=root))


def commit(tmp: Path, step: int, state: dict[str, Any]) -> Path:
    """Write the driver's state into ``tmp`` and rename it to ``step-<step>``; returns the final path."""
    from safetensors.torch import save_file

    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    state = dict(state, step=step, python_rng=_jsonable(random.getstate()), numpy_rng=_numpy_state())
    with open(tmp / STATE_FILE, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    write_manifest(tmp)
    final = tmp.parent / f"step-{step:06d}"
    if final.exists():  # a re-run of a step after a resume: the new one replaces it
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def latest(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = [(int(m.group(1)), p) for p in checkpoints_dir(run_dir).glob("step-*")
             if (m := _STEP_DIR.search(p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def verify(ckpt: Path) -> None:
    """Refuse (``IntegrityError``, naming the file) a checkpoint that differs from its manifest or has none."""
    verify_manifest(ckpt)


def load_state(ckpt: Path) -> dict[str, Any]:
    """The driver's state; restores the driver's RNG states as a side effect."""
    from safetensors.torch import load_file

    with open(ckpt / STATE_FILE, encoding="utf-8") as fh:
        state = json.load(fh)
    random.setstate(_tuples(state["python_rng"]))
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(load_file(str(ckpt / "rng.safetensors"))["torch"])
    return state


def prune(run_dir: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints; remove older ones and stale temporary folders."""
    root = checkpoints_dir(run_dir)
    if not root.exists():
        return
    for tmp in root.glob(".step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    done = sorted((int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.search(p.name)))
    for _, path in done[:-keep] if keep else done:
        shutil.rmtree(path, ignore_errors=True)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _jsonable(obj: Any) -> Any:
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tuples(obj: Any) -> Any:
    return tuple(_tuples(x) for x in obj) if isinstance(obj, list) else obj
