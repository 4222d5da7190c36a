"""A step's batch as the driver sees it: clips with their G completions (``Group``) and the completions'
scores (``ScoredGroups``), sliced and joined by whole groups, and the samples the policy trains on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from grpo.algorithm import score_token_advantages
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
                  mask_truncated: bool, token_adv: Sequence[list[float]] | None = None) -> list[TrainSample]:
    """The completions the policy trains on, with their advantages (``adv``, one per completion; ``token_adv``,
    one per token, where given): ``skip_flat`` drops the groups flagged in ``flat``, ``mask_truncated`` the
    cut-off answers."""
    samples = []
    for gi, g in enumerate(groups):
        if skip_flat and bool(flat[gi]):
            continue
        G = len(g.completions)
        for ci, c in enumerate(g.completions):
            if mask_truncated and c.truncated:
                continue
            k = gi * G + ci
            samples.append(TrainSample(c.audio, c.prompt, c.token_ids, float(adv[k]),
                                       token_advantages=None if token_adv is None else list(token_adv[k])))
    return samples


def score_credit(batch: ScoredGroups, weights: dict[str, tuple[float, bool]], positions: Sequence[dict[str, int]],
                 scale_rewards: str) -> list[list[float]]:
    """Per-token advantages of every completion of ``batch`` under ``algorithm.credit: scores``.

    ``weights``: label -> (weight, digits only) of the configured rewards (``rewards.base.entry_weights``);
    ``positions``: per completion, dimension -> index of the token that wrote its score digit
    (``sqrl.scoretokens.score_positions``). The digits-only rewards' components, weighted and summed per
    dimension, credit that dimension's digit; the other rewards, weighted and summed, every other token
    (``grpo.algorithm.score_token_advantages``). A reward without a value for a completion adds nothing to it;
    a completion that no other reward scored has no rest (advantage 0 there)."""
    sb, n = batch.scores, len(batch.scores.total)
    rest = torch.full((n,), float("nan"))
    digits: dict[str, torch.Tensor] = {}
    for label, (weight, only_digits) in weights.items():
        if weight == 0:
            continue
        if only_digits:
            prefix = f"{label}/"
            for key, values in sb.components.items():
                if key.startswith(prefix):
                    dim = key[len(prefix):]
                    col = torch.tensor([float("nan") if v is None else weight * float(v) for v in values])
                    digits[dim] = col if dim not in digits else torch.where(col.isnan(), digits[dim],
                                                                           digits[dim].nan_to_num() + col)
        else:
            col = torch.tensor([float("nan") if v is None else weight * float(v) for v in sb.per_reward.get(label, [])]
                               or [float("nan")] * n)
            rest = torch.where(col.isnan(), rest, rest.nan_to_num() + col)
    lengths = [len(c.token_ids) for g in batch.groups for c in g.completions]
    return score_token_advantages(rest, digits, list(positions), lengths, batch.group_size, scale_rewards)
