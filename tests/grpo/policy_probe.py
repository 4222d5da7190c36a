"""A policy worker with read-only probes for the ZeRO and bf16 tests (imported by Ray workers by module path).

Nothing here changes what the worker computes: the probes read the gradients DeepSpeed holds at the
moment of ``engine.step`` and the full (gathered) parameters, in the model's dtype or as the fp32
master copy in the optimizer.
"""
from __future__ import annotations

import torch

from grpo.policy_worker import PolicyWorker


class ProbedPolicyWorker(PolicyWorker):
    def capture_gradients(self) -> None:
        """From now on, keep the full averaged gradient of every trainable tensor as ``step`` sees it
        (before clipping). A collective under ZeRO-3: every rank steps, so every rank gathers."""
        from deepspeed.utils import safe_get_full_grad

        step = self.engine.step

        def probed_step(*args, **kwargs):
            self.grads = {n: safe_get_full_grad(p).detach().float().clone()
                          for n, p in self.module.named_parameters() if p.requires_grad}
            return step(*args, **kwargs)

        self.engine.step = probed_step

    def captured_gradients(self) -> dict[str, torch.Tensor]:
        return self.grads

    def full_parameters(self, master: bool = False) -> dict[str, torch.Tensor]:
        """Every trainable tensor in full: as the model holds it, or (``master``) DeepSpeed's fp32 copy."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        named = [(n, p) for n, p in self.module.named_parameters() if n in self._trainable]
        if master:
            return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in named}
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.args["zero_stage"] == 3):
            return {n: p.detach().clone() for n, p in named}

    def local_sizes(self) -> tuple[int, int]:
        """(elements this rank holds, elements of the whole model)."""
        return (sum(p.numel() for p in self.module.parameters()),
                sum(getattr(p, "ds_numel", p.numel()) for p in self.module.parameters()))

    def trainable_names(self) -> list[str]:
        """The parameters marked trainable now (compare with ``_trainable``, the set the optimizer holds)."""
        return sorted(n for n, p in self.module.named_parameters() if p.requires_grad)

    def dtypes(self) -> dict[str, list[str]]:
        """Dtypes of the trainable parameters, of all parameters, and of the floating buffers."""
        return {"trainable": sorted({str(p.dtype) for n, p in self.module.named_parameters() if n in self._trainable}),
                "parameters": sorted({str(p.dtype) for p in self.module.parameters()}),
                "buffers": sorted({str(b.dtype) for b in self.module.buffers() if b.is_floating_point()})}
