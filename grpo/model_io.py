"""The model code the policy, rollout and reward workers share: clips loaded from their paths, and the
teacher-forced log-probs of sampled completions (what the policy trains on and the sync check compares).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from grpo.messages import ClipRequest, RolloutBatch
from sqrl.audio import SAMPLING_RATE
from sqrl.backbones.config import resolve_dtype
from sqrl.logprobs import completion_logprobs

__all__ = ["SAMPLING_RATE", "cast_adapter", "completion_inputs", "completion_logprobs", "load_waves", "per_row",
           "readable_requests", "resolve_dtype"]


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


def cast_adapter(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Bring the adapter's parameters to the model's dtype.

    peft keeps LoRA matrices in fp32 beside a bf16/fp16 base (``autocast_adapter_dtype``). DeepSpeed
    wants one dtype for what it trains: ZeRO-2 casts the whole module to bf16 itself, ZeRO-3 refuses
    mixed dtypes; the fp32 copy it updates (the master weights) lives in its optimizer either way. The
    rollout workers do the same, so the policy and the engine compute the adapter in one dtype.
    Parameters ZeRO-3 has already partitioned (``ds_id``) were loaded in ``dtype``.
    """
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype and not hasattr(param, "ds_id"):
            param.data = param.data.to(dtype)


def per_row(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """A ``(B, K)`` tensor as one list per row, the masked positions only."""
    return [v[m.bool()].tolist() for v, m in zip(values.detach().float().cpu(), mask.cpu())]
