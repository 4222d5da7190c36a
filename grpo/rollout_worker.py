"""Rollout workers: the interface every backend implements, and the ``hf`` backend.

A backend samples ``n`` completions per clip, takes the policy's new weights after each update and
scores given completions (the sync check). It is a plain class; the driver makes it a Ray actor.
Constructor arguments are flat and the same for every backend (``model_path``, ``backbone``,
``lora_rank``, ``lora_alpha``, ``encoder_mode``, ``dtype``, ``max_seconds``) plus the backend's
own keyword options (``rollout.options`` in the config).

Weight updates (``WeightUpdate``) carry the policy's adapter in peft's saved format (the keys of
``adapter_model.safetensors``: LoRA matrices and the ``modules_to_save`` tensors of a trained
encoder and projector) and the adapter config, so a backend can load them as a peft adapter (hf),
or as a LoRA request plus ``load_weights`` for the encoder (vLLM, next to this class).

Sampling is seeded per call by the driver (from the run seed, the step and the worker), so a step's
completions do not depend on what ran before it: a resumed run samples what the uninterrupted one did.
Special tokens other than end-of-turn (audio placeholders, ``<|im_start|>``) are never sampled: an
audio placeholder inside a completion would break the policy's forward pass. The policy's log-probs
do not include that (negligible) renormalisation, as TRL's do not include top-p/top-k.
"""
from __future__ import annotations

import importlib
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from grpo.batch import ClipRequest, Completion, RolloutBatch, completion_inputs, load_waves, per_row, readable_requests
from sqrl.backbones.config import resolve_dtype
from sqrl.logprobs import completion_logprobs, token_logprobs

log = logging.getLogger(__name__)

BACKENDS = {"hf": "grpo.rollout_worker.HFRolloutWorker", "vllm": "grpo.rollout_vllm.VLLMRolloutWorker"}
"""Backend name -> class path (imported only when chosen)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    return_logprobs: bool = False


@dataclass
class WeightUpdate:
    """The trainable tensors after an update, in peft's adapter format, and their version (the step)."""

    version: int
    tensors: dict[str, torch.Tensor]
    adapter_config: dict[str, Any]
    seconds: float = 0.0
    """Time the policy worker took to gather and copy the tensors (part of ``time/sync_worker``)."""


class RolloutWorker(ABC):
    """The rollout interface. All methods are called through Ray by the driver."""

    @abstractmethod
    def generate(self, requests: Sequence[ClipRequest], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        """``n`` completions per clip, grouped: all ``n`` of request 0, then request 1, ...

        Clips that cannot be read are reported in ``RolloutBatch.failed`` and get none."""

    @abstractmethod
    def load_weights(self, update: WeightUpdate) -> None:
        """Take the policy's trainable tensors; later calls sample from them."""

    @abstractmethod
    def logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        """Per-token log-probs (temperature 1) of given completions, teacher-forced."""

    def timed_load_weights(self, update: WeightUpdate) -> float:
        """``load_weights``; returns the worker seconds behind this sync: the policy building the update
        (``update.seconds``) plus this load. The driver calls this one and logs the slowest as ``time/sync_worker``."""
        t0 = time.perf_counter()
        self.load_weights(update)
        return update.seconds + time.perf_counter() - t0

    def version(self) -> int:
        """The version of the last weights loaded (-1: none yet)."""
        return getattr(self, "_version", -1)


def rollout_worker_class(backend: str) -> type:
    """The class of a backend name (``hf``) or dotted path (``my_pkg.rollout.MyWorker``)."""
    path = BACKENDS.get(backend, backend)
    if "." not in path:
        raise ValueError(f"unknown rollout backend {backend!r}; known: {', '.join(BACKENDS)} or a dotted class path")
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, RolloutWorker)):
        raise ValueError(f"rollout backend {backend!r} ({path}) is not a RolloutWorker subclass")
    return cls


def suppressed_token_ids(processor: Any, stop_ids: Sequence[int]) -> list[int]:
    """Special tokens a completion must never contain: every special token but the stop tokens."""
    tokenizer = processor.tokenizer
    ids = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    return sorted(ids - set(stop_ids) - {tokenizer.pad_token_id})


class HFRolloutWorker(RolloutWorker):
    """Batched ``generate`` on the merged calibration model with the policy's adapter (peft, unmerged)."""

    def __init__(self, model_path: str, backbone: str, lora_rank: int, lora_alpha: int | None, encoder_mode: str,
                 dtype: str = "auto", max_seconds: float | None = None, device: str | None = None):
        from sqrl.backbones import get_backbone

        self.backbone = get_backbone(backbone)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        base, self.processor = self.backbone.load(model_path, dtype=resolve_dtype(dtype), device=self.device)
        # The same adapter layout as the policy's, so its tensors load by name.
        self.model = self.backbone.apply_lora(base, rank=lora_rank, alpha=lora_alpha, dropout=0.0,
                                              encoder_mode=encoder_mode)
        self.model.eval().requires_grad_(False)
        gen = self.model.generation_config
        eos = gen.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        self.suppress = suppressed_token_ids(self.processor, sorted(self.stop_ids))
        self.max_seconds = max_seconds
        self._version = -1

    @torch.no_grad()
    def generate(self, requests: Sequence[ClipRequest], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        t0 = time.perf_counter()
        ok, waves, result = readable_requests(requests, self.max_seconds)
        if not ok:
            return result
        inputs = self.backbone.build_inputs(self.processor, [waves[r.audio] for r in ok], [r.prompt for r in ok])
        inputs = inputs.to(self.device).to(self.model.dtype)
        torch.manual_seed(seed)
        out = self.model.generate(
            **inputs, do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_new_tokens=sampling.max_new_tokens, num_return_sequences=n,
            suppress_tokens=self.suppress or None, pad_token_id=self.processor.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_logits=sampling.return_logprobs,
        )
        new = out.sequences[:, inputs["input_ids"].shape[1]:].cpu()
        logps = None
        if sampling.return_logprobs:
            logits = torch.stack(out.logits, dim=1).float()  # (B*n, steps, V), before any warping
            logps = token_logprobs(logits, new[:, :logits.shape[1]].to(logits.device)).cpu()
        for row, ids in enumerate(new.tolist()):
            req = ok[row // n]
            cut = next((i + 1 for i, t in enumerate(ids) if t in self.stop_ids), None)
            tokens = ids[:cut] if cut else ids
            result.completions.append(Completion(
                clip_id=req.clip_id, audio=req.audio, prompt=req.prompt, token_ids=tokens,
                text=self.backbone.decode(self.processor, [tokens])[0], truncated=cut is None,
                logprobs=None if logps is None else logps[row, :len(tokens)].tolist()))
        result.seconds = time.perf_counter() - t0
        return result

    def load_weights(self, update: WeightUpdate) -> None:
        from peft import set_peft_model_state_dict

        loaded = set_peft_model_state_dict(self.model, update.tensors)
        if loaded.unexpected_keys:
            raise ValueError(f"weight update has tensors the rollout model lacks: {loaded.unexpected_keys[:5]}")
        self._version = update.version

    @torch.no_grad()
    def logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        waves, bad = load_waves([c.audio for c in completions], self.max_seconds)
        if bad:
            raise ValueError(f"cannot read {sorted(bad)[:3]}")
        inputs, mask = completion_inputs(self.backbone, self.processor, [waves[c.audio] for c in completions],
                                         [c.prompt for c in completions], [c.token_ids for c in completions])
        inputs = inputs.to(self.device).to(self.model.dtype)
        logps, mask = completion_logprobs(self.model, inputs, mask.to(self.device))
        return per_row(logps, mask)

    def pid(self) -> int:
        import os

        return os.getpid()
