"""The training clips of a GRPO run and the order the driver draws them in (seeded, resumable), optionally
balanced over the reference labels."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sqrl.schema import Record, read_manifest

if TYPE_CHECKING:
    from grpo.config import GRPODataConfig

BALANCES = ("none", "labels")


def label_balance_weights(records: Sequence[Record], cap: float = 10.0, rounds: int = 30) -> np.ndarray:
    """Sampling probabilities that flatten every dimension's label distribution at once.

    Raking (iterative proportional fitting): for each dimension in turn, scale the weights of the clips
    with each label so the labels share the mass equally; repeat ``rounds`` times. No clip may weigh
    more than ``cap`` times the uniform weight, which keeps the effective number of clips large: the
    dimensions are correlated (a noisy clip is also a low-MOS clip), so uncapped raking can put all the
    mass on a handful of clips that happen to be rare in every dimension. The cap trades flatness for
    coverage (measured effect on the synthetic corpus: docs/grpo.md, "Label-balanced sampling"). Clips
    without a label for a dimension are left alone in that dimension's round.
    """
    n = len(records)
    w = np.full(n, 1.0 / n)
    dims = sorted({d for r in records for d, v in (r.scores or {}).items() if v is not None})
    labels = {d: np.array([(r.scores or {}).get(d) for r in records], dtype=object) for d in dims}
    for _ in range(rounds):
        for d in dims:
            lab = labels[d]
            present = [v for v in set(lab.tolist()) if v is not None]
            known = lab != None  # noqa: E711 (elementwise on an object array)
            share = w[known].sum() / len(present)
            for v in present:
                m = lab == v
                w[m] *= share / w[m].sum()
            w = _capped(w / w.sum(), cap / n)
    return w


def _capped(w: np.ndarray, limit: float) -> np.ndarray:
    """``w`` (summing to 1) with no entry above ``limit``: the excess goes to the others in proportion."""
    w = w.copy()
    if limit * len(w) <= 1:
        return np.full(len(w), 1.0 / len(w))
    while (w > limit + 1e-15).any():
        over = w >= limit
        w[over] = limit
        free = 1.0 - limit * over.sum()
        w[~over] *= free / w[~over].sum()
    return w


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
        if balance not in BALANCES:
            raise ValueError(f"data.balance must be one of {', '.join(BALANCES)}, not {balance!r}")
        self.records, self.seed, self.balance = list(records), seed, balance
        self.weights = label_balance_weights(self.records) if balance == "labels" else None
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            return rng.permutation(len(self.records))
        return rng.choice(len(self.records), size=len(self.records), replace=True, p=self.weights)

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
