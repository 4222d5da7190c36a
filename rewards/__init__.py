"""Rewards for GRPO: the contract and registry (``rewards.base``), builtin rewards (``rewards.builtin``,
``rewards.signal``) and the LLM-judge rewards (``rewards.llm_judge``).

>>> from rewards import RewardSet
>>> rs = RewardSet.from_config([{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.5}])
>>> rs.names
['accuracy', 'format']
"""
from rewards.base import (
    AGGREGATIONS,
    LazyReward,
    RewardEntry,
    RewardError,
    RewardOutput,
    RewardSet,
    ScoredBatch,
    combine,
    get,
    lookup,
    parsed_column,
    register,
    registered,
    summarize,
)

__all__ = [
    "AGGREGATIONS",
    "LazyReward",
    "RewardEntry",
    "RewardError",
    "RewardOutput",
    "RewardSet",
    "ScoredBatch",
    "combine",
    "get",
    "lookup",
    "parsed_column",
    "register",
    "registered",
    "summarize",
]
