"""What travels between the GRPO roles, and the model code the policy and rollout workers share.

Audio travels as paths; each worker loads the clips it needs (``load_waves``). Completions travel
as token ids, exactly as sampled, so the policy scores the very tokens the rollout produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from sqrl.audio import SAMPLING_RATE


@dataclass(frozen=True)
class ClipRequest:
    """One clip to answer: its id (the GRPO group key), audio path and prompt."""

    clip_id: str
    audio: str
    prompt: str


@dataclass
class Completion:
    """One sampled answer. ``token_ids`` end with the end-of-turn token unless ``truncated``."""

    clip_id: str
    audio: str
    prompt: str
    token_ids: list[int]
    text: str
    truncated: bool = False
    logprobs: list[float] | None = None
    """Sampling log-probs from the rollout backend, when it returns them cheaply."""


@dataclass
class RolloutBatch:
    """A rollout worker's answer: ``n`` completions per readable clip, in request order, and the
    clips it could not read (id -> reason); those get no completions."""

    completions: list[Completion] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    """Time the worker spent on the call (logged as ``time/generate_worker``; the rest is Ray and data)."""


@dataclass
class TrainSample:
    """One completion as the policy trains on it. ``weight`` 0: only pads a worker's share (no loss)."""

    audio: str
    prompt: str
    token_ids: list[int]
    advantage: float
    weight: float = 1.0


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


def readable_requests(requests: Sequence["ClipRequest"], max_seconds: float | None = None
                      ) -> tuple[list["ClipRequest"], dict[str, np.ndarray], "RolloutBatch"]:
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


def per_row(values: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """A ``(B, K)`` tensor as one list per row, the masked positions only."""
    return [v[m.bool()].tolist() for v, m in zip(values.detach().float().cpu(), mask.cpu())]
