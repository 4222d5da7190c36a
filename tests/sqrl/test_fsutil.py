import os

import pytest

from sqrl.fsutil import atomic_dir, atomic_file, publish, temp_dir_beside


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_finished_folder_appears_under_its_name_and_nothing_else_is_left(tmp_path):
    with atomic_dir(tmp_path / "sub" / "model") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".model.tmp-")
        (tmp / "weights.bin").write_bytes(b"123")
    assert _names(tmp_path / "sub") == ["model"]
    assert (tmp_path / "sub" / "model" / "weights.bin").read_bytes() == b"123"


def test_an_error_inside_the_block_leaves_no_folder_and_no_temporary(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "half.bin").write_bytes(b"1")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_replace_swaps_an_old_folder_for_the_new_one(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "corpus", replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(tmp_path / "corpus") == ["new.txt"]


def test_without_replace_a_non_empty_folder_in_the_way_is_an_error_and_is_kept(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "theirs.txt").write_text("x")
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "ours.txt").write_text("y")
    assert _names(tmp_path) == ["model"] and _names(tmp_path / "model") == ["theirs.txt"]


def test_a_finished_copy_from_another_process_wins_the_race_and_ours_is_discarded(tmp_path):
    final = tmp_path / "build"
    tmp = temp_dir_beside(final)
    (tmp / "ours.txt").write_text("ours")
    final.mkdir()  # another process renamed its complete build into place meanwhile
    (final / "MARKER").write_text("done")
    assert publish(tmp, final, finished=lambda p: (p / "MARKER").is_file()) is False
    assert _names(final) == ["MARKER"]
    # an unfinished folder in the way is not ours to keep or delete: an error
    (final / "MARKER").unlink()
    (final / "junk").write_text("?")
    with pytest.raises(OSError):
        publish(tmp, final, finished=lambda p: (p / "MARKER").is_file())


def test_atomic_file_replaces_the_file_only_when_the_write_completes(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("old\n")
    with pytest.raises(ValueError):
        with atomic_file(path) as tmp, open(tmp, "w") as fh:
            fh.write("half")
            raise ValueError("stop")
    assert path.read_text() == "old\n" and _names(tmp_path) == ["train.jsonl"]
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".jsonl" and tmp.parent == tmp_path
        tmp.write_text("new\n")
    assert path.read_text() == "new\n" and _names(tmp_path) == ["train.jsonl"]
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    # the usual permissions of a new file (not mkstemp's private 0600): others can read a manifest
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_read_jsonl_skips_a_torn_last_line_and_names_a_bad_one_elsewhere(tmp_path, caplog):
    from sqrl.fsutil import read_jsonl

    assert read_jsonl(tmp_path / "absent.jsonl") == []
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # killed mid-write
    assert read_jsonl(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "cut short" in caplog.text
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_jsonl(log)


def test_truncate_jsonl_keeps_the_rows_up_to_the_resumed_step_and_drops_a_torn_line(tmp_path, caplog):
    import json

    from sqrl.fsutil import read_jsonl, truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)] + [{"note": "no step"}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    truncate_jsonl(log, 2)
    assert read_jsonl(log) == [rows[0], rows[1], rows[4]]
    assert log.read_text().endswith("\n")  # the next row appended starts on its own line
    truncate_jsonl(log, 0)
    assert read_jsonl(log) == [rows[4]]
    truncate_jsonl(tmp_path / "absent.jsonl", 3)
    assert not (tmp_path / "absent.jsonl").exists()
    assert _names(tmp_path) == ["metrics.jsonl"]  # no temporary left
