import json

import numpy as np
import pytest
import soundfile as sf

from sqrl.dimensions import DIMENSIONS


@pytest.fixture(scope="session")
def sqrl_cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("sqrl_cache")
    os.environ["SQRL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory, sqrl_cache):
    """16 two-second clips whose noise level sets the noise score (a learnable, tiny corpus)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(32_000) / 16_000
    rows = []
    for i in range(16):
        level = i % 5 + 1
        tone = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t)
        wave = (tone + 0.05 * (6 - level) * rng.standard_normal(t.size)).astype(np.float32)
        sf.write(root / f"c{i}.wav", wave, 16_000)
        scores = {d: int(rng.integers(1, 6)) for d in DIMENSIONS}
        scores["noise"] = level
        artifacts = [] if level >= 4 else [{"kind": "noise", "start": 0.0, "end": 2.0, "text": "a steady hiss"}]
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "scores": scores, "artifacts": artifacts,
                     "description": f"A tone with noise level {6 - level}."})
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def tiny_overrides(manifest, **extra):
    """Dotted overrides that make the tiny calibration config fast enough for a unit test."""
    base = {
        "data.train": str(manifest),
        "data.synth": "null",
        "data.rubric": "configs/rubrics/compact.yaml",
        "model.options": "{window_s: 5}",
        "lora.rank": 8,
        "train.batch_size": 4,
        "train.logging_steps": 1,
        "train.lr": 3e-3,
        "train.warmup_ratio": 0.0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
