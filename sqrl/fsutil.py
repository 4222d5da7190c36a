"""Write a folder or a file so that a reader sees all of it or none of it.

Everything sqrl keeps on disk (corpora, tiny builds, merged models, checkpoints, manifests, audio)
is written under a temporary name beside its final place and renamed into place when complete;
a crash leaves only a hidden ``.NAME.tmp-*`` sibling, never a half-written ``NAME``.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> with atomic_dir(root / "model") as tmp:
...     _ = (tmp / "weights.bin").write_bytes(b"0")
>>> sorted(p.name for p in root.iterdir())
['model']
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sqrl.scratch import remove_stale, staging_dir

log = logging.getLogger(__name__)


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A fresh, empty, private folder ``.NAME.tmp-*`` in ``path``'s parent (made if missing), named
    after its owner; the ones a killed writer left for ``path`` are removed first (``sqrl.scratch``)."""
    remove_stale(path)
    return staging_dir(path)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, replace: bool = False,
            finished: Callable[[Path], bool] | None = None) -> bool:
    """Rename the complete folder ``tmp`` to ``path``; True if ours is now there.

    ``replace``: a folder already at ``path`` is removed first (a re-run replaces the old result).
    ``finished``: when the rename fails because another process put a folder at ``path`` first and
    ``finished(path)`` says that one is complete, keep it and return False (``tmp`` stays for the
    caller to remove). Otherwise a rename onto a non-empty folder raises ``OSError``.
    """
    tmp, path = Path(tmp), Path(path)
    if replace and path.exists():
        shutil.rmtree(path)
    try:
        os.rename(tmp, path)
    except OSError:
        if finished is None or not finished(path):
            raise
        log.info("another process finished %s first; using its copy", path)
        return False
    return True


@contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False,
               finished: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block ends without an error, rename it to
    ``path`` (``replace`` and ``finished`` as in :func:`publish`). The temporary folder is removed
    whatever happens, so a failed write leaves nothing behind."""
    tmp = temp_dir_beside(path)
    try:
        yield tmp
        publish(tmp, path, replace=replace, finished=finished)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` (same suffix); when the block ends without an
    error, the file written there replaces ``path``. On an error ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: the writer creates the file, so it gets the usual permissions, not mkstemp's 0600
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log (``metrics.jsonl``, ``samples.jsonl``); [] when the file is absent. A last
    line cut short by a kill is skipped with a warning; an unreadable line elsewhere is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):
                log.warning("%s: skipping its last line, cut short (%s)", path, exc)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from None
    return rows


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Keep the rows of a run log up to ``step`` (where a resumed run continues; 0 keeps none of the logged
    steps), so the log holds one run. A row without a ``step`` is kept; a torn last line is dropped
    (``read_jsonl``). The file is replaced in one step (``atomic_file``)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
