import json
from pathlib import Path

import pytest
import torch

from sft.config import SFTStageConfig
from sft.data import AudioCollator, load_examples
from sft.merge import merge
from sft.train import run_sft
from sqrl.backbones import IGNORE_INDEX, get_backbone
from sqrl.config import load_config
from sqrl.models import load_model, read_meta
from sqrl.prompts import Rubric

from .conftest import tiny_overrides

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "calibration.yaml"


def _cfg(manifest, **extra):
    return load_config(SFTStageConfig, CONFIG, tiny_overrides(manifest, **extra))


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_the_collator_masks_everything_but_the_answer(tiny_manifest, sqrl_cache):
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    _, processor = backbone.load()
    examples = load_examples(tiny_manifest, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")[:3]
    batch = AudioCollator(backbone.name, processor, options={"window_s": 5})(examples)
    for row, example in zip(range(3), examples):
        kept = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        text = processor.tokenizer.decode(kept, skip_special_tokens=False)
        assert text == example["target"] + "<|im_end|>"
        assert example["prompt"] not in text


def test_the_collator_skips_and_counts_an_unreadable_clip(tiny_manifest, tmp_path, sqrl_cache):
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    _, processor = backbone.load()
    examples = load_examples(tiny_manifest, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")[:2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    examples.append({**examples[0], "id": "broken", "audio": str(broken)})
    collator = AudioCollator(backbone.name, processor, options={"window_s": 5})
    batch = collator(examples)
    assert batch["input_ids"].shape[0] == 2
    assert sum(collator.skipped.values()) == 1
    with pytest.raises(RuntimeError, match="every clip"):
        collator([examples[-1]])


@pytest.fixture(scope="module")
def calibrated(tiny_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    cfg = _cfg(tiny_manifest, **{"train.max_steps": 12, "train.save_steps": 6})
    run_sft(cfg, out)
    return out


def test_a_few_steps_lower_the_loss(calibrated):
    losses = [loss for _, loss in _losses(calibrated)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_the_output_is_a_loadable_adapter_with_a_trained_encoder(calibrated):
    meta = read_meta(calibrated)
    assert (meta.kind, meta.stage, meta.options) == ("adapter", "calibration", {"window_s": 5})
    model, _, _ = load_model(calibrated)
    names = [n for n, _ in model.named_parameters()]
    assert any("audio_tower" in n and "modules_to_save" in n for n in names)
    # the trained encoder copy differs from the original tower
    saved = dict(model.named_parameters())
    trained = [n for n in names if "audio_tower" in n and "modules_to_save" in n and n.endswith("weight")]
    original = trained[0].replace("modules_to_save.default", "original_module")
    assert not torch.equal(saved[trained[0]], saved[original])


def test_resume_continues_from_the_saved_step(tiny_manifest, calibrated, tmp_path):
    # a run stopped after the checkpoint at step 6 ...
    cfg = _cfg(tiny_manifest, **{"train.max_steps": 12, "train.save_steps": 6})
    first = tmp_path / "run"
    run_sft(_cfg(tiny_manifest, **{"train.max_steps": 12, "train.save_steps": 6}), first)
    import shutil

    shutil.rmtree(first / "checkpoints" / "checkpoint-12")
    (first / "metrics.jsonl").unlink()
    # ... resumes at step 7 and reproduces the uninterrupted run's remaining losses
    run_sft(cfg, first, resume=True)
    resumed = dict(_losses(first))
    assert min(resumed) == 7
    uninterrupted = dict(_losses(calibrated))
    for step in range(7, 13):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4)


def test_merge_keeps_the_logits(calibrated, tmp_path):
    out = tmp_path / "merged"
    check = merge(calibrated, out)
    assert check["max_abs_logit_diff"] < 1e-4
    meta = read_meta(out)
    assert meta.kind == "full"
    model, _, _ = load_model(out)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_warmup_continues_the_calibration_adapter(tiny_manifest, calibrated, tmp_path):
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "data.prompting": "long_form",
                                 "stage": "warmup", "train.max_steps": 2})
    out = run_sft(cfg, tmp_path / "warm")
    meta = read_meta(out)
    assert meta.stage == "warmup" and meta.options == {"window_s": 5}


def test_bf16_autocast_needs_deepspeed_off_and_keeps_fp32_weights():
    from sft.config import TrainSettings

    with pytest.raises(ValueError, match="bf16_autocast needs train.deepspeed.enabled: false"):
        TrainSettings(bf16_autocast=True)
    cfg = load_config(SFTStageConfig, Path(__file__).parents[2] / "configs/small/calibration.yaml")
    assert cfg.train.bf16_autocast and not cfg.train.deepspeed.enabled and cfg.model.dtype == "auto"
