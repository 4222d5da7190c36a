"""Benchmark data: the synthetic degraded-speech corpus, the QualiSpeech importer, validation.

- ``synth``: ``synthesize_corpus(SynthConfig(...))`` and ``ensure_corpus(root, num, seed)``
  (``render``, ``degrade``, ``labels``, ``tts``, ``sentences`` and ``report`` are its parts);
- ``qualispeech``: ``import_qualispeech(csv, audio_dir, out)``, ``parse_artifact_text``;
- ``validate``: ``validate_manifest(path)``, ``fix_manifest(report, out)``;
- ``cli``: ``register(subparsers)`` for ``sqrl data ...``.

Names are imported lazily, so ``import sqrl.data`` stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "SynthConfig": "sqrl.data.synth",
    "synthesize_corpus": "sqrl.data.synth",
    "ensure_corpus": "sqrl.data.synth",
    "import_qualispeech": "sqrl.data.qualispeech",
    "validate_manifest": "sqrl.data.validate",
    "fix_manifest": "sqrl.data.validate",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sqrl.data' has no attribute {name!r}")
