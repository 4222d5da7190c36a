"""A step's batch as the driver sees it: clips with their G completions (``Group``) and the completions'
scores (``ScoredGroups``), sliced and joined by whole groups, and the samples the policy trains on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from grpo.messages import Completion, TrainSample
from rewards import ScoredBatch
from sqrl.schema import Record


@dataclass
class Group:
    """One clip and its G completions."""

    record: Record
    completions: list[Completion]


@dataclass
class ScoredGroups:
    """Groups and the ``ScoredBatch`` of their completions: row ``g * G + i`` scores completion ``i`` of group ``g``."""

    groups: list[Group]
    scores: ScoredBatch

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def group_size(self) -> int:
        return len(self.groups[0].completions)

    def completions(self) -> list[Completion]:
        return [c for g in self.groups for c in g.completions]

    def totals(self) -> torch.Tensor:
        """The total reward per completion; ``None`` (excluded from the group statistics) as NaN."""
        return torch.tensor([float("nan") if t is None else float(t) for t in self.scores.total])

    def slice(self, start: int, stop: int) -> ScoredGroups:
        """Groups ``start:stop`` with their rows. The part's ``skipped`` counts every ``None`` of a reward
        there, errors included (``errors`` is per batch and cannot be split; the driver counts them)."""
        G, sb = self.group_size, self.scores
        lo, hi = start * G, stop * G
        per_reward = {k: v[lo:hi] for k, v in sb.per_reward.items()}
        total = sb.total[lo:hi]
        scores = ScoredBatch(total=total, per_reward=per_reward, components={k: v[lo:hi] for k, v in sb.components.items()},
                             skipped={k: sum(x is None for x in v) for k, v in per_reward.items()},
                             errors={k: 0 for k in per_reward}, total_skipped=sum(t is None for t in total))
        return ScoredGroups(self.groups[start:stop], scores)

    @classmethod
    def concat(cls, parts: Sequence[ScoredGroups]) -> ScoredGroups:
        """The parts one after another. A key missing from a part (a reward that failed on that worker's batch
        has no components) is filled with ``None`` for its rows; skip and error counts add up, and each
        reward's error message (``failures``) is kept."""
        scored = [p.scores for p in parts]
        sizes = [len(s.total) for s in scored]

        def rows(attr: str) -> dict[str, list]:
            keys = list(dict.fromkeys(k for s in scored for k in getattr(s, attr)))
            return {k: [v for s, n in zip(scored, sizes) for v in getattr(s, attr).get(k, [None] * n)] for k in keys}

        def counts(attr: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for s in scored:
                for k, v in getattr(s, attr).items():
                    out[k] = out.get(k, 0) + v
            return out

        scores = ScoredBatch(total=[t for s in scored for t in s.total], per_reward=rows("per_reward"),
                             components=rows("components"), skipped=counts("skipped"), errors=counts("errors"),
                             total_skipped=sum(s.total_skipped for s in scored),
                             failures={k: v for s in scored for k, v in s.failures.items()})
        return cls([g for p in parts for g in p.groups], scores)


def train_samples(groups: Sequence[Group], adv: torch.Tensor, flat: torch.Tensor, *, skip_flat: bool,
                  mask_truncated: bool) -> list[TrainSample]:
    """The completions the policy trains on, with their advantages (``adv``, one per completion):
    ``skip_flat`` drops the groups flagged in ``flat``, ``mask_truncated`` the cut-off answers."""
    samples = []
    for gi, g in enumerate(groups):
        if skip_flat and bool(flat[gi]):
            continue
        G = len(g.completions)
        for ci, c in enumerate(g.completions):
            if mask_truncated and c.truncated:
                continue
            samples.append(TrainSample(c.audio, c.prompt, c.token_ids, float(adv[gi * G + ci])))
    return samples
