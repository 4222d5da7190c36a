"""The model code the policy, rollout and reward workers share: clips loaded from their paths, and the
teacher-forced log-probs of sampled completions (what the policy trains on and the sync check compares).
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np
import torch

from grpo.algorithm import token_logprobs
from grpo.messages import ClipRequest, RolloutBatch

SAMPLING_RATE = 16_000


def resolve_dtype(name: str) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on a CPU; else the named torch dtype."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_waves(paths: Sequence[str], max_seconds: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each distinct path loaded once at 16 kHz: (waves by path, error message by path)."""
    from sqrl.audio import AudioError, load_audio

    waves, failed = {}, {}
    for path in dict.fromkeys(paths):
        try:
            waves[path] = load_audio(path, sampling_rate=SAMPLING_RATE, max_seconds=max_seconds)
        except AudioError as exc:
            failed[path] = str(exc)
    return waves, failed


def readable_requests(requests: Sequence[ClipRequest], max_seconds: float | None = None
                      ) -> tuple[list[ClipRequest], dict[str, np.ndarray], RolloutBatch]:
    """The rollout backends' common start: (readable requests, waves by path, a batch naming the unreadable clips)."""
    waves, bad = load_waves([r.audio for r in requests], max_seconds)
    ok = [r for r in requests if r.audio in waves]
    return ok, waves, RolloutBatch(failed={r.clip_id: bad[r.audio] for r in requests if r.audio in bad})


def completion_inputs(backbone: Any, processor: Any, waves: Sequence[np.ndarray], prompts: Sequence[str],
                      token_ids: Sequence[Sequence[int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-padded ``prompt + completion`` rows with the audio features: (model inputs, completion mask)."""
    batch = backbone.build_inputs(processor, list(waves), list(prompts), answers=[list(t) for t in token_ids],
                                  sampling_rate=SAMPLING_RATE)
    mask = batch.pop("completion_mask")
    batch.pop("labels")
    return batch, mask


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = getattr(model, "module", model)  # a DeepSpeed engine
    if hasattr(inner, "get_base_model"):  # a PeftModel
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def completion_logprobs(model: Any, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens: ``(B, K)`` and the matching ``(B, K)`` mask.

    Logits at position ``t`` predict token ``t + 1`` (see ``sqrl.backbones.core``). Only the positions
    from the earliest completion start on are kept (``logits_to_keep`` where the model supports it),
    so a long audio-and-rubric prompt does not cost a vocabulary-wide softmax per token.
    """
    input_ids = inputs["input_ids"]
    width = input_ids.shape[1]
    first = int(mask.float().argmax(dim=1).min())  # every row has >= 1 completion token
    keep = width - first + 1
    extra = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(**inputs, **extra).logits[:, -keep:-1]
    return token_logprobs(logits, input_ids[:, first:]), mask[:, first:]


def per_row(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """A ``(B, K)`` tensor as one list per row, the masked positions only."""
    return [v[m.bool()].tolist() for v, m in zip(values.detach().float().cpu(), mask.cpu())]
