"""``sqrl merge``: fold a trained adapter (and the fully trained encoder) into a new base model.

GRPO starts from the merged calibration model: a fresh adapter trains on top of it and the
reference policy is that merged base with the adapter switched off.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from sqrl.models import ModelMeta, load_model, read_meta, write_meta
from sqrl.scratch import remove_stale, staging_dir

log = logging.getLogger(__name__)


def probe_logits(model, processor, backbone, seed: int = 0) -> torch.Tensor:
    """Logits on a fixed synthetic clip and prompt; used to check that a merge keeps the model."""
    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.standard_normal(16_000 * 2)).astype(np.float32)
    inputs = backbone.build_inputs(processor, [wave], ["Rate the noise."], answers=["Noise: 3/5"])
    inputs.pop("labels", None)
    inputs.pop("completion_mask", None)
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


def merge(checkpoint: str | Path, out: str | Path, atol: float = 1e-4) -> dict[str, float]:
    """Merge ``checkpoint`` (an adapter model dir) into a full model at ``out``; returns the check.

    Written to a temporary folder and renamed, so a failed merge leaves no half-written model.
    Raises if the merged model's logits differ from the adapter model's by more than ``atol``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    meta = read_meta(checkpoint)
    if meta.kind != "adapter":
        raise ValueError(f"{checkpoint} is already a full model; nothing to merge")
    model, processor, backbone = load_model(checkpoint)
    before = probe_logits(model, processor, backbone)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # what a killed merge left
    stage = staging_dir(out)
    try:
        merged = backbone.save_merged(model, processor, stage / "model")
        write_meta(merged, ModelMeta(backbone=backbone.name, kind="full", base=None, stage="merge"))
        # the prompts the model was trained with travel with it (sqrl eval and GRPO read them)
        if (checkpoint / "sqrl_config.yaml").exists():
            shutil.copy(checkpoint / "sqrl_config.yaml", merged / "sqrl_config.yaml")
        reloaded, processor2, _ = load_model(merged)
        diff = float((before - probe_logits(reloaded, processor2, backbone)).abs().max())
        if diff > atol:
            raise RuntimeError(f"merged model's logits differ by {diff:.3g} (> {atol}); not writing {out}")
        if out.exists():
            shutil.rmtree(out)
        merged.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("merged %s into %s (max logit difference %.2e)", checkpoint, out, diff)
    return {"max_abs_logit_diff": diff}
