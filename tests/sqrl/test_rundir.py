"""The one rule for an existing --out (sqrl/rundir.py) and the commands that follow it.

The stages' own tests cover their runs: tests/sft/test_sft.py (sft onto a run, --overwrite, resume logs),
tests/grpo/test_driver.py (grpo), tests/sqrl/data/test_synth.py (data synth).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sqrl.cli import build_parser, main
from sqrl.rundir import prepare_out


def old_run(path: Path) -> Path:
    (path / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    return path


def test_an_absent_or_empty_folder_is_used(tmp_path):
    assert prepare_out(tmp_path / "new").is_dir()
    (tmp_path / "empty").mkdir()
    assert prepare_out(tmp_path / "empty") == tmp_path / "empty"


def test_a_run_is_refused_without_resume_or_overwrite_and_named(tmp_path):
    run = old_run(tmp_path / "run")
    with pytest.raises(FileExistsError, match=r"run is not empty \(it holds checkpoints/, metrics.jsonl\); "
                                              r"pass --resume .* --overwrite"):
        prepare_out(run)
    with pytest.raises(FileExistsError, match="pass --overwrite to replace it, or"):
        prepare_out(run, can_resume=False)
    assert prepare_out(run, resume=True) == run and (run / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="one of them"):
        prepare_out(run, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        prepare_out(tmp_path / "file")


def test_overwrite_removes_the_old_run_and_leaves_nothing_aside(tmp_path):
    run = old_run(tmp_path / "run")
    assert prepare_out(run, overwrite=True) == run
    assert list(run.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_removes_only_what_looks_like_sqrl_output(tmp_path, monkeypatch):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match="does not look like sqrl output"):
        prepare_out(mine, overwrite=True)
    assert (mine / "holiday.jpg").exists()
    here = old_run(tmp_path / "here")
    monkeypatch.chdir(here)
    for target in (here, Path("."), tmp_path):  # the working folder, or a folder above it
        (target / "metrics.jsonl").touch()
        with pytest.raises(FileExistsError, match="refusing to remove"):
            prepare_out(target, overwrite=True)
    assert (here / "checkpoints").exists()
    link = tmp_path / "link"
    os.symlink(here, link)
    with pytest.raises(FileExistsError, match="not a folder"):
        prepare_out(link, overwrite=True)


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "m", "--data", "d.jsonl", "--out", "{out}"],
    ["baselines", "--manifest", "d.jsonl", "--out", "{out}"],
])
def test_eval_and_baselines_refuse_an_earlier_result_unless_overwrite(tmp_path, argv):
    out = tmp_path / "result"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    argv = [a.format(out=out) for a in argv]
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(argv)
    assert (out / "metrics.json").read_text() == "{}"
    # with --overwrite the old result is gone before the command reads its (here missing) input
    with pytest.raises(Exception) as err:
        main([*argv, "--overwrite"])
    assert not isinstance(err.value, FileExistsError) and not (out / "metrics.json").exists()


def test_every_command_that_writes_a_run_folder_offers_overwrite_and_the_resumable_ones_resume():
    parser = build_parser()
    for argv in (["sft", "--config", "c", "--out", "o"], ["grpo", "--config", "c", "--out", "o"],
                 ["eval", "--model", "m", "--data", "d", "--out", "o"], ["pipeline", "--out", "o"],
                 ["compare", "--out", "o"], ["baselines", "--manifest", "m", "--out", "o"],
                 ["data", "synth", "--out", "o", "--num", "2"]):
        assert parser.parse_args([*argv, "--overwrite"]).overwrite is True, argv[0]
    for argv in (["sft", "--config", "c", "--out", "o"], ["grpo", "--config", "c", "--out", "o"]):
        assert parser.parse_args([*argv, "--resume"]).resume is True


def test_pipeline_overwrite_starts_over(tmp_path, monkeypatch):
    from sqrl.config import ConfigError, load_config
    from sqrl.pipeline import PipelineConfig, run_pipeline

    out = tmp_path / "demo"
    (out / "calibration").mkdir(parents=True)
    (out / "calibration" / "sqrl_model.json").write_text("{}")  # a finished stage of an earlier run
    (out / "pipeline.yaml").write_text("old: true\n")
    cfg = load_config(PipelineConfig, None, [f"corpus.root={tmp_path / 'synth'}", "corpus.num=4",
                                             "calibration.config=missing.yaml"])
    with pytest.raises(ConfigError, match="missing.yaml"):  # stop at the first stage, after the start
        run_pipeline(cfg, out, overwrite=True)
    assert not (out / "calibration").exists() and "old" not in (out / "pipeline.yaml").read_text()
