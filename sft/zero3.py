"""Saving a PEFT model trained under DeepSpeed ZeRO-3.

Under ZeRO-3 every rank holds a slice of each parameter, so a save gathers them first, on all ranks
at once. transformers gathers only the trainable parameters for a PEFT model
(``exclude_frozen_parameters``), but our adapter also saves the fully trained encoder and projector
(``modules_to_save``), and those hold frozen parameters too (the encoder's sinusoidal position table):
PEFT then fails with a KeyError on them. Here the kept set is the trainable parameters plus everything
inside ``modules_to_save``; the frozen base model (most of a 7B backbone) is still never gathered.
"""
from __future__ import annotations

import torch


def _kept(name: str, param: torch.nn.Parameter) -> bool:
    return param.requires_grad or ".modules_to_save." in f".{name}"


def zero3_adapter_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The adapter's full tensors on rank 0 (None on the others). Collective: every rank must call it."""
    import deepspeed

    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    state: dict[str, torch.Tensor] | None = {} if rank0 else None
    for prefix, module in engine.module.named_modules():
        prefix = f"{prefix}." if prefix else ""
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if _kept(prefix + n, p)]
        # One module at a time: only its own parameters are materialised while it is copied.
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if state is not None:
                for n, p in params:
                    state[prefix + n] = p.detach().cpu().clone()
        if state is not None and ".modules_to_save." in f".{prefix}":
            for n, buf in module.named_buffers(recurse=False):
                if buf is not None and n not in module._non_persistent_buffers_set:
                    state[prefix + n] = buf.detach().cpu().clone()
    return state


def is_zero3(trainer) -> bool:
    return bool(trainer.is_deepspeed_enabled
                and trainer.deepspeed.config.get("zero_optimization", {}).get("stage") == 3)


def zero3_aware(trainer_cls):
    """``trainer_cls`` whose ``save_model`` (checkpoints and the final save) gathers the adapter under ZeRO-3.
    Every rank must call ``save_model``; rank 0 writes."""

    class Zero3AwareTrainer(trainer_cls):
        def save_model(self, output_dir=None, _internal_call=False):
            if not is_zero3(self):
                return super().save_model(output_dir, _internal_call=_internal_call)
            state = zero3_adapter_state_dict(self.deepspeed)
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state)
            return None

    Zero3AwareTrainer.__name__ = f"Zero3Aware{trainer_cls.__name__}"
    return Zero3AwareTrainer
