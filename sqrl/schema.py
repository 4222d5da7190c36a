"""Records, assessments and JSONL manifests.

A manifest is a JSONL file, one clip a line::

    {"id": "c0001", "audio": "wav/c0001.wav",
     "scores": {"speed": 3, "naturalness": 4, "noise": 2, ...},
     "artifacts": [{"kind": "noise", "start": 0.0, "end": 1.7, "text": "a steady hiss"}],
     "voice": "slightly robotic", "description": "The speech is clear but ...", "meta": {...}}

``audio`` is relative to the manifest's folder unless absolute. Every field but ``audio`` and
``id`` may be missing; a missing score is ``None``. ``voice`` is a short phrase on the voice's own
character, the evidence behind the naturalness score (QualiSpeech's "feeling of voice"); a synthetic
corpus written before the field existed gets it from ``meta.degradations.naturalness``
(``sqrl.data.labels.voice_text``). Validation errors name the file, line and field (``ManifestError``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sqrl.data.labels import voice_text
from sqrl.dimensions import ARTIFACT_KINDS, DIMENSIONS, SCORE_MAX, SCORE_MIN, valid_score
from sqrl.fsutil import atomic_file


@dataclass
class Artifact:
    """One audio artifact: its kind, time interval in seconds and a brief description."""

    kind: str
    start: float
    end: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "text": self.text}


def empty_scores() -> dict[str, int | None]:
    return {d: None for d in DIMENSIONS}


@dataclass
class Assessment:
    """What a model said about a clip: scores per dimension, artifacts, the voice and a long description.

    Produced by ``sqrl.response.parse``; any field the text lacked is ``None`` (scores, voice) or empty.
    ``voice`` is a short phrase on the voice's character ("natural", "strongly robotic"): whole-clip
    evidence for the naturalness score, as an artifact line is for noise, distortion and continuity.
    """

    scores: dict[str, int | None] = field(default_factory=empty_scores)
    artifacts: list[Artifact] = field(default_factory=list)
    description: str | None = None
    voice: str | None = None

    def artifacts_of(self, kind: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scores": dict(self.scores),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "description": self.description,
        }
        if self.voice is not None:  # absent rather than null, so manifests without it stay as they were
            out["voice"] = self.voice
        return out


@dataclass
class Record(Assessment):
    """A clip with its reference annotation (the same fields as an ``Assessment``)."""

    audio: str = ""
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "audio": self.audio}
        out.update(Assessment.to_dict(self))
        if self.meta:
            out["meta"] = self.meta
        return out

    def assessment(self) -> Assessment:
        return Assessment(dict(self.scores), list(self.artifacts), self.description, self.voice)


class ManifestError(ValueError):
    """A manifest line that does not validate; the message names file, line and field."""

    def __init__(self, source: str, line: int, field_name: str, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field_name, problem
        super().__init__(f"{source}:{line}: field '{field_name}': {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_from_dict(obj: Any, source: str = "<dict>", line: int = 0) -> Record:
    """Build a validated ``Record`` from a decoded JSON object, raising ``ManifestError``."""

    def fail(name: str, problem: str) -> ManifestError:
        return ManifestError(source, line, name, problem)

    if not isinstance(obj, dict):
        raise fail("<line>", f"expected a JSON object, got {type(obj).__name__}")
    audio = obj.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise fail("audio", "missing or not a non-empty string")
    rid = obj.get("id", "")
    if not isinstance(rid, (str, int)):
        raise fail("id", "must be a string")
    scores = empty_scores()
    raw_scores = obj.get("scores", {}) or {}
    if not isinstance(raw_scores, dict):
        raise fail("scores", "must be an object of dimension -> integer 1-5")
    for key, value in raw_scores.items():
        if key not in DIMENSIONS:
            raise fail(f"scores.{key}", f"unknown dimension; known: {', '.join(DIMENSIONS)}")
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not valid_score(value):
            raise fail(f"scores.{key}", f"{value!r} is not an integer in {SCORE_MIN}-{SCORE_MAX}")
        scores[key] = value
    artifacts = []
    raw_artifacts = obj.get("artifacts", []) or []
    if not isinstance(raw_artifacts, list):
        raise fail("artifacts", "must be a list")
    for i, art in enumerate(raw_artifacts):
        where = f"artifacts[{i}]"
        if not isinstance(art, dict):
            raise fail(where, "must be an object with kind, start, end, text")
        kind = art.get("kind")
        if kind not in ARTIFACT_KINDS:
            raise fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
        start, end = art.get("start"), art.get("end")
        if not _number(start) or start < 0:
            raise fail(f"{where}.start", f"{start!r} is not a non-negative number of seconds")
        if not _number(end) or end < start:
            raise fail(f"{where}.end", f"{end!r} is not a number of seconds >= start")
        text = art.get("text", "")
        if not isinstance(text, str) or len(text.splitlines()) > 1:
            raise fail(f"{where}.text", "must be a single-line string")
        artifacts.append(Artifact(kind, float(start), float(end), text.strip()))
    description = obj.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", "must be a string or null")
    meta = obj.get("meta", {}) or {}
    if not isinstance(meta, dict):
        raise fail("meta", "must be an object")
    voice = obj.get("voice")
    if voice is not None and (not isinstance(voice, str) or len(voice.splitlines()) > 1):
        raise fail("voice", "must be a single-line string or null")
    voice = (voice or "").strip() or None
    if voice is None:
        try:
            voice = _synth_voice(meta)
        except ValueError as exc:
            raise fail("meta.degradations.naturalness", str(exc)) from None
    return Record(
        scores=scores,
        artifacts=artifacts,
        description=description.strip() if description else None,
        voice=voice,
        audio=audio,
        id=str(rid),
        meta=meta,
    )


def _synth_voice(meta: dict[str, Any]) -> str | None:
    """The voice phrase of a synthetic clip whose manifest predates the ``voice`` field, from the
    degradation it records (``meta.degradations.naturalness``: ``None`` for an untouched voice); a record
    that is not synthetic has none. ``ValueError`` for a synthetic record whose degradation is not one."""
    degradations = meta.get("degradations")
    if not str(meta.get("generator", "")).startswith("sqrl-synth") or not isinstance(degradations, dict) \
            or "naturalness" not in degradations:
        return None
    nat = degradations["naturalness"]
    try:
        return voice_text(nat)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{nat!r} is not a naturalness degradation of the synthetic corpus "
                         "(None, or kind monotone/robotic/warble and level 1-4)") from None


def read_manifest(path: str | os.PathLike, resolve_audio: bool = True) -> list[Record]:
    """Read and validate a JSONL manifest. Audio paths become absolute when ``resolve_audio``.

    Raises ``ManifestError`` at the first bad line, naming the line and field; blank lines are skipped.
    """
    path = Path(path)
    records = []
    base = path.parent
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ManifestError(str(path), lineno, "<line>", f"invalid JSON: {exc.msg}") from None
            rec = record_from_dict(obj, str(path), lineno)
            if resolve_audio and not os.path.isabs(rec.audio):
                rec.audio = str((base / rec.audio).resolve())
            if not rec.id:
                rec.id = Path(rec.audio).stem
            records.append(rec)
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Record], relative_to: str | None = None) -> None:
    """Write records as JSONL atomically; audio paths are made relative to the manifest folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(relative_to) if relative_to else path.parent
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            obj = rec.to_dict()
            audio = Path(rec.audio)
            if audio.is_absolute():
                try:
                    obj["audio"] = str(audio.resolve().relative_to(base.resolve()))
                except ValueError:
                    obj["audio"] = str(audio)
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
