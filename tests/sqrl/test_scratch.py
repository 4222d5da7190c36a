"""sqrl.scratch: a staging folder is removed only when its owner is gone."""
import os
import subprocess
import sys
import time

from sqrl.scratch import STALE_AFTER_S, _host, _start_ticks, remove_stale, staging_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(folder, seconds):
    past = time.time() - seconds
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (past, past))


def test_only_staging_folders_whose_owner_is_gone_are_removed(tmp_path):
    final = tmp_path / "corpus"
    mine = staging_dir(final)  # this process: alive
    (mine / "a.wav").write_bytes(b"x")
    dead = tmp_path / f".corpus.tmp-{_host()}-{_dead_pid()}-1-abc"
    reused = tmp_path / f".corpus.tmp-{_host()}-{os.getpid()}-{(_start_ticks(os.getpid()) or 0) + 7}-abc"  # pid reused
    other_host_fresh = tmp_path / ".corpus.tmp-00000000-1-1-abc"
    legacy_fresh = tmp_path / ".corpus.tmp-k2j4h1x0"  # named before owners were recorded
    legacy_old = tmp_path / ".corpus.tmp-q9w8e7r6"
    other_name = tmp_path / f".corpus2.tmp-{_host()}-{_dead_pid()}-1-abc"  # another folder's staging
    for folder in (dead, reused, other_host_fresh, legacy_fresh, legacy_old, other_name):
        (folder / "wav").mkdir(parents=True)
        (folder / "wav" / "a.wav").write_bytes(b"x")
    _age(legacy_old, STALE_AFTER_S + 60)
    assert sorted(p.name for p in remove_stale(final)) == sorted([dead.name, reused.name, legacy_old.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, other_host_fresh.name, legacy_fresh.name, other_name.name])
    assert mine.name.startswith(f".corpus.tmp-{_host()}-{os.getpid()}-")


def test_an_old_folder_with_a_recent_file_is_still_in_use(tmp_path):
    legacy = tmp_path / ".corpus.tmp-abcdefgh"
    (legacy / "wav").mkdir(parents=True)
    (legacy / "wav" / "old.wav").write_bytes(b"x")
    _age(legacy, STALE_AFTER_S * 3)
    (legacy / "wav" / "new.wav").write_bytes(b"y")  # a live build on another host just wrote this
    assert remove_stale(tmp_path / "corpus") == [] and legacy.is_dir()
