"""sqrl data validate: every failure is found on its own line, --fix drops only with a reason."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sqrl.audio import resample, save_audio
from sqrl.data.cli import main
from sqrl.data.validate import fix_manifest, validate_manifest
from sqrl.schema import read_manifest

SCORES = {"speed": 3, "naturalness": 4, "noise": 2, "distortion": 5, "listening_effort": 3, "continuity": 4,
          "overall": 3}


def _line(clip_id, audio, **overrides):
    obj = {"id": clip_id, "audio": audio, "scores": dict(SCORES), "description": "fine", "artifacts": []}
    obj.update(overrides)
    return json.dumps(obj)


@pytest.fixture
def manifest(tmp_path):
    wav = tmp_path / "wav"
    wav.mkdir()
    tone = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    sf.write(wav / "good.wav", tone, 16000)
    sf.write(wav / "rate.wav", tone[:8000], 8000)
    sf.write(wav / "stereo.flac", np.stack([tone, tone], 1), 16000)
    sf.write(wav / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    nan = tone.copy()
    nan[5] = np.nan
    sf.write(wav / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(wav / "long.wav", np.zeros(16000 * 4, dtype=np.float32), 16000)
    (wav / "text.wav").write_text("not audio")
    lines = [
        _line("good", "wav/good.wav"),                                            # 1 ok
        "{not json",                                                              # 2
        _line("range", "wav/good.wav", scores={**SCORES, "noise": 9}),            # 3
        _line("nolabel", "wav/good.wav", scores={**SCORES, "overall": None}),     # 4
        _line("gone", "wav/missing.wav"),                                         # 5
        _line("text", "wav/text.wav"),                                            # 6
        _line("empty", "wav/empty.wav"),                                          # 7
        _line("nan", "wav/nan.wav"),                                              # 8
        _line("long", "wav/long.wav"),                                            # 9
        _line("rate", "wav/rate.wav", description=""),                            # 10 warnings only
        _line("stereo", "wav/stereo.flac"),                                       # 11 warning only
        _line("late", "wav/good.wav",
              artifacts=[{"kind": "noise", "start": 0.5, "end": 1.5, "text": "hiss"}]),  # 12
        _line("good", "wav/good.wav"),                                            # 13 duplicate id
        "",                                                                       # blank: skipped
        _line("badart", "wav/good.wav", artifacts=[{"kind": "hum", "start": 0, "end": 1, "text": "x"}]),  # 15
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED = {
    1: set(), 2: {"error: invalid line"}, 3: {"error: label out of range"}, 4: {"error: missing label"},
    5: {"error: audio missing"}, 6: {"error: audio unreadable"}, 7: {"error: empty audio"},
    8: {"error: NaN samples"}, 9: {"error: too long"},
    10: {"warning: wrong sample rate", "warning: no description"}, 11: {"warning: not mono"},
    12: {"error: artifact after clip end"}, 13: {"error: duplicate id"}, 15: {"error: invalid line"},
}


def test_every_failure_is_reported_on_its_own_line(manifest):
    report = validate_manifest(manifest, max_seconds=3.0)
    got = {c.line: {("error: " if i.error else "warning: ") + i.category for i in c.issues} for c in report.lines}
    assert got == EXPECTED
    assert report.n_errors == 11
    text = report.format()
    assert "15 lines" not in text and "14 lines, 3 usable, 11 with errors" in text
    assert f"{manifest}:8: error: [nan] NaN samples: 1 NaN or infinite samples" in text
    assert "error: too long: 1" in text and "warning: wrong sample rate: 1" in text


def test_fix_writes_usable_lines_resamples_and_reports_each_drop(manifest, tmp_path):
    report = validate_manifest(manifest, max_seconds=3.0)
    written, dropped = fix_manifest(report, tmp_path / "clean" / "m.jsonl")
    assert written == 3 and len(dropped) == 11
    assert sorted(int(d.split(":")[1]) for d in dropped) == sorted(k for k, v in EXPECTED.items() if any(
        x.startswith("error") for x in v))
    assert any(":5: dropped [gone] audio missing" in d for d in dropped)
    records = read_manifest(tmp_path / "clean" / "m.jsonl")
    assert [r.id for r in records] == ["good", "rate", "stereo"]
    for rec in records[1:]:
        info = sf.info(rec.audio)
        assert (info.samplerate, info.channels) == (16000, 1) and "fixed_from" in rec.meta
    assert sf.info(records[1].audio).frames == 16000  # 0.5 s at 8 kHz -> 0.5 s at 16 kHz
    assert validate_manifest(tmp_path / "clean" / "m.jsonl").n_errors == 0


def test_cli_exit_status_is_1_on_errors_0_when_clean_and_2_without_a_manifest(manifest, tmp_path, capsys):
    assert main(["data", "validate", str(manifest), "--max-seconds", "3"]) == 1
    assert main(["data", "validate", str(manifest), "--max-seconds", "3", "--fix", str(tmp_path / "f.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "--fix: wrote 3 records" in out and "dropped 11 lines" in out
    assert main(["data", "validate", str(tmp_path / "f.jsonl")]) == 0
    assert main(["data", "validate", str(tmp_path / "absent.jsonl")]) == 2


@pytest.mark.parametrize("ids", [
    ["spk/1", "spk_1"],  # a QualiSpeech-style id and the name it used to be sanitised to
    # '/', ':', ' ' and '_' alike; case-only differences (one file on a case-insensitive disk); an id
    # too long for a file name; dots only
    ["spk/1", "spk_1", "spk:1", "spk 1", "Clip", "clip", "x" * 400, "..", "spk/1/a", "spk_1_a"],
], ids=["pair", "many"])
def test_fix_gives_every_clip_its_own_file_and_overwrites_nothing(tmp_path, ids):
    lines = []
    for i, clip_id in enumerate(ids):
        # a distinct tone per clip, at 8 kHz so that --fix rewrites every one of them
        sf.write(tmp_path / f"src{i}.wav", (0.1 * np.sin(np.arange(8000) * (i + 1) / 20)).astype(np.float32), 8000)
        lines.append(_line(clip_id, f"src{i}.wav"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "clean" / "m.jsonl"
    squatter = out.parent / "m_audio" / "squatter.wav"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"someone else's file")

    def check(records):
        assert [r.id for r in records] == ids
        assert len({r.audio for r in records}) == len(ids)
        for i, rec in enumerate(records):  # each file holds its own clip, not another's
            wave, sr = sf.read(rec.audio, dtype="float32")
            expected = resample(0.1 * np.sin(np.arange(8000) * (i + 1) / 20), 8000, 16000)
            assert sr == 16000 and np.abs(wave - expected).max() < 1e-3, rec.id
            assert len(Path(rec.audio).name) < 120

    assert fix_manifest(validate_manifest(manifest), out)[0] == len(ids)
    first = read_manifest(out)
    check(first)
    before = {r.audio: Path(r.audio).read_bytes() for r in first}
    # a second --fix into the same folder writes new files beside the first run's, never over them
    out2 = tmp_path / "clean" / "m.jsonl"
    fix_manifest(validate_manifest(manifest), out2)
    second = read_manifest(out2)
    check(second)
    assert not {r.audio for r in second} & set(before)
    assert all(Path(p).read_bytes() == data for p, data in before.items())
    assert squatter.read_bytes() == b"someone else's file"


def test_save_audio_without_overwrite_refuses_an_existing_file(tmp_path):
    path = tmp_path / "a.wav"
    save_audio(path, np.zeros(1600, np.float32))
    with pytest.raises(FileExistsError):
        save_audio(path, np.ones(1600, np.float32) * 0.5, overwrite=False)
    assert np.abs(sf.read(path)[0]).max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temp file left behind


def test_a_clip_shorter_than_the_model_takes_is_an_error_naming_its_file(tmp_path, capsys):
    # 0.05 s passed validate once, then stopped sft, eval and grpo with "800 samples is shorter than 0.1 s"
    sf.write(tmp_path / "ok.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    sf.write(tmp_path / "short.wav", np.full(800, 0.1, np.float32), 16000)
    sf.write(tmp_path / "short44k.flac", np.full(4000, 0.1, np.float32), 44100)  # 0.09 s at another rate
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([_line("ok", "ok.wav"), _line("short", "short.wav"),
                                   _line("short44k", "short44k.flac")]) + "\n")
    report = validate_manifest(manifest)
    assert {c.line: [i.category for i in c.issues if i.error] for c in report.lines} == {
        1: [], 2: ["too short"], 3: ["too short"]}
    assert main(["data", "validate", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"[short] too short: too short for the model: 0.050 s < 0.1 s ({tmp_path / 'short.wav'})" in out
    assert "error: too short: 2" in out
