"""`sqrl data ...`: register() wires three subcommands; exit status 0 ok, 1 data errors, 2 cannot run."""
import argparse

import pytest

from sqrl.data.cli import main, register


def test_register_adds_data_with_its_three_subcommands():
    parser = argparse.ArgumentParser(prog="sqrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "synth", "--out", "x", "--num", "5", "--seed", "3"])
    assert (args.num, args.seed, args.sample_rate, args.test_fraction, args.workers) == (5, 3, 16000, 0.15, 2)
    assert args.func.__name__ == "_synth"
    args = parser.parse_args(["data", "import-qualispeech", "--csv", "a.csv", "--audio-dir", "d", "--out", "m.jsonl"])
    assert args.func.__name__ == "_import"
    args = parser.parse_args(["data", "validate", "m.jsonl", "--fix", "o.jsonl", "--max-seconds", "10"])
    assert (args.func.__name__, args.max_seconds) == ("_validate", 10.0)


def test_synth_then_validate_pass_and_a_second_synth_into_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "synth", "--out", str(out), "--num", "4", "--seed", "0", "--workers", "1", "--no-pesq"]) == 0
    assert "wrote 3 train + 1 test clips" in capsys.readouterr().out
    assert main(["data", "validate", str(out / "train.jsonl")]) == 0
    assert main(["data", "synth", "--out", str(out), "--num", "4", "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse refuses the flag, naming it (status 2)
        main(["data", "synth", "--out", str(tmp_path / "x"), "--num", "4", "--sample-rate", "8000"])
    assert exit_.value.code == 2 and "argument --sample-rate: must be >= 16000, got 8000" in capsys.readouterr().err


def test_import_of_a_csv_without_the_qualispeech_columns_fails_cleanly(tmp_path, capsys):
    (tmp_path / "a.csv").write_text("id,score\nx,3\n")
    assert main(["data", "import-qualispeech", "--csv", str(tmp_path / "a.csv"), "--audio-dir", str(tmp_path),
                 "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "missing column(s)" in capsys.readouterr().err
    assert main(["data", "import-qualispeech", "--csv", str(tmp_path / "none.csv"), "--audio-dir", str(tmp_path),
                 "--out", str(tmp_path / "m.jsonl")]) == 2
