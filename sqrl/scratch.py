"""Staging folders for atomic writes, and the sweep that removes the ones a killed process left.

A folder that must appear complete or not at all (a corpus, a merged model) is built in a hidden
sibling ``.<name>.tmp-<host>-<pid>-<start>-<random>`` and renamed into place. If the builder is
killed (``kill -9``, a lost node), the staging folder stays; ``remove_stale`` on the next build
deletes it, but only when it is sure the owner is gone:

* the owner ran on this host: its pid is dead, or now belongs to a process started at another
  time (a reused pid);
* the owner is unknown (another host, or a folder from before owners were recorded): nothing in
  the folder has changed for ``STALE_AFTER_S``, an hour, while a live build writes every second.

A concurrent build's folder is therefore never touched.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc), or None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, but then not our builder unless the start matches
        pass
    now = _start_ticks(pid)
    return now is None or start == 0 or now == start


def staging_dir(final: str | os.PathLike) -> Path:
    """A new, empty staging folder beside ``final`` whose name records its owner (this process)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    prefix = f".{final.name}.tmp-{_host()}-{pid}-{_start_ticks(pid) or 0}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name), follow_symlinks=False).st_mtime)
            except OSError:
                continue
    return newest


def is_stale(folder: Path, final_name: str) -> bool:
    """Whether ``folder`` is a staging folder for ``final_name`` whose owner is gone (module doc)."""
    owned = re.fullmatch(rf"\.{re.escape(final_name)}\.tmp-([0-9a-f]{{8}})-(\d+)-(\d+)-[^/]+", folder.name)
    if owned and owned.group(1) == _host():
        return not _alive(int(owned.group(2)), int(owned.group(3)))
    try:
        return time.time() - _newest_mtime(folder) > STALE_AFTER_S
    except OSError:  # removed meanwhile
        return False


def remove_stale(final: str | os.PathLike) -> list[Path]:
    """Delete the staging folders of ``final`` whose owners are gone; returns what was removed."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    removed = []
    for folder in final.parent.glob(f".{glob_escape(final.name)}.tmp-*"):
        if folder.is_dir() and not folder.is_symlink() and is_stale(folder, final.name):
            log.warning("removing %s, left by a build that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
