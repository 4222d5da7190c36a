"""Fixtures shared by the GRPO tests: a private cache, an untrained tiny model, a small corpus."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def grpo_cache(tmp_path_factory) -> Path:
    """A private SQRL_CACHE for the whole session (set before any worker process starts)."""
    root = tmp_path_factory.mktemp("grpo_cache")
    old = os.environ.get("SQRL_CACHE")
    os.environ["SQRL_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SQRL_CACHE", None)
    else:
        os.environ["SQRL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_init(grpo_cache) -> Path:
    """An UNTRAINED tiny Qwen2-Audio (5-s window) as a full model directory: the fast stand-in for the
    merged calibration model."""
    from sqrl.models import untrained_init

    return untrained_init(grpo_cache / "init", "tiny-qwen2-audio", window_s=5)


@pytest.fixture(scope="session")
def corpus(grpo_cache) -> Path:
    """Eight synthetic clips (train.jsonl / test.jsonl)."""
    from sqrl.data.synth import ensure_corpus

    return ensure_corpus(grpo_cache / "synth", 8, 0)
