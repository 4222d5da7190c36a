import json

import numpy as np
import soundfile as sf

from sqrl.dimensions import DIMENSIONS
from sqrl.evaluate import _combine, evaluate


def _manifest(root, n=4, broken=True):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        sf.write(root / f"c{i}.wav", (0.1 * rng.standard_normal(24_000)).astype(np.float32), 16_000)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "scores": {d: 1 + (i + j) % 5 for j, d in enumerate(DIMENSIONS)},
                     "artifacts": [{"kind": "noise", "start": 0.0, "end": 1.5, "text": "hiss"}],
                     "description": "noisy speech"})
    if broken:
        (root / "bad.wav").write_bytes(b"garbage")
        rows.append({"id": "bad", "audio": "bad.wav", "scores": {d: 3 for d in DIMENSIONS}})
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_writes_every_file_and_counts_unreadable_clips_against_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    from sqrl.backbones import get_backbone

    get_backbone("tiny-qwen2-audio", window_s=5)  # registry check only; eval loads by name below
    manifest = _manifest(tmp_path)
    out = tmp_path / "eval"
    metrics = evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8)
    for name in ("metrics.json", "predictions.jsonl", "report.md", "plots/scatter.png", "plots/pcc.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert {"pcc", "srcc", "mae", "parse_rate", "artifacts", "long_form", "n"} <= set(saved)
    assert saved["n"] == 5 and saved["unreadable_clips"] == 1
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and rows[-1]["parsed"] is None and rows[-1]["text"] == ""
    # an untrained model writes no parseable scores: the parse rate says so
    assert metrics["parse_rate"] < 0.5


def test_per_dimension_answers_combine_into_one_assessment():
    parts = [("noise", "Noise: 2/5\nArtifacts:\n- Noise [0.10-0.90 s]: hiss"),
             ("distortion", "Distortion: 4/5\nNoise: 1/5"),
             ("continuity", "Continuity: 5/5\n- Unnatural pause: none")]
    merged, text = _combine(parts)
    assert merged.scores["noise"] == 2 and merged.scores["distortion"] == 4 and merged.scores["continuity"] == 5
    assert merged.scores["overall"] is None
    assert [(a.kind, a.start) for a in merged.artifacts] == [("noise", 0.1)]
    assert "Distortion: 4/5" in text
