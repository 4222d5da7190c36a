"""Teacher-forced log-probs: what the model gives each token of a completion it is shown.

GRPO trains on them (policy, reference and old policy), the hf rollout reads sampling log-probs
with the same function, and the sync check compares rollout and policy through it. The batch
layout is ``Backbone.build_inputs``'s: logits at position ``t`` predict token ``t + 1``.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """``log softmax(logits)[target]`` per position, in fp32, a few rows at a time (a 150k-word
    vocabulary over a whole batch would not fit twice in memory).

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    >>> [round(p, 3) for p in token_logprobs(logits, torch.tensor([[1, 0]])).exp()[0].tolist()]
    [0.5, 0.881]
    """
    out = []
    for lg, tg in zip(logits.split(chunk), targets.split(chunk)):
        lg = lg.float()
        picked = lg.gather(-1, tg.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = getattr(model, "module", model)  # a DeepSpeed engine
    if hasattr(inner, "get_base_model"):  # a PeftModel
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _output_head(model: Any) -> Any | None:
    """The LM head module of ``model`` (through a DeepSpeed engine and PEFT), or None."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Module) else None


@contextlib.contextmanager
def _head_keeps_last(model: Any, keep: int):
    """Within the block, the LM head of ``model`` projects only the last ``keep`` positions: what
    ``logits_to_keep`` does, for a model whose forward lacks it (transformers' Qwen2-Audio). A pre-hook on
    the head slices its input, so the model's own forward (PEFT, a DeepSpeed engine) runs unchanged."""
    head = _output_head(model)
    if head is None:
        yield False
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][:, -keep:], *args[1:]))
    try:
        yield True
    finally:
        handle.remove()


def completion_logprobs(model: Any, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens: ``(B, K)`` and the matching ``(B, K)`` mask.

    ``inputs`` and ``mask`` are a training batch of ``Backbone.build_inputs`` (``mask``: its
    ``completion_mask``). Only the positions from the earliest completion start on go through the LM
    head (``logits_to_keep`` where the model supports it, else a hook that slices the head's input), so a
    long audio-and-rubric prompt does not cost a vocabulary-wide projection and softmax per token.
    """
    input_ids = inputs["input_ids"]
    width = input_ids.shape[1]
    first = int(mask.float().argmax(dim=1).min())  # every row has >= 1 completion token
    keep = width - first + 1
    logits = last_logits(model, inputs, keep)[:, :-1]
    return token_logprobs(logits, input_ids[:, first:]), mask[:, first:]


def last_logits(model: Any, inputs: dict[str, Any], keep: int) -> torch.Tensor:
    """``model(**inputs).logits[:, -keep:]``, with only those ``keep`` positions through the LM head
    (``logits_to_keep`` where the model's forward has it, else a pre-hook that slices the head's input).
    Used by ``completion_logprobs`` and by the SFT stage's ordinal loss (sft/ordinal.py)."""
    if _accepts_logits_to_keep(model):
        return model(**inputs, logits_to_keep=keep).logits[:, -keep:]
    with _head_keeps_last(model, keep):
        return model(**inputs).logits[:, -keep:]
