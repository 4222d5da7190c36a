"""The ``hf`` rollout backend: batched transformers ``generate`` with the policy's adapter (peft, unmerged)."""
from __future__ import annotations

import os
import time
from typing import Sequence

import torch

from grpo.messages import ClipRequest, Completion, RolloutBatch, SamplingParams, WeightUpdate
from grpo.model_io import (cast_adapter, completion_inputs, completion_logprobs, load_waves, per_row, readable_requests,
                           resolve_dtype)
from grpo.rollout_worker import RolloutWorker
from sqrl.evaluate import stop_token_ids, suppressed_token_ids
from sqrl.logprobs import token_logprobs
from sqrl.runtime import resolve_device


class HFRolloutWorker(RolloutWorker):
    """Batched ``generate`` on the merged calibration model with the policy's adapter (peft, unmerged)."""

    def __init__(self, model_path: str, backbone: str, lora_rank: int, lora_alpha: int | None, encoder_mode: str,
                 dtype: str = "auto", max_seconds: float | None = None, device: str | None = None):
        from sqrl.backbones import get_backbone

        self.backbone = get_backbone(backbone)
        self.device = torch.device(resolve_device(device))
        base, self.processor = self.backbone.load(
            model_path, dtype=resolve_dtype(dtype, self.device, "model.dtype (hf rollouts)"), device=self.device)
        # The same adapter layout as the policy's, so its tensors load by name.
        self.model = self.backbone.apply_lora(base, rank=lora_rank, alpha=lora_alpha, dropout=0.0,
                                              encoder_mode=encoder_mode)
        cast_adapter(self.model, self.model.dtype)  # the policy computes its adapter in the model's dtype too
        self.model.eval().requires_grad_(False)
        self.stop_ids = set(stop_token_ids(self.model))
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
            logits = torch.stack(out.logits, dim=1)  # (B*n, steps, V), before any warping
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
        return os.getpid()
