"""Check a manifest and its audio before training on it, and optionally write a clean copy.

Errors (the line cannot be used): invalid JSON or fields, labels out of range or missing, a
duplicate id, audio that ``sqrl.audio`` calls unusable (missing, unreadable, empty, shorter than
the model's minimum, over the length limit, NaN/inf samples: the rule every loader applies),
artifacts that end after the clip. Warnings (usable after a fix): a sample rate other
than the target or more than one channel (``--fix`` resamples to 16 kHz mono), no description.
``--fix`` writes the lines without errors and reports every line it drops, with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sqrl.audio import AudioError, audio_info, check_wave, header_problem, read_audio, resample, save_audio, to_mono
from sqrl.dimensions import DIMENSIONS
from sqrl.schema import ManifestError, Record, record_from_dict, write_manifest

ARTIFACT_TOLERANCE_S = 0.05
MAX_LISTED = 200


@dataclass
class Issue:
    """One problem on one manifest line; ``category`` is what the summary counts."""

    line: int
    clip_id: str
    category: str
    detail: str
    error: bool = True

    def format(self, source: str) -> str:
        level = "error" if self.error else "warning"
        return f"{source}:{self.line}: {level}: [{self.clip_id}] {self.category}: {self.detail}"


@dataclass
class CheckedLine:
    line: int
    record: Record | None
    issues: list[Issue] = field(default_factory=list)
    sample_rate: int | None = None
    channels: int | None = None

    @property
    def ok(self) -> bool:
        return self.record is not None and not any(i.error for i in self.issues)


@dataclass
class ValidationReport:
    """Every checked line of a manifest and the counts per category."""

    manifest: Path
    lines: list[CheckedLine] = field(default_factory=list)

    @property
    def issues(self) -> list[Issue]:
        return [i for c in self.lines for i in c.issues]

    @property
    def n_errors(self) -> int:
        return sum(1 for c in self.lines if not c.ok)

    def counts(self) -> Counter:
        return Counter(("error: " if i.error else "warning: ") + i.category for i in self.issues)

    def format(self) -> str:
        n = len(self.lines)
        head = f"{self.manifest}: {n} lines, {n - self.n_errors} usable, {self.n_errors} with errors"
        out = [head] + [f"  {k}: {v}" for k, v in sorted(self.counts().items())]
        issues = self.issues
        out += [i.format(str(self.manifest)) for i in issues[:MAX_LISTED]]
        if len(issues) > MAX_LISTED:
            out.append(f"... and {len(issues) - MAX_LISTED} more issues")
        return "\n".join(out)


def _check_labels(rec: Record, lineno: int) -> list[Issue]:
    issues = []
    missing = [d for d in DIMENSIONS if rec.scores.get(d) is None]
    if missing:
        issues.append(Issue(lineno, rec.id, "missing label", ", ".join(missing)))
    if not rec.description:
        issues.append(Issue(lineno, rec.id, "no description", "the long-form description is empty", error=False))
    return issues


def _check_audio(checked: CheckedLine, max_seconds: float, sampling_rate: int) -> None:
    # The usability rule is sqrl.audio's (the one every loader applies); only the warnings are ours.
    rec, add = checked.record, checked.issues.append
    try:
        info = audio_info(rec.audio)
        problem = header_problem(info, max_seconds)
        if problem is not None:
            raise AudioError(rec.audio, *reversed(problem))
        checked.sample_rate, checked.channels = info.sample_rate, info.channels
        wave, _ = read_audio(rec.audio)
        check_wave(wave, rec.audio)
    except AudioError as exc:
        add(Issue(checked.line, rec.id, exc.category, f"{exc.problem} ({rec.audio})"))
        return
    if info.sample_rate != sampling_rate:
        add(Issue(checked.line, rec.id, "wrong sample rate", f"{info.sample_rate} Hz, not {sampling_rate} Hz "
                  "(--fix resamples)", error=False))
    if info.channels != 1:
        add(Issue(checked.line, rec.id, "not mono", f"{info.channels} channels (--fix mixes down)", error=False))
    late = [a for a in rec.artifacts if a.end > info.duration + ARTIFACT_TOLERANCE_S]
    if late:
        add(Issue(checked.line, rec.id, "artifact after clip end",
                  f"{late[0].kind} {late[0].start:g}-{late[0].end:g}s in a {info.duration:.2f}s clip"))


def _parse_line(raw: str, lineno: int, source: str, base: Path, seen: set[str]) -> CheckedLine:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return CheckedLine(lineno, None, [Issue(lineno, "?", "invalid line", f"invalid JSON: {exc.msg}")])
    clip_id = str(obj.get("id", "?")) if isinstance(obj, dict) else "?"
    try:
        rec = record_from_dict(obj, source, lineno)
    except ManifestError as exc:
        category = "label out of range" if exc.field.startswith("scores.") else "invalid line"
        return CheckedLine(lineno, None, [Issue(lineno, clip_id, category, f"{exc.field}: {exc.problem}")])
    if not os.path.isabs(rec.audio):
        rec.audio = str((base / rec.audio).resolve())
    rec.id = rec.id or Path(rec.audio).stem
    checked = CheckedLine(lineno, rec, _check_labels(rec, lineno))
    if rec.id in seen:
        checked.issues.append(Issue(lineno, rec.id, "duplicate id", "an earlier line has the same id"))
    seen.add(rec.id)
    return checked


def validate_manifest(path: str | os.PathLike, max_seconds: float = 30.0, sampling_rate: int = 16000
                      ) -> ValidationReport:
    """Check every line of ``path`` (never stopping at the first problem) and its audio.

    Raises ``FileNotFoundError`` only when the manifest itself cannot be opened.
    """
    path = Path(path)
    report = ValidationReport(path)
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        raw_lines = [(i, raw) for i, raw in enumerate(fh, start=1) if raw.strip()]
    for lineno, raw in tqdm(raw_lines, desc="validate", unit="clip", mininterval=1.0, disable=len(raw_lines) < 200):
        checked = _parse_line(raw, lineno, str(path), path.parent, seen)
        if checked.record is not None:
            _check_audio(checked, max_seconds, sampling_rate)
        report.lines.append(checked)
    return report


def fixed_audio_name(clip_id: str) -> str:
    """A file name for ``clip_id`` that no other id shares: the id made safe for a file system (ids may
    hold '/', as QualiSpeech's do) and cut to a sane length, plus a short hash of the raw id, so that
    ``spk/1`` and ``spk_1`` (or ``A`` and ``a`` on a case-insensitive disk) get different files.

    >>> fixed_audio_name("spk/1") != fixed_audio_name("spk_1")
    True
    """
    safe = re.sub(r"[^\w.-]", "_", clip_id)[:80].lstrip(".") or "clip"
    return f"{safe}-{hashlib.sha256(clip_id.encode('utf-8')).hexdigest()[:10]}"


def _save_new(audio_dir: Path, clip_id: str, wave: np.ndarray, sampling_rate: int) -> Path:
    """Save under a name nobody holds yet: an existing file (an earlier ``--fix`` into the same folder,
    or anything else) is never overwritten; the next free ``-2``, ``-3``... name is taken instead."""
    stem = fixed_audio_name(clip_id)
    for n in range(1, 10_000):
        path = audio_dir / (f"{stem}.wav" if n == 1 else f"{stem}-{n}.wav")
        try:
            return save_audio(path, wave, sampling_rate, overwrite=False)
        except FileExistsError:
            continue
    raise FileExistsError(f"{audio_dir}: no free file name for clip {clip_id!r}")


def fix_manifest(report: ValidationReport, out: str | os.PathLike, sampling_rate: int = 16000
                 ) -> tuple[int, list[str]]:
    """Write the usable lines of ``report`` to ``out``; audio at another rate or with several
    channels is resampled to mono ``sampling_rate`` into ``<out stem>_audio/`` (one new file per clip,
    named by ``fixed_audio_name``; no existing file is overwritten). Returns the number
    of records written and one message per dropped line (nothing is dropped without one)."""
    out = Path(out)
    audio_dir = out.parent / f"{out.stem}_audio"
    kept, dropped = [], []
    for checked in report.lines:
        if not checked.ok:
            reasons = "; ".join(f"{i.category}: {i.detail}" for i in checked.issues if i.error)
            dropped.append(f"{report.manifest}:{checked.line}: dropped [{checked.issues[0].clip_id}] {reasons}")
            continue
        rec = checked.record
        if checked.sample_rate != sampling_rate or checked.channels != 1:
            wave, sr = read_audio(rec.audio)
            fixed = resample(to_mono(wave), sr, sampling_rate)
            rec.meta = {**rec.meta, "fixed_from": rec.audio}
            rec.audio = str(_save_new(audio_dir, rec.id, fixed, sampling_rate).resolve())
        kept.append(rec)
    write_manifest(out, kept)
    return len(kept), dropped
