"""What travels between the GRPO roles: every role imports its messages from here, and from no other role.

driver -> rollout: ``ClipRequest``s and ``SamplingParams``; rollout -> driver: a ``RolloutBatch`` of
``Completion``s; driver -> reward: the completions' texts with their clips; reward -> driver:
``TimedScores``; driver -> policy: ``TrainSample``s; policy -> rollout: a ``WeightUpdate``.

Audio travels as paths; each worker loads the clips it needs (``grpo.model_io.load_waves``). Completions
travel as token ids, exactly as sampled, so the policy scores the very tokens the rollout produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rewards import ScoredBatch

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ClipRequest:
    """One clip to answer: its id (the GRPO group key), audio path and prompt."""

    clip_id: str
    audio: str
    prompt: str


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    return_logprobs: bool = False


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
class TimedScores(ScoredBatch):
    """A reward worker's ``ScoredBatch`` and the seconds its ``score`` call worked (logged as
    ``time/score_worker``; the rest of ``time/score`` is Ray and serialisation). The first call includes
    loading the reward models."""

    seconds: float = 0.0


@dataclass
class TrainSample:
    """One completion as the policy trains on it. ``weight`` 0: only pads a worker's share (no loss)."""

    audio: str
    prompt: str
    token_ids: list[int]
    advantage: float
    weight: float = 1.0
    token_advantages: list[float] | None = None
    """One advantage per token of ``token_ids`` (``algorithm.credit: scores``); None: ``advantage`` on every token."""


@dataclass
class WeightUpdate:
    """The trainable tensors after an update, in peft's adapter format, and their version (the step)."""

    version: int
    tensors: dict[str, torch.Tensor]
    adapter_config: dict[str, Any]
    seconds: float = 0.0
    """Time the policy worker took to gather and copy the tensors (part of ``time/sync_worker``)."""
