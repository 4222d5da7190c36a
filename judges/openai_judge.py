"""Any OpenAI-compatible server as the judge (``backend: openai``), e.g. ``vllm serve Qwen/Qwen3-8B``.

Requests go to ``{base_url}/chat/completions`` (or ``/completions`` with ``endpoint: completions``
for a base model) through ``requests``, ``concurrency`` at a time. Each request has a read timeout;
timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff
(``judges.base.RetryPolicy``); other HTTP errors fail at once. Every failure is a ``Verdict`` with
``score=None`` and an error such as ``"timeout: ..."`` or ``"http 500: ..."``, counted in ``stats``.
A dead server trips a circuit breaker (``judges.base.CircuitBreaker``): after ``give_up_after``
judgements in a row failed to connect, the rest are not sent for ``give_up_cooldown_s`` and fail at once
as ``"gave up: ..."``.

``prefill: true`` (chat) sends the score prefix as the start of the assistant turn and asks the server
to continue it (``continue_final_message``, a vLLM extension): the prompt the in-process backends use,
and a small model stays on task.

``mode: logit`` asks for ``top_logprobs`` and reads them at the token where the written score
starts: the expected value over the score tokens. A server sends the alternatives of the generated path
only, so a number of two tokens off that path ("1" then "0" when the judge wrote "7") is followed by a
*branch request* (``branch_requests``): the same prompt extended by the generated text up to the score
and the branch's tokens ("1"), one token long, whose ``top_logprobs`` give P("0" | "1"); the trie walk is
``judges.verdicts.score_probs``, the one the in-process backends use. Where the server gives no logprobs,
the written number is used and ``logprobs_missing`` is counted.

The API key comes from the environment variable named by ``api_key_env``, never from a file.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from judges.base import CircuitBreaker, GaveUp, Judge, RetryableError, RetryPolicy, with_retries
from judges.prompts import JudgeRequest
from judges.verdicts import Verdict, expected_verdict, parse_verdict, score_probs

log = logging.getLogger("sqrl.judges")

ENDPOINTS = ("chat", "completions")


class HTTPFailure(Exception):
    """A non-retryable failure (HTTP 4xx other than 429, or a malformed response)."""


class OpenAIJudge(Judge):
    """A judge behind an OpenAI-compatible HTTP API.

    >>> judge = OpenAIJudge("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B", mode="logit")  # doctest: +SKIP
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        mode: str = "generate",
        endpoint: str = "chat",
        max_tokens: int = 16,
        top_logprobs: int = 20,
        temperature: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 16.0,
        jitter: float = 0.1,
        concurrency: int = 8,
        give_up_after: int = 4,
        give_up_cooldown_s: float = 30.0,
        branch_requests: bool = True,
        branch_eps: float = 1e-3,
        score_prefix: str = "Score:",
        prefill: bool = False,
        max_answer_chars: int = 6000,
        min_score_mass: float = 0.05,
    ) -> None:
        super().__init__(mode=mode, max_answer_chars=max_answer_chars, min_score_mass=min_score_mass)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        if concurrency < 1 or timeout_s <= 0 or max_tokens < 1 or top_logprobs < 1:
            raise ValueError("concurrency, max_tokens, top_logprobs must be >= 1 and timeout_s > 0")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.endpoint, self.max_tokens, self.top_logprobs = endpoint, max_tokens, top_logprobs
        self.temperature, self.extra_body = temperature, dict(extra_body or {})
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retry = RetryPolicy(max_attempts, backoff_s, backoff_max_s, jitter)
        self.breaker = CircuitBreaker(give_up_after, give_up_cooldown_s)
        self.branch_requests, self.branch_eps = branch_requests, branch_eps
        self.concurrency, self.score_prefix, self.prefill = concurrency, score_prefix, prefill
        self._local = threading.local()

    def _drop_runtime(self, state: dict) -> dict:
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    # ------------------------------------------------------------------ HTTP

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            elif not getattr(self._local, "warned", False):
                self._local.warned = True
                log.warning("judge API key variable %s is not set; sending no Authorization header", self.api_key_env)
        return headers

    def body(self, request: JudgeRequest) -> dict[str, Any]:
        """The JSON body for one request (without retries or transport)."""
        messages = self.messages(request)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.endpoint == "chat":
            body["messages"] = messages
            if self.prefill:  # the answer opens with the score prefix, as in the in-process backends
                body["messages"] = [*messages, {"role": "assistant", "content": self.score_prefix}]
                body.update(continue_final_message=True, add_generation_prompt=False)
            if self.mode == "logit":
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
        else:  # a base model: plain text, the score prefix opens the answer
            body["prompt"] = f"{messages[0]['content']}\n\n{messages[1]['content']}\n\n{self.score_prefix}"
            if self.mode == "logit":
                body["logprobs"] = self.top_logprobs
        body.update(self.extra_body)
        return body

    def branch_body(self, request: JudgeRequest, continuation: str) -> dict[str, Any]:
        """The body of a branch request: ``request``'s prompt with the answer opened by ``continuation``
        (the generated text up to the score and a branch's tokens), one token long, with its
        ``top_logprobs``: the judge's next-token distribution after the branch."""
        body = self.body(request)
        body["max_tokens"] = 1
        if self.endpoint == "completions":
            body["prompt"] += continuation
            return body
        opened = (self.score_prefix if self.prefill else "") + continuation
        body["messages"] = [*self.messages(request), {"role": "assistant", "content": opened}]
        body.update(continue_final_message=True, add_generation_prompt=False)  # vLLM's prefill
        return body

    def _send(self, make_body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """One request with its retries; tells the circuit breaker how it ended."""
        try:
            data = with_retries(lambda: self._post(make_body()), self.retry, self.stats)
        except RetryableError as exc:
            self.breaker.record(str(exc).startswith("connection:"), self.stats)
            raise
        except HTTPFailure:
            self.breaker.record(False)
            raise
        self.breaker.record(False)
        return data

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        url = f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"
        self.breaker.check(self.base_url)  # before every attempt: a retry stops once the breaker opens
        try:
            resp = session.post(url, json=body, headers=self.headers(), timeout=(self.connect_timeout_s, self.timeout_s))
        except requests.ConnectTimeout:  # a host that drops the connection: a connection failure (before Timeout,
            # of which it is also a subclass), so that the circuit breaker counts it
            raise RetryableError(f"connection: {url}: no connection within {self.connect_timeout_s:g} s "
                                 "(ConnectTimeout)") from None
        except requests.Timeout as exc:
            raise RetryableError(f"timeout: no answer from {url} within {self.timeout_s:g} s ({type(exc).__name__})") from None
        except requests.ConnectionError as exc:
            raise RetryableError(f"connection: {url}: {str(exc)[:160]}") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RetryableError(f"http {resp.status_code}: {resp.text[:160]}")
        if resp.status_code != 200:
            raise HTTPFailure(f"http {resp.status_code}: {resp.text[:160]}")
        try:
            return resp.json()
        except ValueError:
            raise HTTPFailure(f"bad response: not JSON: {resp.text[:160]!r}") from None

    # ------------------------------------------------------------------ judging

    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: JudgeRequest) -> Verdict:
        try:
            data = self._send(lambda: self.body(request))
        except (RetryableError, HTTPFailure, GaveUp) as exc:
            return Verdict(None, str(exc))
        try:
            text, tokens = self._read(data)
        except (KeyError, IndexError, TypeError) as exc:
            return Verdict(None, f"bad response: {type(exc).__name__} {exc} in {str(data)[:160]}")
        if self._prefixed():
            text = self.score_prefix + text
        parsed = parse_verdict(text, request.scale)
        if self.mode == "generate":
            return Verdict(parsed.score, parsed.error, text=text)
        try:
            return self._logit_verdict(request, text, tokens, parsed)
        except (RetryableError, GaveUp) as exc:  # a branch request's server failure
            return Verdict(None, str(exc), text=text)

    def _prefixed(self) -> bool:
        """Whether the server continues our score prefix (its text then starts after it)."""
        return self.endpoint == "completions" or self.prefill

    def _read(self, data: dict[str, Any]) -> tuple[str, list[tuple[str, list[tuple[str, float]]]] | None]:
        """(text, tokens) from a response; tokens = [(token, [(alternative, logprob), ...]), ...] or None."""
        choice = data["choices"][0]
        if self.endpoint == "chat":
            text = choice["message"].get("content") or ""
            content = (choice.get("logprobs") or {}).get("content")
            if not content:
                return text, None
            return text, [(t["token"], [(a["token"], a["logprob"]) for a in t.get("top_logprobs") or []]) for t in content]
        text = choice.get("text") or ""
        lp = choice.get("logprobs") or {}
        if not lp.get("tokens"):
            return text, None
        tops = lp.get("top_logprobs") or [{}] * len(lp["tokens"])
        return text, [(tok, list((top or {}).items())) for tok, top in zip(lp["tokens"], tops)]

    def _logit_verdict(self, request: JudgeRequest, text: str, tokens: list | None, parsed: Any) -> Verdict:
        start = self._score_token_index(text, tokens, parsed)
        if start is None:
            self.stats.add("logprobs_missing")
            return Verdict(parsed.score, parsed.error, text=text)
        before = "".join(tok for tok, _ in tokens[:start])  # generated text before the score

        def next_dists(items: list[tuple[int, tuple]]) -> list[list]:
            out = []
            for _, path in items:
                pos = start + len(path)
                on_path = all(start + j < len(tokens) and tokens[start + j][0] == key for j, key in enumerate(path))
                if on_path and pos < len(tokens):  # the server sent this position's alternatives
                    alternatives = tokens[pos][1]
                elif self.branch_requests:
                    alternatives = self._branch(request, before + "".join(path))
                else:  # off the generated path and no branch requests: treated as ending
                    alternatives = []
                out.append([(alt, alt, math.exp(lp)) for alt, lp in alternatives if lp is not None])
            return out

        written = (self.score_prefix if self._prefixed() else "") + before
        # a whitespace token before the number is stepped over only where no whitespace precedes it already,
        # as the in-process judges do
        probs = score_probs(next_dists, 1, request.scale, eps=self.branch_eps,
                            step_space=not written[-1:].isspace())[0]
        verdict = expected_verdict(probs, self.min_score_mass)
        verdict.text = text
        return verdict

    def _branch(self, request: JudgeRequest, continuation: str) -> list[tuple[str, float]]:
        """The top log-probs of the token after ``continuation`` (a branch request).

        A server in trouble (timeout, connection error, 429/5xx after the retries, the circuit breaker
        open) fails the judgement with that error, as the first request would have: its score would
        otherwise change quietly. A server that refuses the request itself (another HTTP status, a
        malformed answer: a server without vLLM's ``continue_final_message``) makes the branch count as
        ending, the score before branch requests existed, and is counted as ``branch_failed``.
        """
        self.stats.add("branch_requests")
        try:
            _, tokens = self._read(self._send(lambda: self.branch_body(request, continuation)))
        except (HTTPFailure, KeyError, IndexError, TypeError) as exc:
            self.stats.add("branch_failed")
            if self.stats.as_dict()["branch_failed"] <= 3:  # the first few in full; the counter carries the rest
                log.warning("branch request after %r refused (%s); treated as ending (branch_requests: false "
                            "stops sending them)", continuation, str(exc)[:160])
            return []
        if not tokens or not tokens[0][1]:  # an answer without log-probs: the branch cannot be read
            self.stats.add("branch_failed")
            return []
        return tokens[0][1]

    def _score_token_index(self, text: str, tokens: list | None, parsed: Any) -> int | None:
        """Index of the generated token where the written score begins, or None if it cannot be found
        (no logprobs, no parsed score, tokens that do not spell the text, a number that starts mid-token)."""
        if not tokens or parsed.score is None or parsed.start < 0:
            return None
        offset = len(self.score_prefix) if self._prefixed() else 0
        if "".join(t for t, _ in tokens) != text[offset:]:
            return None
        pos = 0
        for index, (tok, _) in enumerate(tokens):
            if pos + len(tok) > parsed.start - offset:
                lead = tok[: parsed.start - offset - pos]
                return index if not lead.strip() and re.fullmatch(r"\s*\d+", tok) else None
            pos += len(tok)
        return None
