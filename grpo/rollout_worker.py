"""Rollout workers: the interface every backend implements (``hf``: rollout_hf.py, ``vllm``: rollout_vllm.py).

A backend samples ``n`` completions per clip, takes the policy's new weights after each update and
scores given completions (the sync check). It is a plain class; ``build_rollout_workers`` makes it a
Ray actor from the config. Constructor arguments are flat and the same for every backend (``model_path``, ``backbone``,
``lora_rank``, ``lora_alpha``, ``encoder_mode``, ``dtype``, ``max_seconds``) plus the backend's
own keyword options (``rollout.options`` in the config).

Weight updates (``WeightUpdate``) carry the policy's adapter in peft's saved format (the keys of
``adapter_model.safetensors``: LoRA matrices and the ``modules_to_save`` tensors of a trained
encoder and projector) and the adapter config, so a backend can load them as a peft adapter (hf),
or as a LoRA request plus ``load_weights`` for the encoder (vLLM).

Sampling is seeded per call by the driver (``sampling_seed``: the run seed, the step and the worker), so a step's
completions do not depend on what ran before it: a resumed run samples what the uninterrupted one did.
Special tokens other than end-of-turn (audio placeholders, ``<|im_start|>``) are never sampled: an
audio placeholder inside a completion would break the policy's forward pass. The policy's log-probs
do not include that (negligible) renormalisation, as TRL's do not include top-p/top-k.
"""
from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from grpo.messages import ClipRequest, Completion, RolloutBatch, SamplingParams, WeightUpdate

if TYPE_CHECKING:
    from grpo.config import GRPOConfig

BACKENDS = {"hf": "grpo.rollout_hf.HFRolloutWorker", "vllm": "grpo.rollout_vllm.VLLMRolloutWorker"}
"""Backend name -> class path (imported only when chosen)."""


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


def sampling_seed(seed: int, step: int, attempt: int, worker: int) -> int:
    """The rollout seed of one call: a function of the run seed and the call, never of history."""
    return int(np.random.SeedSequence([seed, step, attempt, worker]).generate_state(1)[0])


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


def build_sampling(cfg: GRPOConfig) -> SamplingParams:
    """The sampling settings every ``generate`` call gets, from ``rollout:``."""
    r = cfg.rollout
    return SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens, r.return_logprobs)


def build_rollout_workers(cfg: GRPOConfig, init: str, backbone: str, place: Callable[[str, int], dict],
                          runtime_env: dict[str, Any]) -> list[Any]:
    """``rollout.num_workers`` Ray actors of the configured backend; ``place(role, index)`` gives each its
    placement options."""
    import ray

    cls = ray.remote(rollout_worker_class(cfg.rollout.backend))
    return [cls.options(runtime_env=runtime_env, **place("rollout", i)).remote(
        init, backbone, cfg.lora.rank, cfg.lora.alpha, cfg.lora.encoder_mode, dtype=cfg.model.dtype,
        max_seconds=cfg.data.max_seconds, **cfg.rollout.options) for i in range(cfg.rollout.num_workers)]
