"""LLM judges: one interface (``Judge.score(requests) -> verdicts``), three backends.

>>> from judges import judge_from_config, load_prompts
>>> spec = load_prompts("dimwise")                      # configs/judges/dimwise.yaml
>>> spec.scale
(0, 10)

``judge_from_config("smollm2")`` builds the CPU default (SmolLM2-135M-Instruct, ``transformers``);
``qwen3_openai`` / ``qwen3_vllm`` / ``qwen3_local`` are the paper's judge behind a server, in a vLLM
engine, or as a local transformers model. Backends import their heavy dependencies lazily.
"""
from judges.base import (
    BACKENDS,
    Judge,
    JudgeStats,
    RetryPolicy,
    build_judge,
    judge_from_config,
    load_judge_config,
)
from judges.prompts import JudgeRequest, PromptSpec, delimit, load_prompts, render_messages
from judges.verdicts import Verdict, parse_verdict, score_probs

__all__ = [
    "BACKENDS",
    "Judge",
    "JudgeRequest",
    "JudgeStats",
    "PromptSpec",
    "RetryPolicy",
    "Verdict",
    "build_judge",
    "delimit",
    "judge_from_config",
    "load_judge_config",
    "load_prompts",
    "parse_verdict",
    "render_messages",
    "score_probs",
]
