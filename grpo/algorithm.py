"""GRPO's arithmetic: group advantages (eq. 2), the clipped policy loss with the k3 KL (eq. 3), pure torch.

Formulas and names follow TRL 1.16's ``GRPOTrainer`` (``_generate_and_score_completions`` for the
advantages, ``_compute_loss`` for the loss) so that a run here compares with a TRL run;
``tests/grpo/test_algorithm.py`` checks them against TRL on the same tensors.

Unscorable completions (total reward ``None``) enter as NaN: they are left out of the group's mean
and std and get advantage 0, as in TRL.

How the loss is split. A step's batch (N sequences, T completion tokens in all) is spread over W
data-parallel policy workers and, on each, over micro-batches. ``Normalizer`` carries the global
counts, and each micro-batch's loss is scaled so that summing over micro-batches and *averaging*
over workers (DeepSpeed averages gradients) gives the loss TRL computes on the whole batch:

* ``grpo``: mean over sequences of each sequence's token mean (the paper's eq. 3, per sequence);
* ``bnpo``: token mean within a micro-batch, averaged over micro-batches (TRL: per device batch);
* ``dr_grpo``: token sum / (N * max_completion_length);
* ``dapo``: token sum / T (tokens of the whole batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
"""How ``reduce_loss`` normalises the per-token objective (``algorithm.loss_type``)."""
SCALE_REWARDS = ("group", "batch", "none")
"""What ``group_advantages`` divides by (``algorithm.scale_rewards``)."""
STD_EPS = 1e-4  # TRL adds this to the std before dividing
CREDITS = ("sequence", "scores")
"""Which tokens an advantage trains (``algorithm.credit``): ``sequence``, every token of a completion its one
advantage (the paper's eq. 3); ``scores``, each score digit its own dimension's (``score_token_advantages``)."""


# ------------------------------------------------------------------------------------ advantages
def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (NaN where fewer than 2 values)."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    count = (~torch.isnan(x)).sum(dim=dim).to(var.dtype)
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return (var * correction).sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """``(r - mean_group) / (std + 1e-4)`` per completion (eq. 2); NaN rewards get advantage 0.

    ``rewards``: shape ``(num_groups * group_size,)``, each group's completions consecutive.
    ``scale_rewards``: ``group`` (the group's std), ``batch`` (the whole batch's std) or ``none``.

    >>> group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2, "none").tolist()
    [0.5, -0.5, 0.5, -0.5]
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    rewards = rewards.float()
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    if scale_rewards == "group":
        std = nanstd(grouped, dim=1).repeat_interleave(group_size)
    elif scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    elif scale_rewards == "none":
        std = None
    else:
        raise ValueError(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, not {scale_rewards!r}")
    adv = rewards - mean
    if std is not None:
        adv = adv / (std + STD_EPS)
    return torch.nan_to_num(adv, nan=0.0)


def score_token_advantages(rest: torch.Tensor, digits: dict[str, torch.Tensor], positions: list[dict[str, int]],
                           lengths: list[int], group_size: int, scale_rewards: str = "group") -> list[list[float]]:
    """Per-token advantages for ``algorithm.credit: scores`` (the dimension-wise rewards, credited where earned).

    ``digits[d]``: per completion, the weighted sum of the score rewards' components for dimension ``d`` (exact
    accuracy reads nothing but that dimension's digit); ``rest``: the weighted sum of every other reward (NaN
    where none scored it). Each is normalised within its group as ``group_advantages`` normalises the total.
    The token that wrote ``d``'s digit (``positions[i][d]``, an index into completion ``i``'s ``lengths[i]``
    tokens) gets ``d``'s advantage and nothing else; every other token gets the rest's advantage. A completion
    without a digit for ``d`` (no score line) takes ``d``'s advantage on all its tokens: the whole answer
    failed to give that score.

    >>> a = score_token_advantages(torch.tensor([0.0, 0.0]), {"noise": torch.tensor([1.0, 0.0])},
    ...                            [{"noise": 1}, {}], [3, 2], group_size=2, scale_rewards="none")
    >>> [[round(x, 2) for x in row] for row in a]
    [[0.0, 0.5, 0.0], [-0.5, -0.5]]
    """
    a_rest = group_advantages(rest, group_size, scale_rewards)
    a_dim = {d: group_advantages(v, group_size, scale_rewards) for d, v in digits.items()}
    out = []
    for i, n in enumerate(lengths):
        row = [float(a_rest[i])] * n
        spread = 0.0
        for d, adv in a_dim.items():
            pos = positions[i].get(d)
            if pos is not None and 0 <= pos < n:
                row[pos] = float(adv[i])
            else:
                spread += float(adv[i])
        out.append([x + spread for x in row] if spread else row)
    return out


def flat_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """Per group: True when it carries no relative signal (all available rewards equal, or < 2 available).

    >>> flat_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, float("nan"), 2.0]), 2).tolist()
    [True, False, True]
    """
    grouped = rewards.float().view(-1, group_size)
    avail = ~torch.isnan(grouped)
    hi = torch.where(avail, grouped, torch.full_like(grouped, -float("inf"))).max(dim=1).values
    lo = torch.where(avail, grouped, torch.full_like(grouped, float("inf"))).min(dim=1).values
    return (avail.sum(dim=1) < 2) | ((hi - lo) <= tol)


# ------------------------------------------------------------------------------------ KL
def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) by the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


# ------------------------------------------------------------------------------------ loss
@dataclass(frozen=True)
class LossConfig:
    """What the loss needs from the config (flat, picklable)."""

    loss_type: str = "grpo"
    """One of ``LOSS_TYPES`` (``algorithm.loss_type``)."""
    beta: float = 0.04
    """KL coefficient; 0 skips the reference log-probs."""
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    """The ratio is clipped to ``[1 - epsilon_low, 1 + epsilon_high]``."""
    max_completion_length: int = 256
    """Dr. GRPO's constant divisor (``rollout.max_new_tokens``)."""

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, not {self.loss_type!r}")


@dataclass(frozen=True)
class Normalizer:
    """Global counts of one optimizer step (see the module docstring)."""

    num_sequences: int
    num_tokens: int
    num_microbatches: int
    world_size: int = 1


def per_token_objective(logps: torch.Tensor, old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None,
                        advantages: torch.Tensor, settings: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate plus ``beta`` times the k3 KL, per token, and its parts for logging.

    ``logps``, ``old_logps``, ``ref_logps``: ``(B, L)``; ``old_logps`` None means the batch is used
    once (ratio 1, the gradient of the plain policy gradient); ``advantages``: ``(B,)``, one per completion,
    or ``(B, L)``, one per token (``algorithm.credit: scores``).
    """
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    clipped = torch.clamp(ratio, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    parts = {
        "clip_low": ((ratio < 1 - settings.epsilon_low) & (adv < 0)).float(),
        "clip_high": ((ratio > 1 + settings.epsilon_high) & (adv > 0)).float(),
    }
    parts["clip_region"] = torch.maximum(parts["clip_low"], parts["clip_high"])
    if settings.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        kl = k3_kl(logps, ref_logps)
        loss = loss + settings.beta * kl
        parts["kl"] = kl.detach()
    return loss, parts


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, settings: LossConfig, norm: Normalizer) -> torch.Tensor:
    """This micro-batch's share of the step's loss (``mask``: 1 on counted completion tokens)."""
    mask = mask.to(per_token.dtype)
    scale = float(norm.world_size)
    if settings.loss_type == "grpo":
        seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return scale * seq.sum() / max(norm.num_sequences, 1)
    if settings.loss_type == "bnpo":
        return scale * (per_token * mask).sum() / mask.sum().clamp(min=1.0) / max(norm.num_microbatches, 1)
    if settings.loss_type == "dr_grpo":
        return scale * (per_token * mask).sum() / (max(norm.num_sequences, 1) * settings.max_completion_length)
    if settings.loss_type == "dapo":
        return scale * (per_token * mask).sum() / max(norm.num_tokens, 1)
    raise ValueError(f"unknown loss_type {settings.loss_type!r}")


def masked_sums(parts: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float]:
    """Sums of each logged part over the counted tokens, plus the token count (to average later)."""
    m = mask.float()
    out = {k: float((v.float() * m).sum()) for k, v in parts.items()}
    out["tokens"] = float(m.sum())
    return out
