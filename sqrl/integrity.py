"""A sha256 manifest of every file of a checkpoint, written with it and checked before it is loaded.

Resuming loads files that run code when they are unpickled: DeepSpeed reads its engine state
(``mp_rank_00_model_states.pt``, the optimizer partitions) with ``torch.load(weights_only=False)``. Run
folders live on shared storage, so anyone who can write there could plant a callable. Each checkpoint
therefore carries ``sqrl_sha256.json``, written by the process that wrote the checkpoint (the GRPO driver
inside the temporary folder before its rename; the SFT trainer's save callback), and resuming refuses a
checkpoint whose manifest is missing, or whose files differ from it in any way: a changed, missing or
extra file, or a symbolic link. The manifest guards against changes after the write, not against an
attacker who can rewrite both the files and the manifest; keep run folders writable by their owner only.

``python -m sqrl.integrity verify DIR`` checks a checkpoint; ``python -m sqrl.integrity trust DIR`` records
a manifest for one you trust (written before sqrl kept manifests).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

MANIFEST = "sqrl_sha256.json"


class IntegrityError(RuntimeError):
    """A checkpoint that does not match its manifest, or has none."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(files, symbolic links) under ``folder`` as sorted POSIX paths relative to it, the manifest left out."""
    files, links = [], []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif name in names and rel != MANIFEST:
                files.append(rel)
    return sorted(files), sorted(links)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Hash every file under ``folder`` into ``folder/sqrl_sha256.json`` (written atomically); returns it."""
    folder = Path(folder)
    files, links = _entries(folder)
    if links:
        raise IntegrityError(f"{folder / links[0]}: a checkpoint may not hold symbolic links")
    manifest = {"algorithm": "sha256", "files": {rel: sha256_file(folder / rel) for rel in files}}
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder / MANIFEST


def verify_manifest(folder: str | os.PathLike) -> int:
    """Check ``folder`` against its manifest; returns the number of files checked.

    Raises ``IntegrityError`` naming the first file that is changed, missing, extra or a link, or the
    missing manifest."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise IntegrityError(
            f"{path} is missing: the checkpoint {folder} cannot be verified and is not loaded (loading runs "
            "pickled code). If it was written by an older sqrl and you trust it, record a manifest with "
            f"`python -m sqrl.integrity trust {folder}`; a save that was interrupted: remove {folder}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        expected = data["files"]
        if data.get("algorithm") != "sha256" or not isinstance(expected, dict):
            raise ValueError("not a sha256 manifest")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: unreadable manifest ({exc}); the checkpoint is not loaded") from None
    files, links = _entries(folder)
    if links:
        raise IntegrityError(f"{folder / links[0]}: a symbolic link in the checkpoint; it is not loaded")
    extra = sorted(set(files) - set(expected))
    if extra:
        raise IntegrityError(f"{folder / extra[0]}: not in the checkpoint's manifest {path} (added after the "
                             "checkpoint was written); the checkpoint is not loaded")
    for rel, digest in sorted(expected.items()):
        target = folder / rel
        if not target.is_file():
            raise IntegrityError(f"{target}: listed in {path} but missing; the checkpoint is not loaded")
        if sha256_file(target) != digest:
            raise IntegrityError(f"{target}: sha256 differs from the checkpoint's manifest {path} (changed after "
                                 "the checkpoint was written); the checkpoint is not loaded")
    return len(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqrl.integrity", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("verify", "trust"))
    parser.add_argument("folders", nargs="+", type=Path, help="checkpoint folders")
    args = parser.parse_args(argv)
    status = 0
    for folder in args.folders:
        if args.action == "trust":
            print(f"{write_manifest(folder)}: {len(_entries(folder)[0])} files recorded")
            continue
        try:
            print(f"{folder}: {verify_manifest(folder)} files match")
        except IntegrityError as exc:
            print(exc, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
