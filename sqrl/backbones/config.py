"""What a stage's config says about its model: precision, LoRA adapter, how the audio encoder trains.

The SFT and GRPO configs both use these; ``Backbone.load`` takes the resolved dtype and
``Backbone.apply_lora`` the LoRA fields. Importing this module loads no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqrl.config import bounded, check_ranges

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``model.dtype`` values; ``auto`` is bf16 on a GPU, fp32 on a CPU (``resolve_dtype``)."""
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
"""``model.attn_implementation`` values (transformers' names); None keeps transformers' default (``sdpa``).
On a CPU ``eager`` trains the small backbone's short sequences faster than SDPA's flash kernel, whose
backward dominated a calibration step's attention time (docs/small.md, "Three more")."""
ENCODER_MODES = ("trainable", "frozen", "lora")
"""``lora.encoder_mode`` values, as ``Backbone.apply_lora`` applies them."""


def check_dtype(name: str, where: str = "model.dtype") -> None:
    """A ``ValueError`` naming ``where`` unless ``name`` is one of ``DTYPES``."""
    if name not in DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(DTYPES)}, not {name!r}")


def check_attn_implementation(name: str | None, where: str = "model.attn_implementation") -> None:
    """A ``ValueError`` naming ``where`` unless ``name`` is None or one of ``ATTN_IMPLEMENTATIONS``."""
    if name is not None and name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{where} must be one of {', '.join(ATTN_IMPLEMENTATIONS)} (or unset), not {name!r}")


def resolve_dtype(name: str, device: Any = None, what: str = "model.dtype") -> Any:
    """The torch dtype of a ``DTYPES`` name: ``auto`` is bf16 on a GPU, fp32 on a CPU. Given the ``device``
    it will compute on, bf16 on a CPU without native bf16 matmuls becomes fp32, with a warning naming
    ``what`` (``sqrl.runtime.compute_dtype``).

    >>> str(resolve_dtype("float16"))
    'torch.float16'
    """
    import torch

    check_dtype(name, "dtype")
    if name == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    else:
        dtype = getattr(torch, name)
    if device is None:
        return dtype
    from sqrl.runtime import compute_dtype

    return compute_dtype(dtype, device, what)


@dataclass
class LoraConfig:
    """The ``lora:`` section of a stage: the adapter trained on the LLM, and what happens to the encoder."""

    rank: int = bounded(64, ge=1)
    """LoRA rank on every linear layer of the LLM (paper: 64)."""
    alpha: int | None = bounded(None, ge=1)
    """LoRA alpha; None: equal to ``rank`` (scaling 1)."""
    dropout: float = bounded(0.05, ge=0, lt=1)
    encoder_mode: str = "trainable"
    """trainable: audio tower and projector trained in full (the paper's calibration); frozen: tower
    frozen, projector trained; lora: LoRA on the tower too."""

    def __post_init__(self):
        check_ranges(self)
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"lora.encoder_mode must be one of {', '.join(ENCODER_MODES)}, not {self.encoder_mode!r}")
