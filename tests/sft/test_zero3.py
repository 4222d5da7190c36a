"""Calibration under DeepSpeed ZeRO-3 (the paper config's stage): it saves the adapter with its trained
encoder, resumes, and trains and merges to the same model as ZeRO-2."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sft.config import SFTStageConfig
from sft.train import run_sft
from sqrl.config import load_config
from sqrl.models import load_model, merge_adapter, probe_logits

from .conftest import tiny_overrides
from .test_sft import CONFIG

STEPS = {"train.max_steps": 4, "train.save_steps": 2}


def _run(manifest, out, stage, resume=False):
    cfg = load_config(SFTStageConfig, CONFIG, tiny_overrides(manifest, **STEPS, **{"train.deepspeed.stage": stage}))
    return run_sft(cfg, out, resume=resume)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def zero2(tiny_manifest, tmp_path_factory):
    return _run(tiny_manifest, tmp_path_factory.mktemp("z2") / "model", 2)


@pytest.fixture(scope="module")
def zero3(tiny_manifest, tmp_path_factory):
    return _run(tiny_manifest, tmp_path_factory.mktemp("z3") / "model", 3)


def test_zero3_saves_the_adapter_and_the_trained_encoder_like_zero2(zero2, zero3):
    for folder in ("", "checkpoints/checkpoint-2", "checkpoints/checkpoint-4"):
        two = load_file(zero2 / folder / "adapter_model.safetensors")
        three = load_file(zero3 / folder / "adapter_model.safetensors")
        assert three.keys() == two.keys()
        # the frozen position table inside the trained encoder copy, which ZeRO-3 used to drop
        assert any("audio_tower" in k and "embed_positions" in k for k in three)
        for key in two:
            torch.testing.assert_close(three[key], two[key], rtol=1e-4, atol=1e-5, msg=key)


def test_zero3_trains_like_zero2(zero2, zero3):
    two, three = _losses(zero2), _losses(zero3)
    assert sorted(three) == [1, 2, 3, 4]
    for step in two:
        assert three[step] == pytest.approx(two[step], rel=1e-4)


def test_the_zero3_merge_equals_the_zero2_merge(zero2, zero3, tmp_path):
    logits = []
    for name, model_dir in (("z2", zero2), ("z3", zero3)):
        assert merge_adapter(model_dir, tmp_path / name)["max_abs_logit_diff"] < 1e-4
        model, processor, backbone = load_model(tmp_path / name)
        logits.append(probe_logits(model, processor, backbone))
    assert float((logits[0] - logits[1]).abs().max()) < 1e-3


def test_zero3_resume_continues_from_its_partitioned_checkpoint(tiny_manifest, zero3, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(zero3, out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    _run(tiny_manifest, out, 3, resume=True)
    resumed, uninterrupted = _losses(out), _losses(zero3)
    assert min(s for s in resumed if s > 2) == 3
    for step in (3, 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4)
