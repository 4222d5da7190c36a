"""Serve a Qwen2-Audio checkpoint whose Whisper window is not 30 s with vLLM (imported only with vLLM).

vLLM 0.32's Qwen2-Audio class declares its mel input as exactly 3000 frames (the 30-s window) and
rejects anything else, although nothing else in it depends on that number: the multimodal
processor pads to the checkpoint's own ``chunk_length`` (``preprocessor_config.json``), the token
count per clip follows the feature mask, and the encoder (transformers' ``Qwen2AudioEncoder``) is
built from the checkpoint's ``max_source_positions``. The CPU configs of the small backbone use a
6-s window (600 frames, a fifth of the encoder's cost), so :func:`register_any_window` registers a
subclass that checks the input against the checkpoint's window instead.

The class is registered in the calling process's model registry. The rollout worker runs vLLM's
engine in that process on a CPU (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); an engine whose workers
are separate processes (GPUs, multiprocessing on) does not see the registration, and the 30-s
window is then the one that can be served.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from vllm import ModelRegistry
from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration
from vllm.utils.tensor_schema import TensorSchema, TensorShape

QWEN2_AUDIO_FRAMES = 3000  # the frame count vLLM's own class accepts
ANY_WINDOW_ARCH = "SqrlQwen2AudioAnyWindow"


class _WindowFeatureInputs(TensorSchema):
    """vLLM's ``Qwen2AudioFeatureInputs`` with the frame count bound per model (``nmf``)."""

    type: Literal["audio_features"]
    input_features: Annotated[torch.Tensor | list[torch.Tensor], TensorShape("na", "nmb", "nmf")]
    feature_attention_mask: Annotated[torch.Tensor, TensorShape("na", "nmf")]


class Qwen2AudioAnyWindow(Qwen2AudioForConditionalGeneration):
    """vLLM's Qwen2-Audio with the mel length taken from the checkpoint: ``2 * max_source_positions``.

    The multimodal processor is inherited (vLLM stores it as a class attribute), and so is
    everything else; only the input check differs.
    """

    def __init__(self, *, vllm_config: Any, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.mel_frames = 2 * int(self.config.audio_config.max_source_positions)

    def _parse_and_validate_audio_input(self, **kwargs: object):
        if kwargs.get("input_features") is None:
            return super()._parse_and_validate_audio_input(**kwargs)
        return _WindowFeatureInputs(type="audio_features", input_features=kwargs["input_features"],
                                    feature_attention_mask=kwargs.get("feature_attention_mask"),
                                    resolve_bindings={"nmf": self.mel_frames})


def register_any_window() -> str:
    """Register :class:`Qwen2AudioAnyWindow` with vLLM (idempotent); returns its architecture name."""
    if ANY_WINDOW_ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ANY_WINDOW_ARCH, Qwen2AudioAnyWindow)
    return ANY_WINDOW_ARCH
