"""``sqrl assess``: judge recordings with a trained model, for people who just want the judgement.

    sqrl assess a.wav b.flac recordings/ --model runs/tiny/grpo            # a table on the terminal
    sqrl assess a.wav b.flac --model runs/tiny/grpo --json > judged.json   # a JSON list for scripts

For every file: a 1-5 score per dimension, the artifacts heard with their time intervals, and the
description (when the model was trained to write one). The model is asked with the prompt it was
trained with (``prompts.training_prompts``), audio of any rate or channel count is mixed to mono and
resampled to 16 kHz as ``sqrl eval`` does, and clips are generated greedily in batches.

A file that cannot be judged (missing, not audio, empty, NaN samples, longer than the limit, or
audio the model refuses) gets an error of its own: a line on stderr and an ``error`` field in JSON;
the other files are still judged. A file that is judged but not as given says so: ``judged_seconds``
is the audio the model heard (a file longer than the model's window is cut to it) and ``warnings``
lists what was done to the clip or is odd about it (cut, resampled, mixed to mono, all-zero, silent,
far too quiet or loud, clipped); both are in JSON, the table and on stderr. The exit status is 0 when at least one file was judged and 1 when
every file failed. An answer the parser cannot read as scores is not an error: its scores are null,
its raw text is kept and stderr says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from sqrl.audio import AUDIO_EXTENSIONS, SAMPLING_RATE, AudioError, find_audio_files, load_audio
from sqrl.config import arg_range
from sqrl.dimensions import ARTIFACT_DISPLAY_NAMES, DIMENSIONS
from sqrl.evaluate import Generator, _combine
from sqrl.prompts import PROMPTINGS, Rubric, training_prompts
from sqrl.schema import Assessment

log = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 30.0
# Levels of the judged audio (RMS in dB re full scale). Speech recorded with care sits around -35 to -15
# dBFS; outside these bounds a judgement says more about the level than about the speech.
SILENT_DBFS = -60.0
QUIET_DBFS = -45.0
LOUD_DBFS = -6.0
CLIPPED_FRACTION = 0.01  # share of samples at full scale (|x| >= 0.999) that makes a clip "clipped"
SHORT_NAMES = {"speed": "speed", "naturalness": "nat.", "noise": "noise", "distortion": "distort.",
               "listening_effort": "effort", "continuity": "cont.", "overall": "overall"}


@dataclass
class Judgement:
    """One file's result: the parsed answer and raw text, or the reason it could not be judged."""

    file: str
    assessment: Assessment | None = None
    text: str = ""
    error: str | None = None
    duration: float | None = None  # seconds of audio read (before the model's own window)
    asked: tuple[str, ...] = field(default_factory=lambda: tuple(DIMENSIONS))
    judged_seconds: float | None = None  # seconds the model heard: ``duration`` cut to the model's window
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def missing_scores(self) -> list[str]:
        """Dimensions the model was asked about whose score could not be read from its answer."""
        if not self.ok:
            return []
        scores = self.assessment.scores if self.assessment else {}
        return [d for d in self.asked if scores.get(d) is None]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for this file; the same keys and types whether it was judged or failed."""
        answer = self.assessment or Assessment()
        return {
            "file": self.file,
            "duration": None if self.duration is None else round(self.duration, 3),
            "judged_seconds": None if self.judged_seconds is None else round(self.judged_seconds, 3),
            "warnings": list(self.warnings),
            "scores": {d: answer.scores.get(d) for d in DIMENSIONS},
            "artifacts": [a.to_dict() for a in answer.artifacts],
            "description": answer.description,
            "voice": answer.voice,
            "missing_scores": self.missing_scores,
            "text": self.text if self.ok else None,
            "error": self.error,
        }


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The files to judge: each path as given, a directory replaced by its wav/flac/ogg files (sorted).
    A directory without audio stays in the list as itself, so it is reported rather than dropped."""
    out: list[str] = []
    for path in paths:
        path = str(path)
        if os.path.isdir(path):
            found = find_audio_files(path)
            out += [str(p) for p in found] if found else [path]
        else:
            out.append(path)
    return out


def model_max_seconds(model_spec: str | os.PathLike) -> float:
    """The clip-length limit the model was trained with (``data.max_seconds``), else 30 s."""
    cfg = Path(model_spec) / "sqrl_config.yaml"
    if cfg.is_file():
        value = ((yaml.safe_load(cfg.read_text()) or {}).get("data") or {}).get("max_seconds")
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return DEFAULT_MAX_SECONDS


def prompts_for(rubric: Rubric, prompting: str) -> list[tuple[str | None, str]]:
    """``(dimension or None, prompt)`` for one file: one per dimension under ``per_dimension``
    prompting (as the model was calibrated), else the single all-dimension or long-form prompt."""
    if prompting == "per_dimension":
        return [(dim, rubric.per_dimension(dim)) for dim in DIMENSIONS]
    if prompting == "all_dimensions":
        return [(None, rubric.all_dimensions())]
    if prompting == "long_form":
        return [(None, rubric.long_form())]
    raise ValueError(f"unknown prompting {prompting!r}; choose one of {', '.join(PROMPTINGS)}")


def _read(path: str, max_seconds: float | None) -> tuple[Any, str | None]:
    """(16-kHz mono wave, None) or (None, why it cannot be judged)."""
    if os.path.isdir(path):
        return None, f"a directory with no {'/'.join(e.lstrip('.') for e in AUDIO_EXTENSIONS)} files"
    try:
        wave = load_audio(path, sampling_rate=SAMPLING_RATE, max_seconds=max_seconds)
    except AudioError as exc:  # the one usability rule (sqrl.audio), as validate and training apply it
        return None, exc.problem
    return wave, None


def model_window_seconds(generator: Any) -> float | None:
    """Seconds of a clip the model hears: a Qwen2-Audio encoder cuts a clip at its window (30 s); AF3
    splits a clip into windows up to its processor's ``max_audio_len`` (600 s). None when unknown."""
    processor = getattr(generator, "processor", None)
    extractor = getattr(processor, "feature_extractor", None)
    family = getattr(getattr(generator, "backbone", None), "family", None)
    if extractor is not None and getattr(family, "truncates_long_audio", False):
        return extractor.n_samples / extractor.sampling_rate
    max_len = getattr(processor, "max_audio_len", None)
    return float(max_len) if max_len else None


def inspect_clip(path: str, wave: Any, window_seconds: float | None) -> tuple[Any, float, list[str]]:
    """``(the wave the model will hear, its seconds, warnings)``: the wave cut to the model's window, and
    what was done to the clip or is odd about its level (measured on the part that is judged)."""
    import numpy as np

    from sqrl.audio import audio_info

    warnings = []
    duration = len(wave) / SAMPLING_RATE
    if window_seconds is not None and duration > window_seconds:
        wave = wave[:int(round(window_seconds * SAMPLING_RATE))]
        warnings.append(f"cut to the model's {window_seconds:g}-s window: only the first {window_seconds:g} s "
                        f"of {duration:.2f} s were judged")
    try:
        info = audio_info(path)
        if info.sample_rate != SAMPLING_RATE:
            warnings.append(f"resampled from {info.sample_rate} Hz to {SAMPLING_RATE} Hz")
        if info.channels > 1:
            warnings.append(f"mixed {info.channels} channels to mono")
    except AudioError:  # it was just read; a file replaced meanwhile only loses these two notes
        pass
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    level = 20 * np.log10(rms) if rms > 0 else -np.inf
    if peak == 0:
        warnings.append("all samples are zero (digital silence): the judgement describes no speech")
    elif level < SILENT_DBFS:
        warnings.append(f"silent: level {level:.0f} dBFS (speech is usually -35 to -15 dBFS)")
    elif level < QUIET_DBFS:
        warnings.append(f"far too quiet: level {level:.0f} dBFS (speech is usually -35 to -15 dBFS)")
    elif level > LOUD_DBFS:
        warnings.append(f"far too loud: level {level:.0f} dBFS (speech is usually -35 to -15 dBFS)")
    clipped = float(np.mean(np.abs(wave) >= 0.999)) if len(wave) else 0.0
    if clipped >= CLIPPED_FRACTION:
        warnings.append(f"clipped: {clipped:.1%} of samples at full scale")
    return wave, len(wave) / SAMPLING_RATE, warnings


def _generate(generator: Generator, waves: list, prompts: list[str]) -> list[str | Exception]:
    """One batched generate; if the batch fails, each request alone, so one clip the model refuses
    costs only that clip its answer."""
    try:
        return list(generator(waves, prompts))
    except (ValueError, RuntimeError) as exc:
        if len(waves) == 1:
            return [exc]
    out: list[str | Exception] = []
    for wave, prompt in zip(waves, prompts):
        try:
            out.append(generator([wave], [prompt])[0])
        except (ValueError, RuntimeError) as exc:
            out.append(exc)
    return out


def judge(generator: Generator, files: Sequence[str], rubric: Rubric, prompting: str, *, batch_size: int = 8,
          max_seconds: float | None = DEFAULT_MAX_SECONDS, progress: bool = False) -> list[Judgement]:
    """Judge ``files`` with a loaded model, in their order; never raises for a bad file."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    asks = prompts_for(rubric, prompting)
    asked = tuple(d for d, _ in asks if d is not None) or tuple(DIMENSIONS)
    window = model_window_seconds(generator)
    results = [Judgement(str(f), asked=asked) for f in files]
    # Files are read a batch's worth at a time, so a long file list never sits in memory at once.
    files_per_chunk = max(1, batch_size // len(asks))
    bar = tqdm(total=len(files), desc="assess", unit="file", disable=not progress, file=sys.stderr)
    for start in range(0, len(results), files_per_chunk):
        chunk = results[start:start + files_per_chunk]
        waves = {}
        for res in chunk:
            wave, problem = _read(res.file, max_seconds)
            if problem is not None:
                res.error = problem
            else:
                res.duration = len(wave) / SAMPLING_RATE
                waves[id(res)], res.judged_seconds, res.warnings = inspect_clip(res.file, wave, window)
        requests = [(res, dim, prompt) for res in chunk if res.ok for dim, prompt in asks]
        answers: dict[int, list[tuple[str | None, str]]] = {}
        for b in range(0, len(requests), batch_size):
            batch = requests[b:b + batch_size]
            outputs = _generate(generator, [waves[id(r)] for r, _, _ in batch], [p for _, _, p in batch])
            for (res, dim, _), out in zip(batch, outputs):
                if isinstance(out, Exception):
                    res.error = res.error or f"the model cannot take this audio: {out}"
                else:
                    answers.setdefault(id(res), []).append((dim, out))
        for res in chunk:
            if res.ok:
                res.assessment, res.text = _combine(answers[id(res)])
        bar.update(len(chunk))
    bar.close()
    return results


def assess(model_spec: str | os.PathLike, files: Sequence[str | os.PathLike], *, batch_size: int = 8,
           max_new_tokens: int = 256, max_seconds: float | None = None, prompting: str | None = None,
           rubric: str | None = None, progress: bool = False) -> list[Judgement]:
    """Load a model directory (or backbone name) and judge ``files`` (directories expand to their audio).

    ``prompting``/``rubric`` default to what the model was trained with; ``max_seconds`` to its
    training limit (30 s when unknown)."""
    import torch

    from sqrl.models import load_model

    trained_prompting, trained_rubric = training_prompts(model_spec)
    prompting = prompting or trained_prompting
    rubric_obj = Rubric(rubric or trained_rubric)
    limit = max_seconds if max_seconds is not None else model_max_seconds(model_spec)
    model, processor, backbone = load_model(model_spec, dtype=torch.float32, merge=True)
    generator = Generator(model, processor, backbone, max_new_tokens=max_new_tokens)
    return judge(generator, expand_inputs(files), rubric_obj, prompting, batch_size=batch_size,
                 max_seconds=limit, progress=progress)


# ------------------------------------------------------------------------------------------ output
def format_table(results: Sequence[Judgement], width: int | None = None) -> str:
    """Scores of every file in one table, then each judged file's artifacts and description."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    name_w = min(max([len("file")] + [len(r.file) for r in results]), 48)
    heads = [SHORT_NAMES[d] for d in DIMENSIONS]

    def cut(name: str) -> str:
        return name if len(name) <= name_w else "..." + name[-(name_w - 3):]

    lines = ["  ".join([f"{'file':<{name_w}}", *heads])]
    for r in results:
        if not r.ok:
            lines.append(f"{cut(r.file):<{name_w}}  error: {r.error}")
            continue
        cells = [f"{'-' if r.assessment.scores.get(d) is None else r.assessment.scores[d]:>{len(h)}}"
                 for d, h in zip(DIMENSIONS, heads)]
        flag = [f"! {len(r.warnings)} warning{'s' * (len(r.warnings) > 1)}"] if r.warnings else []
        lines.append("  ".join([f"{cut(r.file):<{name_w}}", *cells, *flag]))
    wrap = textwrap.TextWrapper(width=max(40, width), initial_indent="  ", subsequent_indent="    ")
    for r in results:
        if not r.ok:
            continue
        lines += ["", r.file]
        if r.judged_seconds is not None:
            cut_off = r.duration is not None and r.judged_seconds < r.duration - 1e-6
            lines.append(f"  judged {r.judged_seconds:.2f} s" + (f" of {r.duration:.2f} s" if cut_off else ""))
        for warning in r.warnings:
            lines += wrap.wrap(f"warning: {warning}")
        if r.assessment.artifacts:
            for a in sorted(r.assessment.artifacts, key=lambda a: (a.start, a.end)):
                text = f": {a.text}" if a.text else ""
                lines += wrap.wrap(f"{ARTIFACT_DISPLAY_NAMES[a.kind]} {a.start:.2f}-{a.end:.2f} s{text}")
        else:
            lines.append("  no artifacts named")
        if r.assessment.voice:
            lines += wrap.wrap(f"Voice: {r.assessment.voice}")
        unreadable = len(r.missing_scores) == len(r.asked)  # then the raw answer below says it all
        if r.assessment.description and not unreadable:
            lines += wrap.wrap(f"Description: {r.assessment.description}")
        if r.missing_scores:
            raw = " ".join(r.text.split())
            raw = raw if len(raw) <= 200 else raw[:197] + "..."
            lines += wrap.wrap(f"(no score read for {', '.join(r.missing_scores)}; the answer was: {raw!r})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assess", help="judge recordings: scores per dimension, artifacts with times, description",
                       description="Judge one or many recordings with a trained model. Prints a table, or with "
                       "--json a JSON list of one object per file. Files that cannot be judged get an error of "
                       "their own (stderr, and an 'error' field in JSON); the exit status is 1 only when every "
                       "file failed.")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files (wav/flac/ogg, any rate) or directories")
    p.add_argument("--model", required=True, help="model directory (sqrl sft/merge/grpo output) or backbone name")
    p.add_argument("--json", action="store_true", help="print a JSON list (one object per file) instead of a table")
    p.add_argument("--batch-size", type=arg_range(int, ge=1), default=8, help="prompts per generate call (default 8)")
    p.add_argument("--max-new-tokens", type=arg_range(int, ge=1), default=256)
    p.add_argument("--max-seconds", type=arg_range(float, gt=0), default=None,
                   help="refuse longer files (default: the model's training limit, else 30)")
    p.add_argument("--prompting", choices=PROMPTINGS, default=None, help="default: as the model was trained")
    p.add_argument("--rubric", default=None, help="rubric YAML (default: as the model was trained)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.batch_size < 1:
        raise SystemExit("sqrl assess: --batch-size must be >= 1")
    results = assess(args.model, args.audio, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                     max_seconds=args.max_seconds, prompting=args.prompting, rubric=args.rubric,
                     progress=sys.stderr.isatty())
    for r in results:
        if not r.ok:
            print(f"sqrl assess: {r.file}: {r.error}", file=sys.stderr)
            continue
        for warning in r.warnings:
            print(f"sqrl assess: {r.file}: warning: {warning}", file=sys.stderr)
        if r.missing_scores:
            print(f"sqrl assess: {r.file}: no score could be read for {', '.join(r.missing_scores)} "
                  "(the raw answer is kept)", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    failed = sum(not r.ok for r in results)
    if failed == len(results):
        print(f"sqrl assess: none of the {len(results)} file(s) could be judged", file=sys.stderr)
        return 1
    return 0
