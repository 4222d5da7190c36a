import json

import numpy as np
import pytest
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
        # readable, but shorter than the audio encoder takes: skipped like the unreadable one
        sf.write(root / "short.wav", np.full(800, 0.1, np.float32), 16_000)
        rows.append({"id": "short", "audio": "short.wav", "scores": {d: 3 for d in DIMENSIONS}})
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_writes_every_file_and_counts_unreadable_clips_against_the_model(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    from sqrl.backbones import get_backbone

    get_backbone("tiny-qwen2-audio", window_s=5)  # registry check only; eval loads by name below
    manifest = _manifest(tmp_path)
    out = tmp_path / "eval"
    metrics = evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8)
    for name in ("metrics.json", "predictions.jsonl", "report.md", "plots/scatter.png", "plots/pcc.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert {"pcc", "srcc", "mae", "parse_rate", "artifacts", "long_form", "n", "expected"} <= set(saved)
    assert set(saved["expected"]) == {"pcc", "srcc", "mae"}
    assert saved["n"] == 6 and saved["unreadable_clips"] == 2
    assert f"{tmp_path / 'short.wav'}: too short for the model" in caplog.text  # the log names the file
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["parsed"] is None and r["text"] == "" for r in rows[-2:])
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
    assert merged.voice is None
    # a voice-line rubric asks for the voice with the naturalness question; the merged answer keeps it
    merged, _ = _combine([("noise", "Noise: 2/5"),
                          ("naturalness", "Artifacts:\n- Voice: strongly warbling\nScores:\n- Naturalness: 2/5")])
    assert (merged.voice, merged.scores["naturalness"]) == ("strongly warbling", 2)


# ---------------------------------------------------------------- expected scores (probability readout)
def test_score_spans_point_at_the_digits_parse_reads_and_skip_artifacts_and_description():
    from sqrl.response import parse, score_spans

    text = ("Scores:\n- Speed: 3/5\n* Noise: 4 out of 5\n1. Overall quality: 2/5\n**Distortion**: 5/5\n"
            "Artifacts:\n- Noise [0.00-1.70 s]: hiss\nDescription: Continuity: 1/5 is what I'd say")
    spans = score_spans(text)
    assert {d: text[a:b] for d, (a, b) in spans.items()} == {"speed": "3", "noise": "4", "overall": "2"}
    # every located digit is the score parse reads; bold is parsed but not located (no span, no readout)
    assert all(parse(text).scores[d] == int(text[a:b]) for d, (a, b) in spans.items())
    assert parse(text).scores["distortion"] == 5 and "distortion" not in spans
    assert score_spans("<think>Noise: 1/5</think>\nNoise: 4/5") == {}
    assert score_spans(None) == {} and score_spans("Noise: 3.5/5") == {}


def test_the_readout_traces_each_score_digit_to_its_token_and_takes_the_expectation(tmp_path, monkeypatch):
    import torch

    from sqrl.backbones import get_backbone
    from sqrl.evaluate import ScoreReader, read_expected

    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    tok = get_backbone("tiny-qwen2-audio", window_s=5).load()[1].tokenizer
    reader = ScoreReader(tok)
    assert reader.templates  # the tiny BPE spells the digits 1-5 as tokens
    text = "Scores:\n- Noise: 4/5\n- Distortion: 2/5\nArtifacts:\n- Noise: none"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # hand-set distributions: at every step p(1..5) = (0.1, 0.2, 0.3, 0.4, 0) except at the noise digit
    # (p(4) = 0.5, p(5) = 0.5 -> 4.5) and the distortion digit (p(2) = 1 -> 2.0)
    steps = []
    noise_at = distortion_at = None
    for step in range(len(ids)):
        piece = tok.decode(ids[:step + 1])
        if noise_at is None and piece.endswith("Noise: 4"):
            noise_at = step
        if distortion_at is None and piece.endswith("Distortion: 2"):
            distortion_at = step
    assert noise_at is not None and distortion_at is not None
    for step in range(len(ids)):
        logp = torch.full((1, len(reader.columns)), -30.0)
        probs = {noise_at: (0, 0, 0, 0.5, 0.5), distortion_at: (0, 1, 0, 0, 0)}.get(step, (0.1, 0.2, 0.3, 0.4, 0))
        for digit_ids in reader.templates.values():
            for k, tid in enumerate(digit_ids):
                if probs[k] > 0:
                    logp[0, reader._col[tid]] = float(np.log(probs[k]))
        reader.steps.append(logp)
    padded = ids + [tok.pad_token_id or 0] * 3  # padding after the answer is skipped
    out_text, expected = read_expected(tok, reader, 0, padded)
    assert out_text == text
    assert expected["noise"] == pytest.approx(4.5, abs=1e-4)
    assert expected["distortion"] == pytest.approx(2.0, abs=1e-4)
    assert set(expected) == {"noise", "distortion"}


def test_an_expected_score_never_leaves_the_scale_by_float_rounding(tmp_path, monkeypatch):
    """p(5) ~ 1 gave 5.0000005 in float32, which the metrics then dropped as no score (filled with 3): a
    confident model's continuity lost 0.04 expected PCC that way (docs/small.md, "A voice line")."""
    import torch

    from sqrl.backbones import get_backbone
    from sqrl.evaluate import ScoreReader
    from sqrl.metrics import predicted_score
    from sqrl.schema import Assessment

    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    reader = ScoreReader(get_backbone("tiny-qwen2-audio", window_s=5).load()[1].tokenizer)
    template, digit_ids = next(iter(reader.templates.items()))

    def expectation(logits):
        logp = torch.full((1, len(reader.columns)), -60.0)
        for k, tid in enumerate(digit_ids):
            logp[0, reader._col[tid]] = torch.log_softmax(logits, -1)[k]
        reader.steps.append(logp)
        return reader.expectation(len(reader.steps) - 1, 0, template.format("5"))

    # over vectors confident in 5 (unclamped, 23 of these 2,000 overshot on x86; whether one does depends on the
    # summation order), every value stays on the scale
    gen = torch.Generator().manual_seed(0)
    values = [expectation(torch.randn(5, generator=gen) * 5 + torch.tensor([0, 0, 0, 0, 20.0]))[0]
              for _ in range(2000)]
    assert all(1.0 <= v <= 5.0 for v in values)
    # this vector's expectation was 5.0000005 in an eval
    value, mass = expectation(torch.tensor([-3.1693, -3.0363, 1.4782, 6.9827, 23.5115]))
    assert value == 5.0 and mass == pytest.approx(1.0)
    assert predicted_score(Assessment(scores={"noise": value}), "noise") == 5.0


def test_eval_reports_expected_score_metrics_next_to_the_greedy_ones(tmp_path):
    from sqrl.evaluate import with_expected
    from sqrl.metrics import score_metrics
    from sqrl.schema import Assessment, Record

    refs = [Record(scores={"noise": s}) for s in (1, 2, 3, 4)]
    greedy = [Assessment(scores={"noise": 5}) for _ in refs]  # argmax always 5: PCC undefined (constant)
    exp = [{"noise": v} for v in (4.1, 4.3, 4.6, 4.9)]      # ...but the probabilities still rank the clips
    assert score_metrics(greedy, refs)["pcc"]["noise"] is None
    m = score_metrics(with_expected(greedy, exp), refs)
    assert m["pcc"]["noise"] == pytest.approx(float(np.corrcoef([4.1, 4.3, 4.6, 4.9], [1, 2, 3, 4])[0, 1]))
    assert with_expected([None], [{}]) == [None]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_interrupted_eval_resumes_from_its_journal_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    from sqrl.evaluate import JOURNAL, RUN_FILE, Generator
    from sqrl.rundir import check_removable

    manifest = _manifest(tmp_path, n=5)
    whole = tmp_path / "whole"
    evaluate("tiny-qwen2-audio", str(manifest), whole, batch_size=2, max_new_tokens=8)

    original = Generator.with_expected_scores
    calls = []

    def killed_on_the_second_batch(self, waves, prompts):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped mid-way
        return original(self, waves, prompts)

    monkeypatch.setattr(Generator, "with_expected_scores", killed_on_the_second_batch)
    out = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8)
    assert len(_rows(out / JOURNAL)) == 2 and not (out / "metrics.json").exists()
    check_removable(out)  # the interrupted folder is recognisably sqrl's: --overwrite may replace it

    # other settings: refused, naming what differs; the journal is kept
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=9, resume=True)
    assert len(_rows(out / JOURNAL)) == 2

    with open(out / JOURNAL, "a") as fh:
        fh.write('{"index": 2, "id": "c2", "dim": nu')  # a kill in the middle of writing a line
    calls.clear()
    with pytest.raises(KeyboardInterrupt):  # resumed, and stopped again after one more batch
        evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8, resume=True)
    assert len(_rows(out / JOURNAL)) == 4  # the torn line is gone, the new answers are on lines of their own
    calls.clear()
    monkeypatch.setattr(Generator, "with_expected_scores", lambda self, w, p: (calls.append(len(p)), original(self, w, p))[1])
    metrics = evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8, resume=True)
    assert sum(calls) == 1  # 5 readable clips, 4 answered before the stops
    assert _rows(out / "predictions.jsonl") == _rows(whole / "predictions.jsonl")
    assert metrics == json.loads((whole / "metrics.json").read_text()) | {"seconds": metrics["seconds"]}
    assert not (out / JOURNAL).exists() and (out / RUN_FILE).exists()

    calls.clear()  # resuming a complete evaluation generates nothing
    assert evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8, resume=True) == metrics
    assert calls == []

    (out / RUN_FILE).unlink()  # results of unknown settings (an sqrl before the journal) are not taken as they are
    evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8, resume=True)
    assert sum(calls) == 5


def test_a_journal_of_other_settings_starts_over_under_if_same_and_a_fresh_run_discards_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    from sqrl.evaluate import JOURNAL, Generator

    manifest = _manifest(tmp_path, n=2, broken=False)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_run.json").write_text(json.dumps({"model": "another"}))
    (out / JOURNAL).write_text(json.dumps({"index": 0, "id": "c0", "dim": None, "text": "noise: 1/5", "expected": {}}) + "\n")
    calls = []
    original = Generator.with_expected_scores
    monkeypatch.setattr(Generator, "with_expected_scores", lambda self, w, p: (calls.append(len(p)), original(self, w, p))[1])
    evaluate("tiny-qwen2-audio", str(manifest), out, batch_size=2, max_new_tokens=8, resume="if_same")
    assert sum(calls) == 2  # the other model's answer was not taken
    assert "noise: 1/5" not in (out / "predictions.jsonl").read_text()


def test_a_journal_written_for_another_manifest_is_refused(tmp_path):
    from sqrl.evaluate import _read_journal
    from sqrl.schema import Record

    journal = tmp_path / "j.jsonl"
    journal.write_text(json.dumps({"index": 0, "id": "x", "dim": None, "text": "", "expected": {}}) + "\n")
    with pytest.raises(ValueError, match="another manifest"):
        _read_journal(journal, [Record(id="y")], {}, {})


def test_auto_runs_on_cuda_only_where_torch_sees_one_and_cuda_without_one_is_refused():
    import torch

    from sqrl.runtime import resolve_device

    assert resolve_device("cpu") == "cpu" and resolve_device(None) == resolve_device("auto")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_greedy_answers_on_cuda_are_those_of_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    manifest = _manifest(tmp_path, broken=False)
    cpu = evaluate("tiny-qwen2-audio", str(manifest), tmp_path / "cpu", batch_size=2, max_new_tokens=16, device="cpu")
    gpu = evaluate("tiny-qwen2-audio", str(manifest), tmp_path / "gpu", batch_size=2, max_new_tokens=16, device="cuda")
    texts = [[r["text"] for r in _rows(tmp_path / d / "predictions.jsonl")] for d in ("cpu", "gpu")]
    assert texts[0] == texts[1]
    assert gpu["parse_rate"] == cpu["parse_rate"]


def test_a_sampled_eval_is_seeded_recorded_and_not_the_greedy_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    manifest = _manifest(tmp_path, n=4, broken=False)

    def texts(out, **kw):
        metrics = evaluate("tiny-qwen2-audio", str(manifest), tmp_path / out, batch_size=2, max_new_tokens=12, **kw)
        return metrics, [r["text"] for r in _rows(tmp_path / out / "predictions.jsonl")]

    greedy_metrics, greedy = texts("greedy")
    metrics, a = texts("a", temperature=1.0, seed=0)
    _, again = texts("again", temperature=1.0, seed=0)
    _, other = texts("other", temperature=1.0, seed=1)
    assert a == again                   # the same seed draws the same answers
    assert a != other and a != greedy   # another seed, or greedy decoding, gives others
    assert metrics["decoding"] == {"temperature": 1.0, "seed": 0}
    assert greedy_metrics["decoding"] == {"temperature": None, "seed": None}
    assert "sampled at temperature 1 (seed 0)" in (tmp_path / "a" / "report.md").read_text()
    assert "Decoding: greedy answers" in (tmp_path / "greedy" / "report.md").read_text()
    # a sampled evaluation is not resumed as a greedy one, nor under another seed
    with pytest.raises(ValueError, match="temperature"):
        evaluate("tiny-qwen2-audio", str(manifest), tmp_path / "a", batch_size=2, max_new_tokens=12, resume=True)
    with pytest.raises(ValueError, match="seed"):
        evaluate("tiny-qwen2-audio", str(manifest), tmp_path / "a", batch_size=2, max_new_tokens=12, resume=True,
                 temperature=1.0, seed=3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        evaluate("tiny-qwen2-audio", str(manifest), tmp_path / "z", temperature=0.0)


def test_sampling_suppresses_every_special_token_but_the_stop_tokens(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    from sqrl.evaluate import Generator, stop_token_ids
    from sqrl.models import load_model

    model, processor, backbone = load_model("tiny-qwen2-audio")
    gen = Generator(model, processor, backbone)
    assert gen.sampling(None) == {}
    kw = gen.sampling(0.7)
    assert kw["do_sample"] and kw["temperature"] == 0.7 and kw["top_p"] == 1.0 and kw["top_k"] == 0
    tok = processor.tokenizer
    stops = set(stop_token_ids(model))
    assert stops and not stops & set(kw["suppress_tokens"])
    audio = tok.convert_tokens_to_ids("<|AUDIO|>")
    assert audio in kw["suppress_tokens"]  # an audio placeholder in an answer would break the next forward
    assert tok.pad_token_id not in kw["suppress_tokens"]
