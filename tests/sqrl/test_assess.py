"""``sqrl assess`` with real tiny models: JSON structure, per-file errors beside good files, the table,
the exit status, the model's own training prompt, resampling, and a memorising model's answer read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import yaml

from sqrl.assess import assess, expand_inputs, format_table, prompts_for
from recipes.cli import main
from sqrl.dimensions import DIMENSIONS
from sqrl.prompts import Rubric

REPO = Path(__file__).resolve().parents[2]
SR = 16_000
KEYS = {"file", "duration", "judged_seconds", "warnings", "scores", "artifacts", "description", "voice",
        "missing_scores", "text", "error"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQRL_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def model_dir(cache):
    """An untrained tiny Qwen2-Audio (5-s window) as a full model directory that says it was trained with
    the compact rubric's all-dimensions prompt."""
    from sqrl.models import untrained_init

    path = untrained_init(cache / "init", "tiny-qwen2-audio", window_s=5)
    (path / "sqrl_config.yaml").write_text(yaml.safe_dump(
        {"data": {"prompting": "all_dimensions", "rubric": "configs/rubrics/compact.yaml", "max_seconds": 8.0}}))
    return path


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two good clips (one at 44.1 kHz stereo) and every kind of file that cannot be judged."""
    root = tmp_path_factory.mktemp("clips")
    sf.write(root / "a.wav", _speech(2.0, 0), SR)
    wave = _speech(1.5, 1)
    up = soxr.resample(wave, SR, 44_100)
    sf.write(root / "b_44k_stereo.flac", np.stack([up, up], axis=1), 44_100)
    (root / "not_audio.wav").write_bytes(b"this is not a RIFF file")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(root / "too_short.wav", _speech(0.05), SR)
    sf.write(root / "too_long.wav", _speech(9.0), SR)  # the model dir says max_seconds 8
    return root


def _run_cli(capsys, *argv):
    code = main(["assess", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_one_object_per_file_and_bad_files_get_their_own_error(model_dir, clips, capsys):
    files = [clips / "a.wav", clips / "not_audio.wav", clips / "missing.wav", clips / "b_44k_stereo.flac",
             clips / "empty.wav", clips / "too_short.wav", clips / "too_long.wav"]
    code, out, err = _run_cli(capsys, *files, "--model", model_dir, "--json", "--max-new-tokens", 12,
                              "--batch-size", 2)
    assert code == 0  # some files were judged
    rows = json.loads(out)
    assert isinstance(rows, list) and [r["file"] for r in rows] == [str(f) for f in files]
    for row in rows:
        assert set(row) == KEYS
        assert set(row["scores"]) == set(DIMENSIONS)
        assert isinstance(row["artifacts"], list)
    by = {Path(r["file"]).name: r for r in rows}
    for good in ("a.wav", "b_44k_stereo.flac"):
        assert by[good]["error"] is None and isinstance(by[good]["text"], str)
    # resampled from 44.1 kHz stereo: the duration is that of the 1.5-s original
    assert by["b_44k_stereo.flac"]["duration"] == pytest.approx(1.5, abs=0.01)
    assert by["a.wav"]["duration"] == pytest.approx(2.0, abs=0.001)
    expected = {"not_audio.wav": "unreadable audio", "missing.wav": "file not found",
                "empty.wav": "empty audio", "too_short.wav": "too short for the model",
                "too_long.wav": "too long: 9.00 s > limit 8 s"}
    for name, message in expected.items():
        assert message in by[name]["error"], by[name]["error"]
        assert by[name]["text"] is None and all(v is None for v in by[name]["scores"].values())
        assert f"{clips / name}: {by[name]['error']}" in err  # and on stderr, naming the file


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory):
    """Clips that are judged, but not as given or not as speech: longer than the tiny model's 5-s window
    (and within its 8-s limit), all zeros, far too quiet, clipped, and 44.1-kHz stereo."""
    root = tmp_path_factory.mktemp("odd_clips")
    sf.write(root / "long.wav", _speech(7.0, 2), SR)
    sf.write(root / "zeros.wav", np.zeros(SR, dtype=np.float32), SR)
    sf.write(root / "quiet.wav", _speech(1.0, 3) * 1e-3, SR, subtype="FLOAT")
    sf.write(root / "clipped.wav", np.clip(_speech(1.0, 4) * 8, -1, 1), SR)
    up = soxr.resample(_speech(1.5, 5), SR, 44_100)
    sf.write(root / "stereo44k.flac", np.stack([up, up], axis=1), 44_100)
    return root


def test_json_and_table_say_what_was_judged_and_warn_about_odd_clips(model_dir, clips, odd_clips, capsys):
    names = ["long.wav", "zeros.wav", "quiet.wav", "clipped.wav", "stereo44k.flac"]
    files = [clips / "a.wav", *[odd_clips / n for n in names]]
    code, out, err = _run_cli(capsys, *files, "--model", model_dir, "--json", "--max-new-tokens", 4)
    assert code == 0
    by = {Path(r["file"]).name: r for r in json.loads(out)}
    assert all(r["error"] is None for r in by.values())
    assert by["a.wav"]["warnings"] == [] and by["a.wav"]["judged_seconds"] == by["a.wav"]["duration"] == 2.0
    # a 7-s file and a model whose encoder hears 5 s: only 5 s were judged, and it says so
    assert (by["long.wav"]["duration"], by["long.wav"]["judged_seconds"]) == (7.0, 5.0)
    assert by["long.wav"]["warnings"] == ["cut to the model's 5-s window: only the first 5 s of 7.00 s were judged"]
    assert by["zeros.wav"]["warnings"] == ["all samples are zero (digital silence): the judgement describes no speech"]
    assert [w.split(":")[0] for w in by["quiet.wav"]["warnings"]] == ["silent"]
    assert [w.split(":")[0] for w in by["clipped.wav"]["warnings"]] == ["far too loud", "clipped"]
    assert by["stereo44k.flac"]["warnings"] == ["resampled from 44100 Hz to 16000 Hz", "mixed 2 channels to mono"]
    for name in names:
        for warning in by[name]["warnings"]:
            assert f"{odd_clips / name}: warning: {warning}" in err

    code, table, _ = _run_cli(capsys, clips / "a.wav", odd_clips / "long.wav", "--model", model_dir,
                              "--max-new-tokens", 4)
    lines = table.splitlines()
    assert len(lines[1].split()) == 8 and lines[2].endswith("! 1 warning")
    assert "  judged 2.00 s" in lines and "  judged 5.00 s of 7.00 s" in lines
    assert "  warning: cut to the model's 5-s window: only the first 5 s of 7.00 s were judged" in lines


def test_an_untrained_model_is_judged_but_its_unreadable_answer_says_so(model_dir, clips, capsys):
    code, out, err = _run_cli(capsys, clips / "a.wav", "--model", model_dir, "--json", "--max-new-tokens", 12)
    row = json.loads(out)[0]
    assert code == 0 and row["error"] is None
    # a random model writes no score lines; whatever it wrote is kept, and stderr says which are missing
    assert row["missing_scores"] == [d for d in DIMENSIONS if row["scores"][d] is None]
    if row["missing_scores"]:
        assert "no score could be read" in err


def test_the_exit_status_is_nonzero_only_when_every_file_failed(model_dir, clips, capsys):
    code, out, err = _run_cli(capsys, clips / "not_audio.wav", clips / "missing.wav", "--model", model_dir, "--json")
    assert code == 1
    assert all(r["error"] for r in json.loads(out))
    assert "none of the 2 file(s) could be judged" in err


def test_the_table_lists_scores_errors_and_details(model_dir, clips, capsys, monkeypatch):
    monkeypatch.chdir(clips)  # short names: paths over 48 characters are shortened in the table
    code, out, _ = _run_cli(capsys, "a.wav", "missing.wav", "--model", model_dir, "--max-new-tokens", 8)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["file", "speed", "nat.", "noise", "distort.", "effort", "cont.", "overall"]
    assert lines[1].split()[0] == "a.wav" and len(lines[1].split()) == 8  # a name and seven score cells
    assert lines[2].split()[0] == "missing.wav" and "error: file not found" in lines[2]
    assert lines[4] == "a.wav"  # the detail block of the judged file


def test_directories_expand_to_their_audio_and_an_empty_one_is_reported(clips, tmp_path):
    files = expand_inputs([clips, tmp_path])
    assert [Path(f).name for f in files[:-1]] == sorted(
        ["a.wav", "b_44k_stereo.flac", "not_audio.wav", "empty.wav", "too_short.wav", "too_long.wav"])
    assert files[-1] == str(tmp_path)


def test_the_model_is_asked_with_its_training_prompt(model_dir):
    from sqrl.prompts import training_prompts

    prompting, rubric = training_prompts(model_dir)
    assert (prompting, rubric) == ("all_dimensions", "configs/rubrics/compact.yaml")
    compact = Rubric(rubric)
    assert prompts_for(compact, prompting) == [(None, compact.all_dimensions())]
    per_dim = prompts_for(compact, "per_dimension")
    assert [d for d, _ in per_dim] == list(DIMENSIONS)
    assert per_dim[2] == ("noise", compact.per_dimension("noise"))


def test_per_dimension_prompting_asks_every_dimension_and_combines_the_answers(model_dir, clips):
    results = assess(model_dir, [clips / "a.wav", clips / "missing.wav"], prompting="per_dimension",
                     max_new_tokens=6, batch_size=4)
    good, bad = results
    assert good.ok and not bad.ok
    assert good.asked == tuple(DIMENSIONS)
    assert good.text.count("\n\n") >= len(DIMENSIONS) - 1  # one answer per dimension, joined


# ----------------------------------------------------------------------------------- a model that learned
MEMORISED = {"scores": {"speed": 3, "naturalness": 4, "noise": 2, "distortion": 5, "listening_effort": 3,
                        "continuity": 4, "overall": 3},
             "artifacts": [{"kind": "noise", "start": 0.0, "end": 1.7, "text": "a steady hiss"}]}


@pytest.fixture(scope="module")
def memorised(cache, tmp_path_factory):
    """A tiny model calibrated (all-dimensions prompt) on clips that all carry the same answer: it learns
    to write that answer whatever it hears. Trained in a child process (DeepSpeed leaves state behind)."""
    root = tmp_path_factory.mktemp("memorise")
    rows = []
    for i in range(8):  # the lengths of the clips judged below: a tiny model memorises per audio length
        sf.write(root / f"m{i}.wav", _speech((1.5, 2.0)[i % 2], 10 + i), SR)
        rows.append({"id": f"m{i}", "audio": f"m{i}.wav", **MEMORISED})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "model"
    overrides = {"data.train": root / "train.jsonl", "data.synth": "null", "data.rubric": "configs/rubrics/compact.yaml",
                 "model.options": "{window_s: 5}", "lora.rank": 16, "train.batch_size": 4, "train.max_steps": 100,
                 "train.lr": 1e-2, "train.warmup_ratio": 0.0, "train.logging_steps": 10, "train.save_steps": 1000}
    env = {**os.environ, "SQRL_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sqrl", "sft", "--config", str(REPO / "configs/tiny/calibration.yaml"),
                    "--out", str(out), *[f"{k}={v}" for k, v in overrides.items()]],
                   check=True, env=env, cwd=REPO, capture_output=True)
    print(f"memorising calibration: {time.perf_counter() - t0:.1f} s")
    return out


@pytest.mark.slow
def test_a_calibrated_model_answers_what_it_learned(memorised, clips, capsys):
    code, out, _ = _run_cli(capsys, clips / "a.wav", clips / "b_44k_stereo.flac", clips / "missing.wav",
                            "--model", memorised, "--json")
    assert code == 0
    rows = json.loads(out)
    for row in rows[:2]:
        assert row["error"] is None and row["missing_scores"] == []
        assert row["scores"] == MEMORISED["scores"]
        assert [(a["kind"], a["start"], a["end"]) for a in row["artifacts"]] == [("noise", 0.0, 1.7)]
    assert rows[2]["error"] == "file not found"
    code, table, _ = _run_cli(capsys, clips / "a.wav", "--model", memorised)
    assert table.splitlines()[1].split()[1:] == ["3", "4", "2", "5", "3", "4", "3"]
    assert "Noise 0.00-1.70 s: a steady hiss" in table


def test_format_table_survives_long_names_and_no_results():
    from sqrl.assess import Judgement
    from sqrl.response import parse

    answer = parse("Noise: 2/5\nOverall quality: 3/5\n- Noise [0.10-0.90 s]: hiss\nDescription: Noisy.")
    long_name = "/very/long/" + "x" * 80 + ".wav"
    text = format_table([Judgement(long_name, answer, "raw"), Judgement("gone.wav", error="file not found")],
                        width=80)
    first = text.splitlines()[1]
    assert first.startswith("...") and first.split()[1:] == ["-", "-", "2", "-", "-", "-", "3"]
    assert "Noise 0.10-0.90 s: hiss" in text and "Description: Noisy." in text
    assert "no score read for speed" in text
    assert format_table([]).splitlines() == [format_table([]).splitlines()[0]]


@pytest.mark.parametrize("gain, warning", [(1.0, None), (1e-2, "far too quiet"), (1e-3, "silent"), (0.0, "all samples")])
def test_the_level_of_the_judged_part_is_checked(gain, warning):
    from sqrl.assess import inspect_clip

    wave, seconds, warnings = inspect_clip("not-a-file.wav", _speech(2.0) * gain, window_seconds=30.0)
    assert seconds == 2.0 and len(wave) == 2 * SR
    assert [w for w in warnings if not w.startswith(warning or "\0")] == []
    assert len(warnings) == (warning is not None)
