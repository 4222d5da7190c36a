"""``sqrl grpo``: the GRPO stage, after building the model it starts from when the config says how.

``ensure_init`` returns ``model.init`` if it is a full sqrl model directory. Otherwise, when the config has a
``model.bootstrap`` section (the tiny configs), it builds it the way the SFT configs build their data:
calibration, the long-form warm-up continuing that adapter, and a merge into ``model.init``, on the recipes'
stage runner (``recipes.stages``: a complete stage is skipped, so an interrupted bootstrap resumes). The GRPO
driver itself only checks that ``model.init`` is there: building it composes stages, which is a recipe.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from grpo.config import BootstrapConfig, GRPOConfig, ModelConfig
from recipes.stages import MergeStep, SFTStep, run_steps
from sqrl.config import load_config
from sqrl.models import META_FILE
from sqrl.rundir import prepare_out

log = logging.getLogger(__name__)


def ensure_init(model: ModelConfig) -> Path:
    """The full model directory GRPO starts from (built first when missing and ``bootstrap`` is set)."""
    path = Path(model.init).expanduser().resolve()
    if (path / META_FILE).exists() or model.bootstrap is None:
        return path  # the driver checks it (a merged model, not an adapter) and says what to do when missing
    return build_calibrated(path, model.bootstrap)


def build_calibrated(out: Path, boot: BootstrapConfig) -> Path:
    """Calibration -> warm-up -> merge into ``out``; a stage whose output already exists is not rerun."""
    parts = out.parent / f"{out.name}.parts"
    calibration = Path(boot.calibration_out).resolve() if boot.calibration_out else parts / "calibration"
    warmup = Path(boot.warmup_out).resolve() if boot.warmup_out else parts / "warmup"
    log.info("model.init %s is missing: building it from %s (calibration) and %s (warm-up)", out, calibration, warmup)
    run_steps([
        SFTStep("calibration", calibration, kind="calibration", config=boot.calibration,
                overrides=list(boot.overrides)),
        SFTStep("warmup", warmup, kind="sft_reasoning", config=boot.warmup,
                overrides=[*boot.overrides, f"model.init={calibration}"]),
        MergeStep("merge", out, kind="merge", adapter=warmup),
    ], tag="bootstrap")
    return out


def run_grpo_with_init(cfg: GRPOConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """``grpo.driver.run_grpo`` after ``ensure_init`` built ``model.init`` where the config says how. The run
    folder rule (sqrl/rundir.py) is checked first, so a refused ``out`` costs no bootstrap."""
    from grpo.driver import run_grpo

    prepare_out(out, resume=resume, overwrite=overwrite, create=False)
    ensure_init(cfg.model)
    return run_grpo(cfg, out, resume=resume)


def register(sub: argparse._SubParsersAction) -> None:
    from grpo.cli import add_arguments

    p = sub.add_parser(
        "grpo",
        help="GRPO reasoning stage on Ray (rollout, reward and DeepSpeed policy workers)",
        description="Reinforcement stage of the method (paper 3.2). Starts from model.init, the merged "
        "calibration model; the tiny configs build it when missing. `sqrl eval --model OUT` takes the result.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(GRPOConfig, args.config, args.overrides)
    out = run_grpo_with_init(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    print(f"policy written to {out}")
    return 0
