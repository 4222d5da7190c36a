"""Import QualiSpeech CSV annotations into an sqrl manifest.

QualiSpeech gives scores per dimension and artifacts as free text with the times embedded
("sound similar to wind in the audio from 0-1.7s", "Not distorted", "0.5-0.8s"). This module
parses the intervals out of the text into ``Artifact``s (the brief text keeps what is left), and
imports every row: odd scores are rounded or clamped and flagged, never dropped. Every repair is
noted in the record's ``meta["import_flags"]`` as ``"<category>: <detail>"`` and counted by
category in ``ImportSummary``.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqrl.audio import AUDIO_EXTENSIONS, AudioError, audio_info
from sqrl.dimensions import SCORE_MAX, SCORE_MIN
from sqrl.schema import Artifact, Record, empty_scores, write_manifest

log = logging.getLogger(__name__)

SCORE_COLUMNS: dict[str, str] = {
    "speed": "speed",
    "naturalness": "naturalness",
    "background noise": "noise",
    "distortion": "distortion",
    "listening effort": "listening_effort",
    "continuity": "continuity",
    "overall quality": "overall",
}
ARTIFACT_COLUMNS: dict[str, str] = {
    "noise description": "noise",
    "distortion description": "distortion",
    "unnatural pause": "unnatural_pause",
}
OTHER_COLUMNS = ("id", "feeling of voice", "natural language description")
DEFAULT_TEXT = {"noise": "noise", "distortion": "distortion", "unnatural_pause": "unnatural pause"}

_NUM = r"\d+(?:[.,]\d+)?|\.\d+"
_UNIT = r"(?:s|sec|secs|second|seconds)\b"
_NOT_TIME = r"(?!\s*(?:hz|khz|db|%|ms\b))"
# A range: "0-1.7s", "1.2 s to 1.5 s", "from 0 to 1.7 seconds", "between 1 and 2 s", "0~1.7s".
_RANGE = re.compile(
    rf"(?:(?:(?P<btw>\bbetween\s+)|(?P<kw>\b(?:from|at|in|during|around)\s+))?(?P<a>{_NUM})\s*(?:{_UNIT})?\s*"
    rf"(?:-|–|—|~|\bto\b|\buntil\b|(?(btw)\band\b|(?!)))\s*(?P<b>{_NUM})\s*(?P<unit>{_UNIT})?){_NOT_TIME}",
    re.IGNORECASE,
)
# A single time: "at 1.5s", "around 2 seconds".
_POINT = re.compile(rf"(?:\b(?:at|around|near)\s+)?(?P<a>{_NUM})\s*{_UNIT}", re.IGNORECASE)
# Phrases that say "the whole clip"; stripped from the brief text (the interval carries that).
_WHOLE = re.compile(
    r"(?:\b(?:throughout|over|across|during|in|for)\s+)?(?:the\s+)?\b(?:entire|whole)\s+"
    r"(?:audio|clip|recording|speech|utterance|sample|time|duration)\b"
    r"|\bthroughout(?:\s+the\s+(?:audio|clip|recording|speech|utterance|sample))?\b|\ball (?:the time|along)\b",
    re.IGNORECASE,
)
_NEGATIVE = re.compile(
    r"^\s*(?:none|no|not|nothing|without|n/?a|nan|null|clean|absent|imperceptible|undetectable|-+)\b",
    re.IGNORECASE,
)
_LEAD = re.compile(r"^(?:\s|[,;:.\-]|\band\b|\balso\b|\bthen\b|\bplus\b|\bwhile\b|\bwith\b)+", re.IGNORECASE)
_TRAIL = re.compile(
    r"(?:\s|[,;:.\-(]|\band\b|\bfrom\b|\bat\b|\bbetween\b|\bduring\b|\baround\b|\bin\b|\bis\b|"
    r"\b(?:in|throughout|over|across|during|of)\s+the\s+(?:audio|clip|recording|speech|utterance|sample)\b)+$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedArtifact:
    """One artifact read from free text; ``start``/``end`` None means 'the whole clip'."""

    text: str
    start: float | None
    end: float | None


def _num(s: str) -> float:
    return float(s.replace(",", "."))


def _is_range_match(m: re.Match) -> bool:
    """A range needs a keyword before it or a time unit after it, so '2-3 people' is not a time."""
    return bool(m.group("kw") or m.group("btw") or m.group("unit") or re.search(_UNIT, m.group(0), re.IGNORECASE))


def _clean_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    for _ in range(3):  # connectors can nest: ", and in the audio from"
        text = _TRAIL.sub("", _LEAD.sub("", text)).strip()
    text = text.strip(" ,;:.()[]\"'")
    return text[0].upper() + text[1:] if text else ""


def _time_spans(text: str) -> list[tuple[int, int, float, float]]:
    """(char start, char end, t0, t1) of every time range or point in ``text``, in order."""
    spans = [(m.start(), m.end(), _num(m.group("a")), _num(m.group("b")))
             for m in _RANGE.finditer(text) if _is_range_match(m)]
    taken = [(s, e) for s, e, _, _ in spans]
    for m in _POINT.finditer(text):
        if not any(s <= m.start() < e or s < m.end() <= e for s, e in taken):
            t = _num(m.group("a"))
            spans.append((m.start(), m.end(), t, t))
    return sorted(spans)


def parse_artifact_text(text: str | None) -> list[ParsedArtifact]:
    """Artifacts in one QualiSpeech description cell; ``[]`` when it says there are none.

    >>> parse_artifact_text("sound similar to wind in the audio from 0-1.7s")
    [ParsedArtifact(text='Sound similar to wind', start=0.0, end=1.7)]
    >>> parse_artifact_text("Not distorted")
    []

    Several intervals give several artifacts; each takes the text before it (or, when that is
    only a connector like "and", the previous artifact's text, or the text after the last time).
    A description without any time but not negative is one whole-clip artifact (start None).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    text = str(text).strip()
    spans = _time_spans(text)
    if not spans:
        if not text or _NEGATIVE.match(text):
            return []
        return [ParsedArtifact(_clean_text(_WHOLE.sub("", text)) or _clean_text(text), None, None)]
    pieces = [text[(spans[i - 1][1] if i else 0):spans[i][0]] for i in range(len(spans))]
    tail = _clean_text(text[spans[-1][1]:])
    out, previous = [], ""
    for piece, (_, _, t0, t1) in zip(pieces, spans):
        desc = _clean_text(piece) or previous or tail
        previous = desc
        out.append(ParsedArtifact(desc, t0, t1))
    return out


@dataclass
class ImportSummary:
    """Counts of everything the importer read, repaired or could not find."""

    rows: int = 0
    written: int = 0
    flags: Counter = field(default_factory=Counter)
    ignored_columns: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.rows} rows read, {self.written} records written (no row is dropped)"]
        lines += [f"  {name}: {count}" for name, count in sorted(self.flags.items())]
        if self.ignored_columns:
            lines.append(f"  columns ignored: {', '.join(self.ignored_columns)}")
        return "\n".join(lines)


def parse_score(raw: str | None) -> tuple[int | None, str | None]:
    """A 1-5 integer from a cell and the repair made: None, 'rounded', 'clamped', 'missing' or
    'unparseable'. Non-integers round half up (3.5 -> 4); values outside 1-5 are clamped."""
    if raw is None or not str(raw).strip() or str(raw).strip().lower() in {"nan", "na", "n/a", "none", "null"}:
        return None, "missing"
    try:
        value = _num(str(raw).strip())
    except ValueError:
        return None, "unparseable"
    if not math.isfinite(value):
        return None, "unparseable"
    flag = None
    if not float(value).is_integer():
        value, flag = math.floor(value + 0.5), "rounded"
    if not SCORE_MIN <= value <= SCORE_MAX:
        value, flag = min(max(value, SCORE_MIN), SCORE_MAX), "clamped"
    return int(value), flag


def _find_audio(audio_dir: Path, clip_id: str) -> Path | None:
    candidate = audio_dir / clip_id
    if candidate.suffix.lower() in AUDIO_EXTENSIONS and candidate.is_file():
        return candidate
    for ext in AUDIO_EXTENSIONS:
        if (audio_dir / f"{clip_id}{ext}").is_file():
            return audio_dir / f"{clip_id}{ext}"
    return None


def _header_map(fieldnames: list[str] | None, source: str) -> tuple[dict[str, str], list[str]]:
    """Normalised column name -> name in the file; raises on missing columns."""
    if not fieldnames:
        raise ValueError(f"{source}: empty CSV (no header)")
    norm = {re.sub(r"\s+", " ", f.strip().lower()): f for f in fieldnames if f is not None}
    wanted = [*OTHER_COLUMNS, *SCORE_COLUMNS, *ARTIFACT_COLUMNS]
    missing = [w for w in wanted if w not in norm]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(fieldnames)}")
    return norm, [norm[k] for k in norm if k not in wanted]


def _artifacts(row: dict, cols: dict[str, str], duration: float | None, flags: list[str]) -> list[Artifact]:
    arts = []
    for col, kind in ARTIFACT_COLUMNS.items():
        for p in parse_artifact_text(row.get(cols[col])):
            start, end = p.start, p.end
            if start is None:
                flags.append(f"no time given, whole clip assumed: {kind}")
                start, end = 0.0, duration if duration is not None else 0.0
                if duration is None:
                    flags.append(f"whole clip of unknown duration, end set to 0: {kind}")
            if end < start:
                start, end = end, start
                flags.append(f"reversed interval swapped: {kind} {end:g}-{start:g}s")
            if duration is not None and end > duration + 0.05:
                flags.append(f"interval after clip end, cut: {kind} {start:g}-{end:g}s in a {duration:.2f}s clip")
                start, end = min(start, round(duration, 3)), round(duration, 3)
            arts.append(Artifact(kind, float(start), float(end), p.text or DEFAULT_TEXT[kind]))
    return arts


def row_to_record(row: dict, cols: dict[str, str], audio_dir: Path, line: int) -> Record:
    """One CSV row as a ``Record``; repairs are listed in ``meta['import_flags']``."""
    flags: list[str] = []
    clip_id = (row.get(cols["id"]) or "").strip()
    if not clip_id:
        clip_id = f"row{line}"
        flags.append(f"missing id, named after its CSV line: {clip_id}")
    scores = empty_scores()
    for col, dim in SCORE_COLUMNS.items():
        raw = row.get(cols[col])
        scores[dim], flag = parse_score(raw)
        if flag:
            flags.append(f"score {flag}: {dim} {raw!r}")
    path = _find_audio(audio_dir, clip_id)
    duration = None
    if path is None:
        path = audio_dir / (clip_id if Path(clip_id).suffix.lower() in AUDIO_EXTENSIONS else f"{clip_id}.wav")
        flags.append(f"audio file not found: {path}")
    else:
        try:
            duration = audio_info(path).duration
        except AudioError as exc:
            flags.append(f"audio unreadable: {exc.problem}")
    artifacts = _artifacts(row, cols, duration, flags)
    description = (row.get(cols["natural language description"]) or "").strip() or None
    meta = {"source": "qualispeech", "csv_line": line,
            "feeling_of_voice": (row.get(cols["feeling of voice"]) or "").strip() or None,
            "raw": {col: row.get(cols[col]) for col in ARTIFACT_COLUMNS}}
    if flags:
        meta["import_flags"] = flags
    voice = " ".join((meta["feeling_of_voice"] or "").split()) or None  # the reference of the answer's voice line
    return Record(scores=scores, artifacts=artifacts, description=description, voice=voice,
                  audio=str(path.resolve()), id=clip_id, meta=meta)


def import_qualispeech(csv_path: str | os.PathLike, audio_dir: str | os.PathLike, out: str | os.PathLike
                       ) -> ImportSummary:
    """Read a QualiSpeech CSV and write an sqrl manifest at ``out``; every row becomes a record.

    Raises ``ValueError`` when the CSV lacks a required column. Audio paths are written relative
    to the manifest's folder when they lie under it, absolute otherwise.
    """
    csv_path, audio_dir = Path(csv_path), Path(audio_dir)
    summary = ImportSummary()
    records = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols, summary.ignored_columns = _header_map(reader.fieldnames, str(csv_path))
        for row in reader:
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                summary.flags["blank lines skipped"] += 1
                continue
            summary.rows += 1
            rec = row_to_record(row, cols, audio_dir, reader.line_num)
            for flag in rec.meta.get("import_flags", []):
                summary.flags[flag.split(":", 1)[0]] += 1
                log.warning("%s:%d (%s): %s", csv_path, reader.line_num, rec.id, flag)
            summary.flags["artifacts"] += len(rec.artifacts)
            records.append(rec)
    write_manifest(out, records)
    summary.written = len(records)
    return summary
