"""The backbone registry: both tiny families, batching, labels, LoRA modes, adapters, the cache."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sqrl.backbones import IGNORE_INDEX, Backbone, get_backbone, list_backbones, register_backbone
from sqrl.backbones.tiny import BUILD_MARKER, build_tiny, ensure_tiny

TINY = ["tiny-af3", "tiny-qwen2-audio"]
SR = 16000
PROMPTS = ["Rate the noise.", "How natural is the voice?", "Describe the quality."]
ANSWERS = ["Noise: 4/5", "Naturalness: 2 out of 5. A hiss 0.35-1.20 s.", "Clear speech, no artifacts."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: a second thread gains little, and on a busy machine two OpenMP threads
    # that wait on each other made this file several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("sqrl_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQRL_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module", params=TINY)
def tiny(request, cache):
    """(backbone, model, processor) built once per family into the module's cache."""
    backbone = get_backbone(request.param)
    model, processor = backbone.load()
    return backbone, model, processor


def clips(seconds=(1.0, 2.5, 0.7), seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(SR * s))).astype(np.float32) for s in seconds]


def fresh(backbone):
    """A new copy of the cached build (apply_lora changes a model in place)."""
    return backbone.load()


def sgd_step(model, batch, lr=1e-2):
    model.zero_grad()
    model(**batch).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and p.grad is not None:
                p -= lr * p.grad


# ---------------------------------------------------------------- registry


def test_the_registry_holds_the_six_backbones():
    assert list_backbones() == ["audio-flamingo-3", "qwen2-audio", "small-af3", "small-qwen2-audio", "tiny-af3",
                                "tiny-qwen2-audio"]
    assert get_backbone("tiny-af3").family.audio_placeholder == "<sound>"
    assert get_backbone("qwen2-audio").family.audio_placeholder == "<|audio_bos|><|AUDIO|><|audio_eos|>"


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(Backbone("tiny-af3", get_backbone("tiny-af3").family))


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="tiny-af3"):
        get_backbone("tiny-gpt")


def test_a_variant_changes_the_window_and_rejects_unknown_fields():
    short = get_backbone("tiny-af3", window_s=5)
    assert short.tiny.window_s == 5 and short.tiny.max_source_positions == 250
    with pytest.raises(ValueError, match="unknown TinySpec"):
        get_backbone("tiny-af3", windw_s=5)
    with pytest.raises(ValueError, match="is not built offline; it has no spec to change"):
        get_backbone("audio-flamingo-3", window_s=5)


def test_a_spec_with_head_dim_below_32_is_refused():
    with pytest.raises(ValueError, match="head_dim"):
        get_backbone("tiny-af3", num_attention_heads=8)


def test_a_released_backbone_without_a_path_never_reaches_for_the_hub():
    with pytest.raises(ValueError, match="nvidia/audio-flamingo-3-hf"):
        get_backbone("audio-flamingo-3").load()
    with pytest.raises(FileNotFoundError):
        get_backbone("qwen2-audio").load("/nonexistent/qwen2-audio")


def test_loading_a_directory_of_the_other_family_is_refused(cache):
    af3_dir = get_backbone("tiny-af3").build_dir()
    with pytest.raises(ValueError, match="audioflamingo3"):
        get_backbone("tiny-qwen2-audio").load(af3_dir)


# ---------------------------------------------------------------- the tiny build and its cache


def test_the_tiny_build_is_deterministic(tmp_path):
    backbone = get_backbone("tiny-qwen2-audio", window_s=1)
    a = build_tiny(backbone.family, backbone.tiny, tmp_path / "a")
    b = build_tiny(backbone.family, backbone.tiny, tmp_path / "b")
    other = build_tiny(backbone.family, backbone.variant(seed=1).tiny, tmp_path / "c")
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, other))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    # The seed matters, so the equality above is not vacuous.
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_the_tokenizer_writes_answers_compactly(tiny):
    _, _, processor = tiny
    ids = processor.tokenizer("Naturalness: 4/5\nNoise: a steady hiss (0.35-1.20 s)", add_special_tokens=False)
    assert 2000 <= len(processor.tokenizer) <= 4096
    assert len(ids["input_ids"]) <= 22


def test_the_cache_is_reused_and_an_unfinished_directory_is_refused(tmp_path):
    backbone = get_backbone("tiny-af3", window_s=1)
    first = ensure_tiny(backbone.name, backbone.family, backbone.tiny, root=tmp_path)
    assert first.stat().st_mode & 0o055 == 0o055  # readable by others, unlike a fresh mkdtemp
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny(backbone.name, backbone.family, backbone.tiny, root=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    (first / BUILD_MARKER).unlink()
    with pytest.raises(RuntimeError, match="not a finished sqrl build"):
        ensure_tiny(backbone.name, backbone.family, backbone.tiny, root=tmp_path)


def test_losing_the_race_to_another_builder_keeps_the_winners_build(tmp_path, monkeypatch):
    import sqrl.backbones.tiny as tiny_module

    backbone = get_backbone("tiny-af3", window_s=1)
    final = tmp_path / "backbones" / tiny_module.build_key(backbone.name, backbone.family, backbone.tiny)
    real_build = tiny_module.build_tiny

    def build_while_another_process_finishes(family, spec, out_dir):
        real_build(family, spec, final)  # the other process renames its build into place first
        (final / "winner").write_text("yes")
        return real_build(family, spec, out_dir)

    monkeypatch.setattr(tiny_module, "build_tiny", build_while_another_process_finishes)
    assert ensure_tiny(backbone.name, backbone.family, backbone.tiny, root=tmp_path) == final
    assert (final / "winner").is_file()
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_two_processes_building_at_once_leave_one_complete_build(tmp_path):
    code = (
        "import sys; from sqrl.backbones import get_backbone; from sqrl.backbones.tiny import ensure_tiny;"
        "b = get_backbone('tiny-qwen2-audio', window_s=1);"
        "print(ensure_tiny(b.name, b.family, b.tiny, root=sys.argv[1]))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    repo = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=repo) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    dirs = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(dirs) == 1
    built = Path(dirs.pop())
    assert (built / BUILD_MARKER).is_file()
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temp dirs left behind
    model, _ = get_backbone("tiny-qwen2-audio", window_s=1).load(built)
    assert model.num_parameters() > 0


# ---------------------------------------------------------------- forward, backward, generate


def test_forward_backward_and_generate_on_clips_of_different_lengths(tiny):
    backbone, model, processor = tiny
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    model.zero_grad()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()

    prompts = backbone.build_inputs(processor, clips(), PROMPTS)
    assert (prompts["attention_mask"][:, -1] == 1).all()  # left-padded for generation
    with torch.no_grad():
        gen = model.generate(**prompts, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert gen.shape == (3, prompts["input_ids"].shape[1] + 6)
    texts = backbone.decode(processor, gen[:, prompts["input_ids"].shape[1]:])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_a_clips_generation_does_not_depend_on_its_left_padded_batch(tiny):
    backbone, model, processor = tiny
    waves = clips()
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        together = model.generate(**backbone.build_inputs(processor, waves, PROMPTS), **kwargs)
        for i in range(3):
            alone = model.generate(**backbone.build_inputs(processor, waves[i:i + 1], PROMPTS[i:i + 1]), **kwargs)
            for step in range(4):
                torch.testing.assert_close(together.logits[step][i], alone.logits[step][0], atol=1e-4, rtol=1e-4)
            assert torch.equal(together.sequences[i, -4:], alone.sequences[0, -4:])


def test_labels_mask_everything_but_the_answer_and_the_end_of_turn(tiny):
    backbone, _, processor = tiny
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    prompts = backbone.build_inputs(processor, clips(), PROMPTS)
    labels, mask = batch["labels"], batch["completion_mask"]
    assert torch.equal(mask.bool(), labels != IGNORE_INDEX)
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for i, answer in enumerate(ANSWERS):
        kept = labels[i][labels[i] != IGNORE_INDEX]
        assert kept[-1].item() == end_of_turn
        assert processor.tokenizer.decode(kept[:-1]) == answer
        # Right padding: real tokens first, and the prompt part is the generation prompt unchanged.
        n = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        prompt = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
        assert torch.equal(batch["input_ids"][i, : len(prompt)], prompt)
        assert torch.equal(batch["input_ids"][i, len(prompt) : n], kept)


def test_token_id_answers_give_the_same_batch_as_text_answers(tiny):
    backbone, _, processor = tiny
    text_batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    ids = [row[row != IGNORE_INDEX].tolist() for row in text_batch["labels"]]
    id_batch = backbone.build_inputs(processor, clips(), PROMPTS, ids)
    for key in ("input_ids", "attention_mask", "labels", "completion_mask"):
        assert torch.equal(text_batch[key], id_batch[key])


def test_a_rows_logits_do_not_depend_on_its_batch(tiny):
    backbone, model, processor = tiny
    waves = clips()
    batch = backbone.build_inputs(processor, waves, PROMPTS, ANSWERS)
    with torch.no_grad():
        together = model(**batch).logits
        for i in range(3):
            alone = model(**backbone.build_inputs(processor, waves[i:i + 1], PROMPTS[i:i + 1], ANSWERS[i:i + 1]))
            n = int(batch["attention_mask"][i].sum())
            torch.testing.assert_close(together[i, :n], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_different_audio_gives_different_logits(tiny):
    backbone, model, processor = tiny
    a, b = clips((2.0,), seed=1)[0], clips((2.0,), seed=2)[0]
    with torch.no_grad():
        la = model(**backbone.build_inputs(processor, [a], PROMPTS[:1], ANSWERS[:1])).logits
        lb = model(**backbone.build_inputs(processor, [b], PROMPTS[:1], ANSWERS[:1])).logits
        again = model(**backbone.build_inputs(processor, [a], PROMPTS[:1], ANSWERS[:1])).logits
    assert torch.equal(la, again)
    assert (la[0, -5:] - lb[0, -5:]).abs().max() > 1e-4  # the answer tokens see the audio


# ---------------------------------------------------------------- LoRA and adapters


def test_with_a_trainable_encoder_every_trainable_parameter_gets_a_gradient(tiny):
    backbone, _, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="trainable")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    tower = [n for n in names if ".audio_tower.modules_to_save." in n]
    assert any(".conv1." in n for n in tower) and any(".layers.0.fc1." in n for n in tower)
    assert any(".multi_modal_projector.modules_to_save." in n for n in names)
    assert any("language_model" in n and "lora_A" in n for n in names)
    assert not any("lm_head" in n or "embed_tokens" in n or "embed_positions" in n for n in names)
    assert not any("audio_tower" in n and "lora_" in n for n in names)

    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    torch.manual_seed(0)
    sgd_step(model, batch)  # LoRA B starts at zero, so A only gets a gradient after one step
    model.zero_grad()
    model(**batch).loss.backward()
    silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert silent == []


def test_a_fresh_adapter_generates_exactly_what_the_base_model_does(tiny):
    backbone, base_model, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="trainable")
    inputs = backbone.build_inputs(processor, clips(), PROMPTS)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs, **kwargs), base_model.generate(**inputs, **kwargs))


def test_a_few_lora_steps_lower_the_loss(tiny):
    backbone, _, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="trainable")
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        optim.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        optim.step()
        losses.append(loss.item())
    # From chance level (ln of the vocabulary size, ~7.6); measured about 0.6-0.7 lower after ten steps.
    assert losses[-1] < losses[0] - 0.4 and max(losses[2:]) < losses[0], losses


def test_a_frozen_encoder_gets_no_gradient_but_the_projector_does(tiny):
    backbone, _, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="frozen")
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    sgd_step(model, batch)
    model.zero_grad()
    model(**batch).loss.backward()
    tower = [(n, p) for n, p in model.named_parameters() if ".audio_tower." in n]
    assert tower and all(not p.requires_grad and p.grad is None for _, p in tower)
    projector = [p for n, p in model.named_parameters() if "multi_modal_projector.modules_to_save" in n]
    assert projector and all(p.requires_grad and p.grad is not None and p.grad.any() for p in projector)


def test_lora_mode_adapts_the_encoders_linear_layers(tiny):
    backbone, _, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("audio_tower" in n and "lora_A" in n for n in trainable)
    assert not any("audio_tower" in n and "lora_" not in n for n in trainable)


def test_an_unknown_encoder_mode_is_refused(tiny):
    backbone, _, _ = tiny
    with pytest.raises(ValueError, match="encoder_mode"):
        backbone.apply_lora(fresh(backbone)[0], encoder_mode="partly")


def test_saving_and_reloading_the_adapter_reproduces_the_logits(tiny, tmp_path):
    backbone, base_model, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="trainable")
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    for _ in range(2):
        sgd_step(model, batch)
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
        untouched = base_model(**batch).logits
    assert (trained - untouched).abs().max() > 1e-3  # training changed something worth saving
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="LoRA adapter"):
        backbone.load(tmp_path / "adapter")
    reloaded = backbone.load_adapter(fresh(backbone)[0], tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(**batch).logits
    torch.testing.assert_close(again, trained, atol=1e-6, rtol=0)


def test_a_merged_model_saves_and_loads_by_path_with_the_same_logits(tiny, tmp_path):
    backbone, _, processor = tiny
    model = backbone.apply_lora(fresh(backbone)[0], rank=8, encoder_mode="trainable")
    batch = backbone.build_inputs(processor, clips(), PROMPTS, ANSWERS)
    sgd_step(model, batch)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    out = backbone.save_merged(model, processor, tmp_path / "merged")
    merged, merged_processor = backbone.load(out)
    with torch.no_grad():
        after = merged(**backbone.build_inputs(merged_processor, clips(), PROMPTS, ANSWERS)).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- prompts, vLLM, decode


def test_the_vllm_prompt_holds_the_family_placeholder_once(tiny):
    backbone, _, processor = tiny
    prompt = backbone.vllm_prompt(processor, "Rate it.", system="You judge speech quality.")
    assert prompt.count(backbone.family.audio_placeholder) == 1
    assert prompt.startswith("<|im_start|>system\nYou judge speech quality.<|im_end|>\n")
    assert prompt.endswith("Rate it.<|im_end|>\n<|im_start|>assistant\n")
    wave = clips((1.0,))[0]
    data = backbone.vllm_multi_modal_data(wave, SR)
    assert data["audio"][1] == SR and np.array_equal(data["audio"][0], wave)


def test_decode_drops_special_tokens_and_padding(tiny):
    backbone, _, processor = tiny
    tok = processor.tokenizer
    ids = tok("Noise: 3/5", add_special_tokens=False)["input_ids"]
    row = ids + tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<|endoftext|>"])
    assert backbone.decode(processor, torch.tensor([row, row])) == ["Noise: 3/5", "Noise: 3/5"]
    assert backbone.decode(processor, [[IGNORE_INDEX, IGNORE_INDEX] + row]) == ["Noise: 3/5"]


# ---------------------------------------------------------------- windows


def test_af3_splits_a_clip_longer_than_the_window_into_windows(cache):
    backbone = get_backbone("tiny-af3", window_s=1)
    model, processor = backbone.load()
    batch = backbone.build_inputs(processor, clips((2.5, 0.5)), PROMPTS[:2], ANSWERS[:2])
    assert batch["input_features"].shape == (4, 128, 100)  # 3 windows + 1
    audio_id = processor.tokenizer.convert_tokens_to_ids("<sound>")
    assert (batch["input_ids"][0] == audio_id).sum() > 2 * (batch["input_ids"][1] == audio_id).sum()
    assert torch.isfinite(model(**batch).loss)


def test_qwen2_audio_cuts_a_clip_longer_than_the_window_and_says_so(cache, caplog):
    backbone = get_backbone("tiny-qwen2-audio", window_s=1)
    model, processor = backbone.load()
    with caplog.at_level(logging.WARNING, logger="sqrl.backbones.core"):
        batch = backbone.build_inputs(processor, clips((2.5, 0.5)), PROMPTS[:2], ANSWERS[:2])
    assert "1 of 2 clips are longer than the 1-s encoder window" in caplog.text
    assert batch["input_features"].shape == (2, 128, 100)
    assert torch.isfinite(model(**batch).loss)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "audios, prompts, answers, kwargs, error",
    [
        (clips((1.0,)), ["Rate."], None, {"sampling_rate": 8000}, "16000 Hz, got 8000"),
        ([np.zeros((SR, 2), np.float32)], ["Rate."], None, {}, "mono 1-D"),
        ([np.full(SR, np.nan, np.float32)], ["Rate."], None, {}, "NaN"),
        ([np.zeros(SR, np.int16)], ["Rate."], None, {}, "float waveform"),
        ([np.zeros(100, np.float32)], ["Rate."], None, {}, "shorter than"),
        (clips((1.0, 1.0)), ["Rate."], None, {}, "one prompt"),
        (clips((1.0,)), ["Rate <sound> this."], None, {}, "special token"),
        (clips((1.0,)), ["Rate."], ["Noise: 3<|im_end|>"], {}, "special token"),
        (clips((1.0,)), ["Rate."], [[1, -5]], {}, "not a token id"),
        (clips((1.0,)), ["Rate."], [[]], {}, "empty token-id list"),
        ([], [], None, {}, "at least one clip"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_error(tiny, audios, prompts, answers, kwargs, error):
    backbone, _, processor = tiny
    with pytest.raises(ValueError, match=error):
        backbone.build_inputs(processor, audios, prompts, answers, **kwargs)


def test_vllm_data_at_the_wrong_rate_is_refused():
    with pytest.raises(ValueError, match="16000 Hz"):
        get_backbone("tiny-af3").vllm_multi_modal_data(np.zeros(SR, np.float32), 44100)


def test_the_build_marker_records_the_spec(cache):
    backbone = get_backbone("tiny-af3")
    marker = json.loads((backbone.build_dir() / BUILD_MARKER).read_text())
    assert marker["family"] == "af3" and marker["spec"]["window_s"] == 30
