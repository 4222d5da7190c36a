"""Build a tiny backbone offline, deterministically, into an atomically written cache directory.

The directory is an ordinary ``save_pretrained`` checkout (model, processor, tokenizer, generation
config) plus ``sqrl_build.json``, so it can be reloaded by path, served by vLLM, or used as the base of
a LoRA adapter. Its name is ``<backbone>-<hash>``, the hash covering the spec, the family, the
tokenizer corpus, the transformers version and :data:`BUILD_VERSION`, so any change rebuilds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperFeatureExtractor

from sqrl.audio import SAMPLING_RATE
from sqrl.backbones.families import Family, TinySpec, TEXT_CHAT_TEMPLATE
from sqrl.backbones.tokenizer import AUDIO_TOKENS, IM_END, PAD_TOKEN, corpus_digest, train_bpe
from sqrl.fsutil import atomic_dir

log = logging.getLogger(__name__)

# Bump when the build code changes what it writes, so stale caches are not reused.
BUILD_VERSION = 4  # 2: LM head at lm_head_std; 3: weights saved on every rank; 4: architectures
BUILD_MARKER = "sqrl_build.json"


def cache_root() -> Path:
    """``$SQRL_CACHE`` if set, else ``~/.cache/sqrl``."""
    root = os.environ.get("SQRL_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sqrl"


def build_key(name: str, family: Family, spec: TinySpec) -> str:
    """The cache key: ``<name>-<12 hex digits>`` of everything that decides the built files."""
    facts = {
        "name": name,
        "family": family.key,
        "spec": dataclasses.asdict(spec),
        "corpus": corpus_digest(),
        "transformers": transformers.__version__,
        "build_version": BUILD_VERSION,
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{digest}"


def make_tokenizer(spec: TinySpec) -> PreTrainedTokenizerFast:
    """The trained BPE wrapped for transformers: pad ``<|endoftext|>``, eos ``<|im_end|>``, ChatML."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(spec.vocab_size),
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(AUDIO_TOKENS),
        model_max_length=spec.max_position_embeddings,
    )
    tokenizer.chat_template = TEXT_CHAT_TEMPLATE
    return tokenizer


def build_tiny(family: Family, spec: TinySpec, out_dir: str | os.PathLike) -> Path:
    """Build model and processor from ``spec`` and ``save_pretrained`` both into ``out_dir``.

    Weights come from ``torch.manual_seed(spec.seed)`` inside a forked RNG, so the caller's random
    state is untouched and two builds are identical.
    """
    out = Path(out_dir)
    tokenizer = make_tokenizer(spec)
    features = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        chunk_length=spec.window_s,
        return_attention_mask=True,
    )
    processor = family.make_processor(features, tokenizer)
    config = family.make_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = family.model_cls(config)
        # A pretrained LM head has rows of norm ~1-3; Qwen2's init (std 0.02) gives 0.23, and after the
        # final RMSNorm the largest logit a hidden state can reach is ~2.6 over a 2.7k vocabulary, so no
        # answer can become likely whatever LoRA learns (the loss stalled near ln(vocab), measured).
        # LoRA leaves the head frozen, so it must start at a usable scale.
        model.lm_head.weight.data.normal_(0.0, spec.lm_head_std)
    im_end, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    # Stop at the end of the assistant turn (or at <|endoftext|>, as Qwen2 checkpoints do).
    model.generation_config = GenerationConfig(eos_token_id=[im_end, pad], pad_token_id=pad)
    _save_model(model, out)
    processor.save_pretrained(out)
    marker = {"family": family.key, "spec": dataclasses.asdict(spec), "build_version": BUILD_VERSION,
              "transformers": transformers.__version__, "parameters": model.num_parameters()}
    (out / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def _save_model(model, out: Path) -> None:
    """``save_pretrained`` without its rank check.

    Under torch.distributed (Ray Train, DeepSpeed) transformers writes weights only on global rank 0,
    but every node builds its own cache; another rank's build would then lack its weights.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]  # vLLM picks its model class from this
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def ensure_tiny(name: str, family: Family, spec: TinySpec, root: str | os.PathLike | None = None) -> Path:
    """Return the cache directory of this tiny build, building it first if it is missing."""
    root = Path(root) if root is not None else cache_root()
    final = root / "backbones" / build_key(name, family, spec)
    return ensure_built(final, lambda tmp: build_tiny(family, spec, tmp), name)


def ensure_built(final: Path, build, name: str) -> Path:
    """Return ``final``, first running ``build(tmp_dir)`` when it holds no finished build.

    The build goes to a temporary directory beside the target and is renamed into place, so a
    reader never sees half a build; when two processes build at once, the first rename wins and the
    other discards its copy.
    """
    if (final / BUILD_MARKER).is_file():
        return final
    if final.exists():
        raise RuntimeError(f"{final} exists but has no {BUILD_MARKER}: not a finished sqrl build; remove it")
    with atomic_dir(final, finished=lambda p: (p / BUILD_MARKER).is_file()) as tmp:
        log.info("building backbone %s into %s", name, final)
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache is shared with later readers
    return final
