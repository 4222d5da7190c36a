"""SFT examples from manifests and the audio collator (TRL's collators know images only).

An example is a plain dict ``{"id", "audio", "prompt", "target"}``; the collator loads the audio,
resamples it and asks the backbone to build chat-formatted inputs with ``labels`` that are -100
everywhere but the answer tokens. A clip that ``sqrl.audio`` calls unusable (unreadable, shorter than
the encoder takes, longer than ``data.max_seconds``, NaN samples: the rule ``sqrl data validate``
applies) is dropped from its batch, logged with its file and counted by kind
(``AudioCollator.skipped``, logged as ``skipped_clips``); it never stops a run.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sqrl.audio import SAMPLING_RATE
from sqrl.prompts import Rubric
from sqrl.schema import Record, read_manifest

log = logging.getLogger(__name__)


def build_examples(records: list[Record], rubric: Rubric, prompting: str) -> list[dict[str, Any]]:
    """Every (clip, prompt, target) triple for ``records`` under ``prompting``."""
    out = []
    for rec in records:
        for ex in rubric.examples(rec, prompting):
            out.append({"id": rec.id, "audio": rec.audio, "prompt": ex.prompt, "target": ex.target})
    return out


def load_records(manifest: str | Path, limit: int | None = None) -> list[Record]:
    """The clips of ``manifest``, the first ``limit`` of them when set."""
    records = read_manifest(manifest)
    return records[:limit] if limit else records


def load_examples(manifest: str | Path, rubric: Rubric, prompting: str, limit: int | None = None):
    return build_examples(load_records(manifest, limit), rubric, prompting)


def example_labels(records: list[Record], rubric: Rubric, prompting: str) -> list[dict[str, int | None]]:
    """The labels each example of ``build_examples`` teaches, in the same order: a per-dimension example
    its own dimension's score, any other example every score of its clip (``data.balance: labels``
    weighs the examples by them)."""
    out = []
    for rec in records:
        for ex in rubric.examples(rec, prompting):
            scores = rec.scores or {}
            out.append({ex.dimension: scores.get(ex.dimension)} if ex.dimension else dict(scores))
    return out


# Audio tokens per second of clip in every backbone family here: Whisper's 50 encoder frames a second, pooled by 2.
AUDIO_TOKENS_PER_SECOND = 25


def example_lengths(examples: list[dict[str, Any]], tokenizer, window_s: float) -> list[int]:
    """Each example's sequence length, estimated without loading audio (``train.group_by_length``): its audio
    tokens from the file header's duration (capped at the encoder window) plus its prompt and answer tokens.
    An unreadable file counts as no audio; the collator skips and counts it later."""
    import soundfile as sf

    lengths = []
    for ex in examples:
        try:
            seconds = min(sf.info(ex["audio"]).duration, window_s)
        except (RuntimeError, OSError, sf.LibsndfileError):
            seconds = 0.0
        text = len(tokenizer(ex["prompt"] + ex["target"], add_special_tokens=False)["input_ids"])
        lengths.append(int(seconds * AUDIO_TOKENS_PER_SECOND) + text)
    return lengths


def balance_weights(records: list[Record], rubric: Rubric, prompting: str):
    """``sqrl.data.balance.label_balance_weights`` over the examples ``build_examples`` makes of ``records``."""
    from sqrl.data.balance import label_balance_weights

    return label_balance_weights(example_labels(records, rubric, prompting))


class AudioCollator:
    """Batch SFT examples into backbone inputs; unusable clips are skipped and counted.

    Picklable (the backbone is looked up by name), so DataLoader workers and Ray Train workers
    can hold it.
    """

    def __init__(self, backbone_name: str, processor, max_seconds: float = 30.0, options: dict | None = None):
        self.backbone_name = backbone_name
        self.options = options or {}
        self.processor = processor
        self.max_seconds = max_seconds
        self.skipped: Counter[str] = Counter()
        self._backbone = None

    @property
    def backbone(self):
        if self._backbone is None:
            from sqrl.backbones import get_backbone

            self._backbone = get_backbone(self.backbone_name, **self.options)
        return self._backbone

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_backbone"] = None
        return state

    def _load(self, example: dict[str, Any]) -> np.ndarray | None:
        from sqrl.audio import AudioError, load_audio

        try:
            return load_audio(example["audio"], sampling_rate=SAMPLING_RATE, max_seconds=self.max_seconds)
        except AudioError as exc:
            self.skipped[exc.category] += 1
            log.warning("skipping clip %s: %s (skipped so far: %d)", example.get("id"), exc, sum(self.skipped.values()))
            return None

    def __call__(self, examples: list[dict[str, Any]]):
        waves, kept = [], []
        for ex in examples:
            wave = self._load(ex)
            if wave is not None:
                waves.append(wave)
                kept.append(ex)
        if not kept:
            raise RuntimeError(
                f"every clip of a batch of {len(examples)} failed to load (first: {examples[0].get('audio')}); "
                "run `sqrl data validate` on the manifest"
            )
        batch = self.backbone.build_inputs(
            self.processor,
            waves,
            [ex["prompt"] for ex in kept],
            answers=[ex["target"] for ex in kept],
            sampling_rate=SAMPLING_RATE,
        )
        batch.pop("completion_mask", None)  # the model's forward does not take it; labels carry the same mask
        return dict(batch)
