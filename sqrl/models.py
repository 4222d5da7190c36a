"""What a model directory holds, and loading one for any stage.

Every stage writes the same layout so that ``sqrl eval --model DIR``, ``sqrl merge DIR`` and the
GRPO stage take any of them::

    DIR/sqrl_model.json   {"backbone": "tiny-qwen2-audio", "kind": "adapter" | "full", "base": PATH | null}
    DIR/adapter_model.safetensors, adapter_config.json     (kind "adapter": peft LoRA + modules_to_save)
    DIR/model.safetensors, config.json                     (kind "full": a merged model)
    DIR/processor files                                    (tokenizer, feature extractor, chat template)

``base`` is the model the adapter was trained on: null means the backbone's own default (the
offline tiny build, or the hub id of a released model). ``merge_adapter`` folds an adapter directory
into a full one (``sqrl merge``; GRPO starts from the merged calibration model).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sqrl.audio import SAMPLING_RATE
from sqrl.fsutil import atomic_dir, publish, temp_dir_beside

log = logging.getLogger(__name__)

META_FILE = "sqrl_model.json"


@dataclass
class ModelMeta:
    backbone: str
    kind: str  # "adapter" or "full"
    base: str | None = None
    stage: str | None = None  # which stage wrote it: calibration, warmup, grpo, merge
    options: dict | None = None  # tiny-build options (TinySpec fields) when ``base`` is the default build
    base_build: str | None = None  # the tiny build's cache key (name-hash) the adapter was trained on

    def __post_init__(self):
        if self.kind not in ("adapter", "full"):
            raise ValueError(f"model kind must be 'adapter' or 'full', not {self.kind!r}")


def write_meta(path: str | os.PathLike, meta: ModelMeta) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / META_FILE, "w", encoding="utf-8") as fh:
        json.dump(asdict(meta), fh, indent=2)


def read_meta(path: str | os.PathLike) -> ModelMeta:
    file = Path(path) / META_FILE
    if not file.exists():
        raise FileNotFoundError(
            f"{path} is not an sqrl model directory (no {META_FILE}); pass a directory written by "
            "`sqrl sft`, `sqrl merge` or `sqrl grpo`, or a backbone name such as tiny-qwen2-audio"
        )
    with open(file, encoding="utf-8") as fh:
        return ModelMeta(**json.load(fh))


def load_model(
    spec: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu", trainable: bool = False,
    merge: bool = False, attn_implementation: str | None = None,
) -> tuple[Any, Any, Any]:
    """Load ``(model, processor, backbone)`` from an sqrl model directory or a backbone name.

    An adapter directory comes back as a ``PeftModel`` over its base (``trainable`` keeps the
    adapter weights trainable); a full directory or a backbone name as the plain model. ``merge`` folds
    an adapter into the base weights in memory (peft's ``merge_and_unload``, as ``sqrl merge`` does on
    disk): the same function up to float rounding, one matmul per adapted layer instead of three, and the
    plain model class. For inference only (``sqrl eval``, ``sqrl assess``). ``attn_implementation`` as in
    ``Backbone.load``.
    """
    if merge and trainable:
        raise ValueError("load_model: merge is for inference; a trainable adapter stays unmerged")
    from sqrl.backbones import get_backbone

    spec_path = Path(spec)
    if not (spec_path / META_FILE).exists():
        if spec_path.exists():
            raise FileNotFoundError(f"{spec}: no {META_FILE}; not an sqrl model directory")
        backbone = get_backbone(str(spec))
        model, processor = backbone.load(None, dtype=dtype, device=device, attn_implementation=attn_implementation)
        return model, processor, backbone
    meta = read_meta(spec_path)
    backbone = get_backbone(meta.backbone, **(meta.options or {}))
    if meta.kind == "full":
        model, processor = backbone.load(str(spec_path), dtype=dtype, device=device, attn_implementation=attn_implementation)
        return model, processor, backbone
    if meta.base is None and meta.base_build and backbone.spec is not None:
        built = backbone.build_dir().name
        if built != meta.base_build:
            raise RuntimeError(
                f"{spec_path} was trained on build {meta.base_build}, but this sqrl builds {built} "
                "(the offline build changed: transformers version, sources, tokenizer corpus or build code); retrain it"
            )
    base, processor = backbone.load(meta.base, dtype=dtype, device=device, attn_implementation=attn_implementation)
    model = backbone.load_adapter(base, spec_path, is_trainable=trainable)
    log.info("loaded adapter %s over %s%s", spec_path, meta.base or meta.backbone, " (merged)" if merge else "")
    if merge:
        model = model.merge_and_unload()
    return model, processor, backbone


def untrained_init(out: str | os.PathLike, backbone: str = "tiny-qwen2-audio", **spec: Any) -> Path:
    """An untrained tiny backbone (``spec``: TinySpec fields, e.g. ``window_s=5``) as a full model directory at
    ``out`` (reused when present): the untrained row of ``sqrl compare`` and the fast stand-in for a calibrated
    model in tests and benchmarks."""
    from sqrl.backbones import get_backbone

    out = Path(out)
    if (out / META_FILE).exists():
        return out
    source = get_backbone(backbone, **spec).build_dir()
    with atomic_dir(out) as tmp:  # removes what a killed build left first
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        write_meta(tmp, ModelMeta(backbone=backbone, kind="full", base=None, stage="untrained"))
    return out


def probe_logits(model, processor, backbone, seed: int = 0) -> torch.Tensor:
    """Logits on a fixed synthetic clip and prompt; used to check that a merge keeps the model."""
    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.standard_normal(SAMPLING_RATE * 2)).astype(np.float32)
    inputs = backbone.build_inputs(processor, [wave], ["Rate the noise."], answers=["Noise: 3/5"])
    inputs.pop("labels", None)
    inputs.pop("completion_mask", None)
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


def merge_tolerance(logits: torch.Tensor) -> float:
    """How far a merged model's logits may be from the adapter model's: 1e-4 + 1e-5 * max |logit|.

    Merging computes ``(W0 + s B A) x`` instead of ``W0 x + s B (A x)``: the same sum in another order,
    so the fp32 rounding difference grows with the size of the activations. The small backbone's
    logits reach ~40 (SmolLM2), where a correct merge differs by ~1.5e-4; the tiny builds' stay near 1.
    """
    return 1e-4 + 1e-5 * float(logits.abs().max())


def merge_adapter(checkpoint: str | os.PathLike, out: str | os.PathLike, atol: float | None = None) -> dict[str, float]:
    """Fold ``checkpoint`` (an adapter model dir) and its trained encoder into a full model at ``out``.

    Written beside ``out`` and renamed when checked, so a failed merge leaves no half-written model.
    Raises if the merged model's logits differ from the adapter model's by more than ``atol``
    (default :func:`merge_tolerance`). The merged model keeps the adapter's build options (a small
    model's ``window_s``). Returns the check: ``{"max_abs_logit_diff": ..., "tolerance": ...}``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    meta = read_meta(checkpoint)
    if meta.kind != "adapter":
        raise ValueError(f"{checkpoint} is already a full model; nothing to merge")
    model, processor, backbone = load_model(checkpoint)
    before = probe_logits(model, processor, backbone)
    atol = merge_tolerance(before) if atol is None else atol
    stage = temp_dir_beside(out)
    try:
        merged = backbone.save_merged(model, processor, stage / "model")
        write_meta(merged, ModelMeta(backbone=backbone.name, kind="full", base=None, stage="merge",
                                          options=meta.options))
        # the prompts the model was trained with travel with it (sqrl eval and GRPO read them)
        if (checkpoint / "sqrl_config.yaml").exists():
            shutil.copy(checkpoint / "sqrl_config.yaml", merged / "sqrl_config.yaml")
        reloaded, processor2, _ = load_model(merged)
        diff = float((before - probe_logits(reloaded, processor2, backbone)).abs().max())
        if diff > atol:
            raise RuntimeError(f"merged model's logits differ by {diff:.3g} (> {atol}); not writing {out}")
        publish(merged, out, replace=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("merged %s into %s (max logit difference %.2e, tolerance %.2e)", checkpoint, out, diff, atol)
    return {"max_abs_logit_diff": diff, "tolerance": atol}
