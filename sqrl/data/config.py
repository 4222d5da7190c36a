"""The data sections of the stage configs: where the clips come from, and which prompts ask about them.

``CorpusConfig`` names a cached synthetic corpus (``ensure_corpus``); ``DataConfig`` is the ``data:``
section every stage shares, which SFT and GRPO extend with their own fields. Importing this module
loads no audio or torch code; the corpus is built only when a manifest is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqrl.config import bounded, check_ranges
from sqrl.prompts import PROMPTINGS


@dataclass
class CorpusConfig:
    """A synthetic corpus cached under ``root`` by seed and size (``sqrl.data.synth.ensure_corpus``)."""

    root: str = "data/synth"
    """Folder under which corpora are cached by seed and size."""
    num: int = bounded(2000, ge=1)
    seed: int = bounded(0, ge=0)
    """numpy seeds the corpus with it: a non-negative integer."""

    def __post_init__(self):
        check_ranges(self)

    def folder(self) -> Path:
        """The corpus folder (``train.jsonl``, ``test.jsonl``), built when absent."""
        from sqrl.data.synth import ensure_corpus

        return ensure_corpus(self.root, self.num, self.seed)


@dataclass
class DataConfig:
    """The ``data:`` section common to the stages."""

    train: str | None = None
    """Training manifest (JSONL). None: the synthetic corpus of ``synth`` (made when absent)."""
    synth: CorpusConfig | None = field(default_factory=CorpusConfig)
    rubric: str | None = None
    """Rubric YAML (default configs/rubrics/qualispeech.yaml)."""
    prompting: str = "all_dimensions"
    """per_dimension (the paper: one dimension per prompt), all_dimensions (cheaper), long_form (warm-up, GRPO)."""
    max_seconds: float = bounded(30.0, gt=0)
    """Longer clips are skipped and counted."""
    limit: int | None = bounded(None, ge=1)
    """Use only the first N clips (quick runs)."""
    balance: str = "none"
    """Which clips training draws: none (a shuffled pass over the corpus each epoch) or labels (draws
    with replacement under weights that flatten every dimension's label distribution, so rare scores
    come up about as often as the majority score; ``sqrl.data.balance``)."""

    def __post_init__(self):
        check_ranges(self)
        from sqrl.data.balance import check_balance

        check_balance(self.balance)
        if self.prompting not in PROMPTINGS:
            raise ValueError(f"data.prompting must be one of {', '.join(PROMPTINGS)}, not {self.prompting!r}")
        if self.train is None and self.synth is None:
            raise ValueError("data.train or data.synth must be set")

    def train_manifest(self) -> Path:
        """``train``, or the synthetic corpus's training split (built when absent)."""
        return Path(self.train) if self.train else self.synth.folder() / "train.jsonl"
