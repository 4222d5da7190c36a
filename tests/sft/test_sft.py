import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sft.config import SFTStageConfig
from sft.data import AudioCollator, load_examples
from sqrl.models import merge_adapter
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


def test_the_collator_skips_and_counts_an_unreadable_clip(tiny_manifest, tmp_path, sqrl_cache, caplog):
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    _, processor = backbone.load()
    examples = load_examples(tiny_manifest, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")[:2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    examples.append({**examples[0], "id": "broken", "audio": str(broken)})
    short = tmp_path / "short.wav"  # readable, but shorter than the audio encoder takes
    sf.write(short, np.full(800, 0.1, np.float32), 16_000)
    examples.append({**examples[0], "id": "short", "audio": str(short)})
    collator = AudioCollator(backbone.name, processor, options={"window_s": 5})
    with caplog.at_level(logging.WARNING, logger="sft.data"):
        batch = collator(examples)
    assert batch["input_ids"].shape[0] == 2
    assert collator.skipped == {"audio unreadable": 1, "too short": 1}
    assert f"{short}: too short for the model" in caplog.text
    with pytest.raises(RuntimeError, match="every clip"):
        collator(examples[-2:])


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


def test_label_balanced_calibration_draws_other_clips_and_resumes_exactly(tiny_manifest, calibrated, tmp_path):
    # data.balance: labels changes which clips the steps see (same seed and start as the calibrated run) ...
    overrides = {"train.max_steps": 8, "train.save_steps": 6, "data.balance": "labels"}
    whole = tmp_path / "whole"
    run_sft(_cfg(tiny_manifest, **overrides), whole)
    balanced = dict(_losses(whole))
    assert balanced[1] != pytest.approx(dict(_losses(calibrated))[1], rel=1e-4)
    # ... and its order is a function of (seed, epoch): stopped after step 6, mid-way through the second
    # epoch of 4 steps, a resumed run draws the same clips and reproduces the remaining losses
    cut = tmp_path / "cut"
    run_sft(_cfg(tiny_manifest, **overrides), cut)
    import shutil

    shutil.rmtree(cut / "checkpoints" / "checkpoint-8")
    (cut / "metrics.jsonl").unlink()
    run_sft(_cfg(tiny_manifest, **overrides), cut, resume=True)
    resumed = dict(_losses(cut))
    assert min(resumed) == 7
    for step in (7, 8):
        assert resumed[step] == pytest.approx(balanced[step], rel=1e-4)


def test_each_example_carries_the_labels_it_teaches(tiny_manifest):
    from sft.data import balance_weights, example_labels
    from sqrl.dimensions import DIMENSIONS
    from sqrl.schema import read_manifest

    records = read_manifest(tiny_manifest)
    rubric = Rubric("configs/rubrics/compact.yaml")
    per_dim = example_labels(records, rubric, "per_dimension")
    assert len(per_dim) == len(load_examples(tiny_manifest, rubric, "per_dimension")) == 16 * len(DIMENSIONS)
    assert per_dim[:len(DIMENSIONS)] == [{d: records[0].scores[d]} for d in DIMENSIONS]
    whole = example_labels(records, rubric, "all_dimensions")
    assert whole == [r.scores for r in records]
    w = balance_weights(records, rubric, "per_dimension")
    assert w.shape == (16 * len(DIMENSIONS),) and w.sum() == pytest.approx(1.0)


def test_every_checkpoint_carries_a_manifest_of_its_files(calibrated):
    from sqrl.integrity import MANIFEST, verify_manifest

    ckpts = sorted((calibrated / "checkpoints").glob("checkpoint-*"))
    assert ckpts
    for ckpt in ckpts:
        listed = json.loads((ckpt / MANIFEST).read_text())["files"]
        assert any(name.endswith("mp_rank_00_model_states.pt") for name in listed)  # DeepSpeed's pickled state
        assert "adapter_model.safetensors" in listed and "trainer_state.json" in listed
        assert verify_manifest(ckpt) == len(listed)


@pytest.mark.parametrize("tamper", ["flip one byte", "plant a pickle", "remove the manifest"])
def test_resume_refuses_a_tampered_checkpoint_before_loading_it(tiny_manifest, calibrated, tmp_path, tamper,
                                                                plant_pickle):
    import shutil

    from sqrl.integrity import MANIFEST, IntegrityError

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    ckpt = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (states,) = ckpt.glob("global_step*/mp_rank_00_model_states.pt")
    marker = tmp_path / "ran"
    if tamper == "flip one byte":
        target = ckpt / "adapter_model.safetensors"
        data = bytearray(target.read_bytes())
        data[-1] ^= 1
        target.write_bytes(bytes(data))
    elif tamper == "plant a pickle":
        target = states
        plant_pickle(states, marker)
    else:
        target = ckpt / MANIFEST
        target.unlink()
    with pytest.raises(IntegrityError, match=str(target)):
        run_sft(_cfg(tiny_manifest, **{"train.max_steps": 14, "train.save_steps": 6}), run, resume=True)
    assert not marker.exists()


def test_a_new_run_onto_an_existing_one_is_refused_and_overwrite_starts_clean(tiny_manifest, calibrated, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)  # checkpoint-6 and checkpoint-12, 12 logged steps
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        run_sft(_cfg(tiny_manifest, **{"train.max_steps": 2, "train.save_steps": 1}), run)
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    run_sft(_cfg(tiny_manifest, **{"train.max_steps": 2, "train.save_steps": 1}), run, overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert [step for step, _ in _losses(run)] == [1, 2]


def test_resume_keeps_one_run_in_the_log(tiny_manifest, calibrated, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    shutil.rmtree(run / "checkpoints" / "checkpoint-12")  # killed after logging step 12, before its checkpoint
    run_sft(_cfg(tiny_manifest, **{"train.max_steps": 12, "train.save_steps": 6}), run, resume=True)
    assert [step for step, _ in _losses(run)] == list(range(1, 13))  # steps 7-12 once, from the resumed run


def test_the_pipeline_continues_a_stage_interrupted_before_its_first_checkpoint(tiny_manifest, tmp_path):
    from recipes.stages import SFTStep, run_steps

    out = tmp_path / "calibration"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    run_steps([SFTStep("calibration", out, kind="calibration", config=str(CONFIG),
                       overrides=tiny_overrides(tiny_manifest, **{"train.max_steps": 2}))])
    losses = _losses(out)
    assert [step for step, _ in losses] == [1, 2] and 9.0 not in [loss for _, loss in losses]


def test_merge_keeps_the_logits(calibrated, tmp_path):
    out = tmp_path / "merged"
    check = merge_adapter(calibrated, out)
    assert check["max_abs_logit_diff"] < 1e-4 < check["tolerance"] < 2e-4  # tiny logits stay near 1
    meta = read_meta(out)
    assert meta.kind == "full" and meta.options == {"window_s": 5}  # the window travels with the model
    model, _, _ = load_model(out)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_the_pipelines_merge_step_records_its_time(calibrated, tmp_path):
    from recipes.stages import MergeStep, run_steps, stage_seconds

    step = MergeStep("merge", tmp_path / "merged", adapter=calibrated)
    run_steps([step])
    assert step.done() and stage_seconds([step])["merge"] > 0


def test_an_adapter_merged_in_memory_keeps_the_logits_and_the_greedy_answers(calibrated, tiny_manifest):
    from sqrl.evaluate import Generator
    from sqrl.models import probe_logits

    adapter, processor, backbone = load_model(calibrated)
    merged, _, _ = load_model(calibrated, merge=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    diff = (probe_logits(adapter, processor, backbone) - probe_logits(merged, processor, backbone)).abs().max()
    assert float(diff) < 1e-4
    rows = [json.loads(line) for line in Path(tiny_manifest).read_text().splitlines()[:4]]
    waves = [sf.read(Path(tiny_manifest).parent / r["audio"], dtype="float32")[0] for r in rows]
    prompts = ["Rate the noise of this recording from 1 to 5."] * len(waves)
    answers = [Generator(m, processor, backbone, max_new_tokens=24)(waves, prompts) for m in (adapter, merged)]
    assert answers[0] == answers[1] and any(a.strip() for a in answers[0])
    with pytest.raises(ValueError, match="merge is for inference"):
        load_model(calibrated, merge=True, trainable=True)


def test_warmup_continues_the_calibration_adapter(tiny_manifest, calibrated, tmp_path, caplog):
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "data.prompting": "long_form",
                                 "stage": "warmup", "train.max_steps": 2})
    with caplog.at_level(logging.WARNING):
        out = run_sft(cfg, tmp_path / "warm")
    meta = read_meta(out)
    assert meta.stage == "warmup" and meta.options == {"window_s": 5}
    assert "answer_order" not in caplog.text  # the same rubric as the calibration: nothing to warn about
    # a warm-up asked for another answer format than its start model writes says so, and trains it
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "data.prompting": "long_form", "stage": "warmup",
                                 "train.max_steps": 1, "data.rubric": "configs/rubrics/compact_voice.yaml"})
    with caplog.at_level(logging.WARNING):
        run_sft(cfg, tmp_path / "warm_voice")
    assert "voice_line=True" in caplog.text and "will teach its own format" in caplog.text


def _tower(model, kind: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "audio_tower" in n and kind in n}


def test_a_warmup_with_the_encoder_frozen_keeps_the_calibrated_tower_and_trains_the_rest(tiny_manifest, calibrated,
                                                                                           tmp_path):
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "data.prompting": "long_form", "stage": "warmup",
                                 "train.max_steps": 2, "lora.encoder_mode": "frozen"})
    out = run_sft(cfg, tmp_path / "warm_frozen")
    before, after = load_model(calibrated)[0], load_model(out)[0]
    tower0, tower1 = _tower(before, "modules_to_save"), _tower(after, "modules_to_save")
    assert tower0 and tower0.keys() == tower1.keys()
    assert all(torch.equal(tower0[n], tower1[n]) for n in tower0)  # the calibrated tower, bit for bit
    trained = {n: p.detach() for n, p in before.named_parameters() if "lora_B" in n or "multi_modal_projector" in n
               and "modules_to_save" in n}
    now = dict(after.named_parameters())
    assert any(not torch.equal(trained[n], now[n]) for n in trained if "lora_B" in n)  # the LM's adapter trained
    assert any(not torch.equal(trained[n], now[n]) for n in trained if "projector" in n)  # so did the projector
    # the same warm-up with the inherited mode trains the tower (the test above could not pass by accident)
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "data.prompting": "long_form", "stage": "warmup",
                                 "train.max_steps": 2})
    moved = _tower(load_model(run_sft(cfg, tmp_path / "warm"))[0], "modules_to_save")
    assert any(not torch.equal(tower0[n], moved[n]) for n in tower0)


def test_the_frozen_tower_copy_a_continued_adapter_saves_stays_fp32_under_bf16_autocast(tiny_manifest, calibrated):
    """Under ``train.bf16_autocast`` (the small configs) frozen linear weights are stored in bf16; the frozen tower
    copy that the adapter saves back must not be among them (a small warm-up saved 44 tower tensors rounded)."""
    from sft.train import build_model, frozen_linears_to_bf16

    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "stage": "warmup", "lora.encoder_mode": "frozen"})
    model = build_model(cfg)[0]
    assert frozen_linears_to_bf16(model) > 0
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    copy = [n for n in dtypes if "audio_tower" in n and ".modules_to_save." in n]
    assert copy and {dtypes[n] for n in copy} == {torch.float32}
    assert all(not dtypes[n].is_floating_point or dtypes[n] == torch.float32 for n in dtypes if "lora_" in n)
    frozen_base = [n for n in dtypes if "audio_tower.original_module" in n and n.endswith("fc1.weight")]
    assert frozen_base and {dtypes[n] for n in frozen_base} == {torch.bfloat16}  # what the cast is for


def test_a_continued_adapter_refuses_an_encoder_mode_it_does_not_hold(tiny_manifest, calibrated, tmp_path):
    cfg = _cfg(tiny_manifest, **{"model.init": str(calibrated), "stage": "warmup", "train.max_steps": 1,
                                 "lora.encoder_mode": "lora"})
    with pytest.raises(ValueError, match="trained with encoder_mode=trainable; continue it with trainable or frozen"):
        run_sft(cfg, tmp_path / "warm_lora")


def test_sft_from_a_merged_model_puts_a_new_adapter_over_it(tiny_manifest, calibrated, tmp_path):
    merged = tmp_path / "merged"
    merge_adapter(calibrated, merged)
    cfg = _cfg(tiny_manifest, **{"model.init": str(merged), "data.prompting": "long_form", "stage": "warmup",
                                 "train.max_steps": 2, "lora.encoder_mode": "frozen"})
    out = run_sft(cfg, tmp_path / "warm")
    meta = read_meta(out)
    assert (meta.kind, meta.base) == ("adapter", str(merged.resolve()))
    model, _, backbone = load_model(out)
    assert backbone.encoder_mode_of(model) == "frozen"
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()


def test_bf16_autocast_needs_deepspeed_off_and_keeps_fp32_weights():
    from sft.config import TrainConfig

    with pytest.raises(ValueError, match="bf16_autocast needs train.deepspeed.enabled: false"):
        TrainConfig(bf16_autocast=True)
    cfg = load_config(SFTStageConfig, Path(__file__).parents[2] / "configs/small/calibration.yaml")
    assert cfg.train.bf16_autocast and not cfg.train.deepspeed.enabled and cfg.model.dtype == "auto"


@pytest.mark.parametrize("native", ["0", "1"])
def test_sft_drops_bf16_autocast_where_bf16_is_slow(monkeypatch, caplog, native):
    from sft.train import mixed_precision
    from sqrl.runtime import CPU_BF16_ENV

    monkeypatch.setenv(CPU_BF16_ENV, native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small = load_config(SFTStageConfig, Path(__file__).parents[2] / "configs/small/calibration.yaml")   # bf16_autocast: true
    tiny = load_config(SFTStageConfig, Path(__file__).parents[2] / "configs/tiny/calibration.yaml")     # fp32, no autocast
    with caplog.at_level(logging.WARNING, logger="sqrl.runtime"):
        assert mixed_precision(small) is (native == "1")
        assert mixed_precision(tiny) is False
    assert ("train.bf16_autocast: bfloat16 asked for" in caplog.text) is (native == "0")


def test_example_lengths_count_audio_tokens_from_the_header_and_text_tokens(tmp_path, sqrl_cache):
    from sft.data import AUDIO_TOKENS_PER_SECOND, example_lengths

    tokenizer = get_backbone("tiny-qwen2-audio", window_s=5).load()[1].tokenizer
    for name, seconds in (("one", 1.0), ("three", 3.0)):
        sf.write(tmp_path / f"{name}.wav", np.zeros(int(16_000 * seconds), np.float32), 16_000)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    examples = [{"audio": str(tmp_path / f"{n}.wav"), "prompt": "Rate the clip.", "target": t}
                for n, t in (("one", "Noise: 4/5"), ("three", "Noise: 2/5 with a long hiss"), ("bad", "x"))]
    text = [len(tokenizer(e["prompt"] + e["target"], add_special_tokens=False)["input_ids"]) for e in examples]
    assert example_lengths(examples, tokenizer, window_s=5) == [25 + text[0], 75 + text[1], text[2]]
    assert AUDIO_TOKENS_PER_SECOND == 25
    assert example_lengths(examples, tokenizer, window_s=2)[1] == 50 + text[1]  # capped at the encoder window


def test_group_by_length_trains_and_refuses_label_balancing(tiny_manifest, tmp_path, caplog):
    with pytest.raises(ValueError, match="group_by_length"):
        _cfg(tiny_manifest, **{"train.group_by_length": True, "data.balance": "labels"})
    with caplog.at_level("INFO", logger="sft.train"):
        out = run_sft(_cfg(tiny_manifest, **{"train.group_by_length": True, "train.max_steps": 2}), tmp_path / "g")
    assert "batches of similar length in random order" in caplog.text  # sqrl's sampler, not HF's
    assert [s for s, _ in _losses(out)] == [1, 2]
    assert (out / "plots" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # loss per step, drawn


def test_group_by_length_uses_sqrls_sampler_not_hfs():
    """HF's length-grouped sampler trains each mega-batch longest first (a 50-step sweep that broke the small
    calibration); the stage swaps in sqrl's, whose batches come in random order."""
    from sft.train import length_grouped
    from sqrl.data.length_groups import LengthGroupedSampler, length_grouped_order

    class Trainer:
        train_dataset = list(range(12))

    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0, 11, 10]
    trainer = length_grouped(Trainer, lengths, batch_size=2, seed=4)()
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert list(sampler) == length_grouped_order(lengths, 2, seed=4, epoch=0).tolist()
    with pytest.raises(ValueError, match="group_by_length: 12 entries for 3 examples"):
        trainer._get_train_sampler([0, 1, 2])


def test_attn_implementation_reaches_encoder_and_lm_and_keeps_the_loss(tiny_manifest, calibrated, sqrl_cache):
    from sft.train import build_model

    examples = load_examples(tiny_manifest, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")[:3]
    losses = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)  # the same random LoRA init for both
        model, processor, backbone, _ = build_model(_cfg(tiny_manifest, **{"model.attn_implementation": impl}))
        inner = model.get_base_model()
        assert {inner.config.text_config._attn_implementation, inner.config.audio_config._attn_implementation} == {impl}
        batch = AudioCollator(backbone.name, processor, options={"window_s": 5})(examples)
        model.eval()  # no LoRA dropout: the two kernels alone differ
        with torch.no_grad():
            losses[impl] = float(model(**batch).loss)
    assert losses["eager"] == pytest.approx(losses["sdpa"], abs=1e-5)
    # a run directory (the warm-up's model.init) takes it too
    adapter, _, _ = load_model(calibrated, attn_implementation="eager")
    assert adapter.get_base_model().config.text_config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="model.attn_implementation must be one of"):
        _cfg(tiny_manifest, **{"model.attn_implementation": "flash"})


@pytest.mark.parametrize("encoder_mode", ["trainable", "frozen"])
def test_frozen_linears_in_bf16_give_the_same_step_under_autocast(tiny_manifest, sqrl_cache, encoder_mode):
    from sft.train import build_model, frozen_linears_to_bf16

    examples = load_examples(tiny_manifest, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")[:3]
    runs = []
    for cast in (False, True):
        torch.manual_seed(0)
        model, processor, backbone, _ = build_model(_cfg(tiny_manifest, **{"lora.encoder_mode": encoder_mode,
                                                                           "lora.dropout": 0.0}))
        trained = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
        if cast:
            assert frozen_linears_to_bf16(model) > 0
            assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
            assert model.get_output_embeddings().weight.dtype == torch.float32
        batch = AudioCollator(backbone.name, processor, options={"window_s": 5})(examples)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        runs.append((float(loss), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, trained))
    (loss0, grads0, init0), (loss1, grads1, init1) = runs
    assert all(torch.equal(init0[n], init1[n]) for n in init0)  # the same start
    assert loss1 == loss0
    assert grads0.keys() == grads1.keys()
    assert all(torch.equal(grads0[n], grads1[n]) for n in grads0)
