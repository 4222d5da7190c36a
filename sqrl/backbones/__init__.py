"""The audio-LLM backbone registry.

Six entries share one interface (``Backbone``):

* ``audio-flamingo-3`` (AudioFlamingo3ForConditionalGeneration) and ``qwen2-audio``
  (Qwen2AudioForConditionalGeneration): loaded from a path you give (a local checkpoint, or a hub id
  when you have network).
* ``tiny-af3`` and ``tiny-qwen2-audio``: the same classes built offline from a small config, a
  byte-level BPE trained on the fly and a Whisper feature extractor, cached under ``$SQRL_CACHE``
  (default ``~/.cache/sqrl``). ``get_backbone("tiny-af3", window_s=5)`` gives a variant.
* ``small-qwen2-audio`` and ``small-af3``: pretrained Whisper tiny.en (or base: ``encoder="base"``) and
  SmolLM2-135M-Instruct from pinned PyPI wheels, with a new projector (``sqrl.backbones.small``).

Names load lazily: ``import sqrl.backbones.config`` (the config sections) needs no torch.

>>> from sqrl.backbones import get_backbone
>>> bb = get_backbone("tiny-qwen2-audio")
>>> bb.family.audio_placeholder
'<|audio_bos|><|AUDIO|><|audio_eos|>'
"""
from __future__ import annotations

import importlib

from sqrl.audio import SAMPLING_RATE
from sqrl.backbones.config import DTYPES, ENCODER_MODES, LoraConfig, resolve_dtype

_EXPORTS = {
    "AF3": "sqrl.backbones.families",
    "QWEN2_AUDIO": "sqrl.backbones.families",
    "Family": "sqrl.backbones.families",
    "TinySpec": "sqrl.backbones.families",
    "SmallSpec": "sqrl.backbones.small",
    "IGNORE_INDEX": "sqrl.backbones.core",
    "Backbone": "sqrl.backbones.core",
    "get_backbone": "sqrl.backbones.registry",
    "list_backbones": "sqrl.backbones.registry",
    "register_backbone": "sqrl.backbones.registry",
}
__all__ = ["DTYPES", "ENCODER_MODES", "SAMPLING_RATE", "LoraConfig", "resolve_dtype", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sqrl.backbones' has no attribute {name!r}")
