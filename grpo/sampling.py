"""The training clips of a GRPO run and the order the driver draws them in (seeded, resumable), optionally
balanced over the reference labels."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sqrl.data.balance import check_balance, epoch_order, label_balance_weights
from sqrl.schema import Record, read_manifest

if TYPE_CHECKING:
    from grpo.config import GRPODataConfig


class ClipStream:
    """Clips in a fresh seeded order per epoch; its state is (epoch, position).

    ``balance="none"``: a permutation (every clip once per epoch). ``balance="labels"``: an epoch of
    ``len(records)`` draws with replacement under ``label_balance_weights``, so rare scores come up
    about as often as common ones. On a skewed corpus (most clips "no noise", 5/5) exact-match rewards
    otherwise pay a policy that always answers the majority score, and GRPO collapses onto it
    (docs/grpo.md, "Label-balanced sampling", has the run that showed it).
    """

    def __init__(self, records: Sequence[Record], seed: int, balance: str = "none"):
        if not records:
            raise ValueError("no training clips")
        self.records, self.seed, self.balance = list(records), seed, check_balance(balance)
        self.weights = label_balance_weights([r.scores for r in self.records]) if balance == "labels" else None
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return epoch_order(len(self.records), self.seed, self.epoch, self.weights)

    def take(self, k: int) -> list[Record]:
        out = []
        for _ in range(k):
            if self.pos == len(self.records):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.records[self._order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def training_records(data: GRPODataConfig) -> list[Record]:
    """The clips of ``data.train`` (or of the synthetic corpus, built on first use), the first ``data.limit``."""
    if data.train:
        manifest = Path(data.train)
    else:
        from sqrl.data.synth import ensure_corpus

        manifest = ensure_corpus(data.synth.root, data.synth.num, data.synth.seed) / "train.jsonl"
    records = read_manifest(manifest)
    return records[:data.limit] if data.limit else records
