"""The synthetic degraded-speech corpus: clean speech, known degradations, labels true by rule.

``synthesize_corpus`` plans every clip in the parent process (split, voice, sentence, speed),
renders clips in a pool of worker processes (each clip draws its degradations from its own
``default_rng([seed, index])``, so output does not depend on scheduling), writes wavs and the
train/test manifests, and measures the labels' sanity (SNR per noise score, PESQ against the
clean source) into ``README.md``. ``ensure_corpus`` caches a corpus by (seed, num, sample rate).

The test split holds out voices (or speakers of ``--clean-dir``) and sentences.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sqrl.audio import SAMPLING_RATE, AudioError, audio_info, find_audio_files, resample, save_audio
from sqrl.config import bounded, check_ranges
from sqrl.data import labels
from sqrl.data.render import render_clip
from sqrl.data.sentences import make_sentence, sentence_id
from sqrl.data.sources import DEFAULT_MIN_SNR_DB, SourceCheck, inspect_source
from sqrl.data.tts import TTSError, all_voices
from sqrl.fsutil import atomic_dir
from sqrl.runtime import die_with_parent, sigterm_as_exit
from sqrl.schema import record_from_dict, write_manifest

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
GENERATOR = f"sqrl-synth v{SYNTH_VERSION}"
MIN_SAMPLE_RATE = 16000
WORDS_PER_SECOND_AT_175 = 3.65  # measured on eSpeak NG 1.52 with the sentences of sentences.py


@dataclass
class SynthConfig:
    """What ``sqrl data synth`` makes. ``workers`` 1 renders in this process (no pool)."""

    out: Path
    num: int = bounded(ge=1)
    seed: int = bounded(0, ge=0)
    sample_rate: int = bounded(SAMPLING_RATE, ge=MIN_SAMPLE_RATE)
    """Band-limiting needs the band: 16 kHz or more."""
    test_fraction: float = bounded(0.15, ge=0, lt=1)
    clean_dir: Path | None = None
    min_source_snr_db: float = DEFAULT_MIN_SNR_DB
    """A clean-dir recording noisier than this (estimated) is skipped, not used as clean speech."""
    workers: int = bounded(2, ge=1)
    pesq: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_ranges(self)


@dataclass
class SynthSummary:
    """What was written and how long it took; ``stats`` is also saved as ``stats.json``."""

    out: Path
    n_train: int
    n_test: int
    seconds: float
    skipped: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Planning (parent process): split, voice or recording, sentence and speed for every clip
# ----------------------------------------------------------------------------------------------

def split_sizes(num: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) clip counts; at least one test clip when the fraction is > 0 and num >= 2."""
    n_test = int(round(num * test_fraction))
    if test_fraction > 0 and num >= 2:
        n_test = max(1, n_test)
    n_test = min(n_test, num - 1) if num >= 2 else 0
    return num - n_test, n_test


def _held_out(items: list[str], fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    order = [items[i] for i in rng.permutation(len(items))]
    k = max(1, int(round(len(items) * fraction))) if fraction > 0 else 0
    return order[k:], order[:k]


def _tts_jobs(cfg: SynthConfig, rng: np.random.Generator) -> list[dict]:
    n_train, n_test = split_sizes(cfg.num, cfg.test_fraction)
    train_voices, test_voices = _held_out(all_voices(), cfg.test_fraction, rng)
    jobs, train_sentences = [], set()
    for index in range(cfg.num):
        split = "train" if index < n_train else "test"
        level = labels.sample_speed_level(rng)
        tempo = labels.sample_tempo(level, rng)
        wpm = int(round(tempo * labels.ESPEAK_NORMAL_WPM))
        n_words = max(2, int(round(rng.uniform(*labels.SPEECH_SECONDS) * WORDS_PER_SECOND_AT_175 * tempo)))
        for _ in range(100):  # held-out sentences: a test sentence never occurs in train
            text = make_sentence(rng, n_words)
            if split == "train" or sentence_id(text) not in train_sentences:
                break
        else:
            raise RuntimeError("could not draw a test sentence unseen in training after 100 tries")
        if split == "train":
            train_sentences.add(sentence_id(text))
        voices = train_voices if split == "train" else test_voices
        utt = {"text": text, "voice": voices[int(rng.integers(len(voices)))], "rate": wpm,
               "pitch": int(rng.integers(35, 66)), "pitch_range": int(rng.integers(40, 71))}
        jobs.append({"index": index, "split": split, "source": "espeak", "utterance": utt,
                     "sentence_id": sentence_id(text),
                     "speed": {"level": level, "tempo": round(tempo, 4), "rate_wpm": wpm}})
    return jobs


def scan_clean_dir(clean_dir: Path, min_snr_db: float = DEFAULT_MIN_SNR_DB
                   ) -> tuple[dict[str, list[str]], list[str], dict[str, SourceCheck]]:
    """Usable recordings under ``clean_dir`` grouped by speaker, the skipped ones (with why), and each
    usable one's check (speech region, SNR; ``sqrl.data.sources``).

    The speaker is the first sub-folder (``spk1/a.wav``, LibriSpeech-style trees); a file directly
    in ``clean_dir`` is its own speaker.
    """
    by_speaker: dict[str, list[str]] = {}
    skipped, checks = [], {}
    for path in tqdm(find_audio_files(clean_dir), desc="checking sources", unit="file", mininterval=2.0):
        try:
            checks[str(path)] = inspect_source(path, min_snr_db)
        except AudioError as exc:
            skipped.append(str(exc))
            continue
        rel = path.relative_to(clean_dir)
        speaker = rel.parts[0] if len(rel.parts) > 1 else path.stem
        by_speaker.setdefault(speaker, []).append(str(path))
    return by_speaker, skipped, checks


def _file_id(path: str, root: Path) -> str:
    """A recording's stand-in for a sentence id: 'file-' and a hash of its path under the root."""
    return "file-" + sentence_id(os.path.relpath(path, root)).removeprefix("snt-")


def _clean_dir_jobs(cfg: SynthConfig, rng: np.random.Generator) -> tuple[list[dict], list[str]]:
    by_speaker, skipped, checks = scan_clean_dir(cfg.clean_dir, cfg.min_source_snr_db)
    if not by_speaker:
        reasons = "; ".join(skipped[:5]) + (f"; ... ({len(skipped)} in all)" if len(skipped) > 5 else "")
        raise ValueError(f"{cfg.clean_dir}: no usable wav/flac/ogg recordings" + (f" ({reasons})" if skipped else ""))
    n_train, n_test = split_sizes(cfg.num, cfg.test_fraction)
    if n_test and len(by_speaker) < 2:
        raise ValueError(f"{cfg.clean_dir}: one speaker only; a held-out test split needs two or more "
                         "(use sub-folders per speaker, or --test-fraction 0)")
    speakers = sorted(by_speaker)
    train_spk, test_spk = _held_out(speakers, cfg.test_fraction, rng) if n_test else (speakers, [])
    pools = {"train": [f for s in train_spk for f in by_speaker[s]],
             "test": [f for s in test_spk for f in by_speaker[s]]}
    speaker_of = {f: s for s, files in by_speaker.items() for f in files}
    jobs = []
    for index in range(cfg.num):
        split = "train" if index < n_train else "test"
        pool = pools[split]
        path = pool[int(rng.integers(len(pool)))]
        level = labels.sample_speed_level(rng)
        tempo = labels.sample_tempo(level, rng) if level != 3 else 1.0
        jobs.append({"index": index, "split": split, "source": "clean-dir", "path": path,
                     "speech": list(checks[path].speech), "source_snr_db": checks[path].snr_db,
                     "speaker": speaker_of[path], "sentence_id": _file_id(path, cfg.clean_dir),
                     "speed": {"level": level, "tempo": round(tempo, 4)}})
    return jobs, skipped


def plan_corpus(cfg: SynthConfig) -> tuple[list[dict], list[str]]:
    """Every clip's job (JSON-able dicts, index order) and the clean recordings skipped."""
    rng = np.random.default_rng([cfg.seed, 0x9A11])
    if cfg.clean_dir is not None:
        jobs, skipped = _clean_dir_jobs(cfg, rng)
    else:
        jobs, skipped = _tts_jobs(cfg, rng), []
    for job in jobs:
        job.update(seed=cfg.seed, sample_rate=cfg.sample_rate, id=f"syn{cfg.seed}-{job['index']:05d}",
                   pesq=cfg.pesq)
    return jobs, skipped


# ----------------------------------------------------------------------------------------------
# Rendering in a pool, writing, measuring
# ----------------------------------------------------------------------------------------------

def measure_pesq(clean: np.ndarray, degraded: np.ndarray, sr: int) -> float | None:
    """Wideband PESQ (ITU-T P.862.2) of ``degraded`` against ``clean``; None where PESQ cannot
    score (no utterance found, too short) — the caller counts those."""
    from pesq import PesqError, pesq

    if sr != 16000:
        clean, degraded = resample(clean, sr, 16000), resample(degraded, sr, 16000)
    try:
        return round(float(pesq(16000, clean, degraded, "wb")), 3)
    except (PesqError, ValueError):
        return None


def _work(args: tuple[dict, str]) -> dict:
    """Render, save and measure one clip (runs in a worker). Unusable sources come back as a skip."""
    job, out_dir = args
    try:
        clip = render_clip(job)
    except (TTSError, AudioError, ValueError) as exc:
        return {"index": job["index"], "skipped": f"{job['id']}: {exc}"}
    save_audio(Path(out_dir) / clip.record.audio, clip.wave, job["sample_rate"])
    if job["pesq"]:
        clip.record.meta["pesq"] = measure_pesq(clip.clean, clip.wave, job["sample_rate"])
    clip.record.meta["generator"] = GENERATOR
    return {"index": job["index"], "record": clip.record.to_dict()}


def _render_all(jobs: list[dict], out_dir: Path, workers: int) -> list[dict]:
    args = [(job, str(out_dir)) for job in jobs]
    bar = dict(total=len(jobs), desc="synth", unit="clip", mininterval=1.0)
    if workers == 1:
        return [_work(a) for a in tqdm(args, **bar)]
    # spawn, not fork: a forked child would inherit the parent's threads and locks half-taken.
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(8, len(jobs) // (4 * workers)))  # small corpora still spread over all workers
    # The workers die with this process, even by kill -9 (die_with_parent); leaving the block any
    # other way (an error, Ctrl-C, SIGTERM under sigterm_as_exit) terminates them.
    with ctx.Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        return list(tqdm(pool.imap(_work, args, chunksize=chunk), **bar))


def _write_corpus(cfg: SynthConfig, tmp: Path) -> SynthSummary:
    from sqrl.data.report import corpus_stats, write_readme

    t0 = time.perf_counter()
    jobs, skipped = plan_corpus(cfg)
    results = _render_all(jobs, tmp, cfg.workers)
    records = [record_from_dict(r["record"], source=r["record"]["id"]) for r in results if "record" in r]
    skipped += [r["skipped"] for r in results if "skipped" in r]
    for reason in skipped:
        log.warning("skipped: %s", reason)
    train = [r for r in records if r.meta["split"] == "train"]
    test = [r for r in records if r.meta["split"] == "test"]
    write_manifest(tmp / "train.jsonl", train)
    write_manifest(tmp / "test.jsonl", test)
    seconds = time.perf_counter() - t0
    stats = corpus_stats(records)
    stats["timing"] = {"seconds": round(seconds, 2), "clips_per_second": round(len(records) / seconds, 2),
                       "workers": cfg.workers}
    stats["skipped"] = skipped
    stats["config"] = {"num": cfg.num, "seed": cfg.seed, "sample_rate": cfg.sample_rate,
                       "test_fraction": cfg.test_fraction, "clean_dir": str(cfg.clean_dir) if cfg.clean_dir else None,
                       **({"min_source_snr_db": cfg.min_source_snr_db} if cfg.clean_dir else {}),
                       "generator": GENERATOR}
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    write_readme(tmp, stats, records)
    return SynthSummary(cfg.out, len(train), len(test), seconds, skipped, stats)


def synthesize_corpus(cfg: SynthConfig) -> SynthSummary:
    """Write the corpus to ``cfg.out`` atomically: it is built in a staging sibling folder and
    renamed into place, so a crash never leaves a half-written corpus behind. An existing
    non-empty ``out`` is an error unless ``cfg.overwrite`` (then only sqrl output is removed, once the new
    corpus is whole). SIGTERM or Ctrl-C stop the workers and remove the staging folder; after ``kill -9``
    the workers end with this process and the next build removes the folder
    (``sqrl.scratch.remove_stale``: only folders whose owner is gone)."""
    from sqrl.rundir import check_removable, is_taken, prepare_out, remove_run

    out = cfg.out
    if not cfg.overwrite:
        prepare_out(out, can_resume=False, create=False)  # a non-empty out is refused (sqrl/rundir.py)
    elif is_taken(out):
        check_removable(out)
    with atomic_dir(out) as tmp:
        with sigterm_as_exit():
            summary = _write_corpus(cfg, tmp)
        if out.exists():
            remove_run(out)
    return summary


def corpus_dir(root: str | os.PathLike, num: int, seed: int, sample_rate: int = SAMPLING_RATE) -> Path:
    """Where ``ensure_corpus`` keeps the corpus for these arguments (the version is in the name,
    so a change of the label rules never reuses a stale corpus)."""
    return Path(root) / f"synth-v{SYNTH_VERSION}-n{num}-s{seed}-sr{sample_rate}"


def ensure_corpus(root: str | os.PathLike, num: int, seed: int, sample_rate: int = SAMPLING_RATE,
                  workers: int = 2, pesq: bool = True) -> Path:
    """The folder of a synthetic corpus of ``num`` clips for ``seed``, made if absent.

    Later stages call this to get data (``<folder>/train.jsonl``, ``<folder>/test.jsonl``). A
    complete corpus (both manifests and ``stats.json``) is reused; the build is atomic, and if
    another process finishes the same corpus first, its copy is kept and ours discarded. A folder
    of that name that is incomplete is an error (it is not ours to delete).
    """
    target = corpus_dir(root, num, seed, sample_rate)
    if all((target / f).is_file() for f in ("train.jsonl", "test.jsonl", "stats.json")):
        return target
    if target.exists() and any(target.iterdir()):
        raise RuntimeError(f"{target} exists but is not a complete corpus (no stats.json); remove it")
    with atomic_dir(target, finished=lambda p: (p / "stats.json").is_file()) as tmp:
        cfg = SynthConfig(out=target, num=num, seed=seed, sample_rate=sample_rate, workers=workers, pesq=pesq)
        log.info("building synthetic corpus %s", target)
        with sigterm_as_exit():
            _write_corpus(cfg, tmp)
    return target
