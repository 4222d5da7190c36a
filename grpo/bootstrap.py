"""The model GRPO starts from: the merged calibration checkpoint, built for the tiny configs when missing.

``ensure_init`` returns ``model.init`` if it is a full sqrl model directory. Otherwise, when the
config has a ``model.bootstrap`` section, it runs the tiny pipeline the way the SFT configs build
their data: calibration (``sft.train.run_sft``), the long-form warm-up continuing that adapter, and
``sqrl.models.merge_adapter`` into ``model.init``. Each stage runs in a child process (DeepSpeed and the HF
trainer leave a process group and environment behind) and is skipped when its output exists, so an
interrupted bootstrap resumes.

``untrained_init`` writes an untrained tiny backbone as a full model directory: the fast stand-in for
a calibrated model in tests and benchmarks.
"""
from __future__ import annotations

import logging
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

from grpo.config import BootstrapConfig, ModelConfig
from sqrl.fsutil import atomic_dir
from sqrl.models import META_FILE, ModelMeta, read_meta, write_meta
from sqrl.prompts import REPO_ROOT

log = logging.getLogger(__name__)


def ensure_init(model: ModelConfig) -> Path:
    """The full model directory GRPO starts from (built first when missing and ``bootstrap`` is set)."""
    path = Path(model.init).expanduser().resolve()
    if (path / META_FILE).exists():
        meta = read_meta(path)
        if meta.kind != "full":
            raise ValueError(f"model.init {path} is an adapter; GRPO starts from a merged model: "
                             f"run `sqrl merge {path} --out MERGED` and set model.init=MERGED")
        return path
    if model.bootstrap is None:
        raise FileNotFoundError(f"model.init {path} is not an sqrl model directory; run the calibration and "
                                "warm-up SFT stages and `sqrl merge`, or set model.bootstrap (tiny configs)")
    return build_calibrated(path, model.bootstrap)


def config_path(name: str) -> Path:
    """A config file given relative to the working directory, else to the repository."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return REPO_ROOT / path


def build_calibrated(out: Path, boot: BootstrapConfig) -> Path:
    """Calibration -> warm-up -> merge into ``out``; a stage whose output already exists is not rerun."""
    parts = out.parent / f"{out.name}.parts"
    calibration = Path(boot.calibration_out).resolve() if boot.calibration_out else parts / "calibration"
    warmup = Path(boot.warmup_out).resolve() if boot.warmup_out else parts / "warmup"
    log.info("model.init %s is missing: building it from %s (calibration) and %s (warm-up)", out, calibration, warmup)
    _run_stage(config_path(boot.calibration), list(boot.overrides), calibration)
    _run_stage(config_path(boot.warmup), [*boot.overrides, f"model.init={calibration}"], warmup)
    _in_child(_merge, str(warmup), str(out))
    return out


def _run_stage(config: Path, overrides: list[str], out: Path) -> None:
    if (out / META_FILE).exists():
        log.info("bootstrap: %s exists, skipping", out)
        return
    _in_child(_sft, str(config), overrides, str(out))


def _sft(config: str, overrides: list[str], out: str) -> None:
    from sft.config import SFTStageConfig
    from sft.train import run_sft
    from sqrl.config import load_config

    logging.basicConfig(level=logging.INFO)
    resume = (Path(out) / "checkpoints").exists()
    run_sft(load_config(SFTStageConfig, config, overrides), out, resume=resume)


def _merge(checkpoint: str, out: str) -> None:
    from sqrl.models import merge_adapter

    merge_adapter(checkpoint, out)


def _in_child(fn: Any, *args: Any) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=fn, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"bootstrap step {fn.__name__}{args} failed (exit code {proc.exitcode})")


def untrained_init(out: str | Path, backbone: str = "tiny-qwen2-audio", **spec: Any) -> Path:
    """An untrained tiny backbone (``spec``: TinySpec fields, e.g. ``window_s=5``) as a full model
    directory at ``out``; reused when present."""
    from sqrl.backbones import get_backbone

    out = Path(out)
    if (out / META_FILE).exists():
        return out
    source = get_backbone(backbone, **spec).build_dir()
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        write_meta(tmp, ModelMeta(backbone=backbone, kind="full", base=None, stage="untrained"))
    return out
