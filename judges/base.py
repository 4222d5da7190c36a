"""The judge interface: requests, verdicts, prompt building, verdict parsing, retries.

A *judge* is a text-only LLM that grades one answer against a reference and returns a number.
Every backend (``transformers``, ``openai``, ``vllm``) implements one method, ``_judge``, over a
batch of unique requests; this module does the rest:

* ``PromptSpec`` holds a prompt set loaded from YAML (``configs/judges/*.yaml``); its ``request``
  makes a ``JudgeRequest``. Rubric text is data, never code.
* The answer under judgement is untrusted (it is the policy's output). ``delimit`` neutralises
  markers, chat-control look-alikes and every special or added token of the judge's own tokenizer
  inside it (``judges.hygiene``), truncates it, and wraps it in markers derived from a hash of the
  answer itself, so the answer cannot close its own block and pose as instructions.
* ``parse_verdict`` reads a score out of what judges really write ("Score: 7/10", "**8**",
  "I'd give it a 6.5", ``{"score": 9}``, a leading ``<think>...</think>``).
* ``score_probs`` turns next-token probabilities into a distribution over the integer scores
  (``mode: logit``), walking multi-token numbers ("1" then "0" for 10) as a trie.
* ``RetryPolicy`` retries with exponential backoff; ``JudgeStats`` counts every failure by kind.

A failed judgement is a ``Verdict`` with ``score=None`` and an ``error`` saying why; it is never a
quiet 0.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import yaml

from judges.hygiene import neutralise, tokenizer_specials
from sqrl.config import bounded, check_ranges, check_value

log = logging.getLogger("sqrl.judges")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "judges"
MODES = ("generate", "logit")

# ------------------------------------------------------------------------------ requests, verdicts


@dataclass(frozen=True)
class JudgeRequest:
    """One judgement: instructions, a user template with its fields, and the untrusted answer.

    ``user`` is a template whose ``{name}`` placeholders are filled from ``fields`` and from
    ``{answer_block}``, which the judge renders from ``answer_block`` (placeholders ``{open}``,
    ``{close}``, ``{answer}``) after delimiting and truncating ``answer``. Frozen and hashable, so
    identical requests in a batch are judged once.
    """

    system: str
    user: str
    answer: str
    answer_block: str = "{open}\n{answer}\n{close}"
    fields: tuple[tuple[str, str], ...] = ()
    scale: tuple[int, int] = (0, 10)


@dataclass
class Verdict:
    """A judge's answer to one request: ``score`` on the request's scale, or ``None`` and ``error``.

    ``text`` is what the judge wrote (generate mode); ``mass`` the probability the judge put on
    score tokens (logit mode).
    """

    score: float | None
    error: str | None = None
    text: str = ""
    mass: float | None = None

    def normalized(self, scale: tuple[int, int]) -> float | None:
        """The score mapped linearly to [0, 1] (``None`` stays ``None``)."""
        if self.score is None:
            return None
        lo, hi = scale
        return (self.score - lo) / (hi - lo)


class JudgeStats:
    """Thread-safe counters: requests, unique requests, scored, failed and failures by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def fail(self, error: str) -> None:
        kind = error.split(":", 1)[0].strip() or "unknown"
        with self._lock:
            self.counts["failed"] += 1
            self.counts[f"failed/{kind}"] += 1
            first = self.counts[f"failed/{kind}"] <= 3
        if first:  # the first few of each kind are logged in full; the counters carry the rest
            log.warning("judge failure (%s): %s", kind, error[:300])

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


# ------------------------------------------------------------------------------ prompt building

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders in one pass; inserted values are never re-expanded.

    Unlike ``str.format`` it leaves other braces alone (rubrics may contain JSON) and a value that
    contains ``{answer}`` stays literal text. An unknown placeholder raises ``KeyError``.

    >>> fill('a {x} b {"json": 1}', x="{y}")
    'a {y} b {"json": 1}'
    """

    def sub(match: re.Match) -> str:
        if match[1] not in values:
            raise KeyError(f"template placeholder {{{match[1]}}} has no value; given: {sorted(values)}")
        return str(values[match[1]])

    return _PLACEHOLDER.sub(sub, template)


def delimit(answer: str, max_chars: int, truncate: Callable[[str], str] | None = None,
            specials: Sequence[str] = ()) -> tuple[str, str, str]:
    """Neutralise and truncate ``answer``; return ``(text, open_marker, close_marker)``.

    The markers carry a hash of the (original) answer, which the answer cannot contain itself.
    ``truncate`` is the backend's token-level cut, applied after the character limit; ``specials`` the
    judge tokenizer's special and added token strings (``hygiene.tokenizer_specials``).
    """
    nonce = hashlib.sha256(answer.encode("utf-8", "replace")).hexdigest()[:12]
    text = neutralise(answer, specials)
    if len(text) > max_chars:
        text = text[:max_chars] + f"\n[... {len(text) - max_chars} more characters cut]"
    if truncate is not None:
        text = truncate(text)
    return text, f"<<<ANSWER {nonce}>>>", f"<<<END OF ANSWER {nonce}>>>"


def render_messages(request: JudgeRequest, max_chars: int, truncate: Callable[[str], str] | None = None,
                    specials: Sequence[str] = ()) -> list[dict]:
    """The chat messages for ``request``: a system message and the user message with the answer block."""
    text, open_, close = delimit(request.answer, max_chars, truncate, specials)
    block = fill(request.answer_block, open=open_, close=close, answer=text)
    user = fill(request.user, **dict(request.fields), answer_block=block)
    return [{"role": "system", "content": request.system}, {"role": "user", "content": user}]


@dataclass
class PromptSpec:
    """A prompt set from YAML: ``system``, ``user`` and ``answer_block`` templates, a ``scale`` and
    any extra data (per-dimension rubrics, criteria, weights) under ``extra``."""

    system: str
    user: str
    answer_block: str
    scale: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    def request(self, answer: str, **fields: Any) -> JudgeRequest:
        values = {k: str(v) for k, v in fields.items()}
        return JudgeRequest(
            system=fill(self.system.strip(), **values),
            user=self.user.strip(),
            answer=answer if isinstance(answer, str) else "",
            answer_block=self.answer_block.strip(),
            fields=tuple(sorted(values.items())),
            scale=self.scale,
        )


def resolve_config(name: str | Path) -> Path:
    """A judge YAML by path, or by bare name under ``configs/judges/`` (``"dimwise"``)."""
    path = Path(name)
    if path.exists():
        return path
    candidate = CONFIG_DIR / (path.name if path.suffix else f"{path.name}.yaml")
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"judge config {str(name)!r} not found (also looked in {CONFIG_DIR})")


def load_prompts(name: str | Path) -> PromptSpec:
    """Load and validate a prompt set (see ``configs/judges/dimwise.yaml``)."""
    path = resolve_config(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    missing = [k for k in ("system", "user", "scale") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    scale = data.pop("scale")
    if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, int) for v in scale) and scale[0] < scale[1]):
        raise ValueError(f"{path}: scale must be [low, high] integers with low < high, got {scale!r}")
    user = data.pop("user")
    if "{answer_block}" not in user:
        raise ValueError(f"{path}: the user template must contain {{answer_block}}")
    block = data.pop("answer_block", "{open}\n{answer}\n{close}")
    for key in ("{open}", "{close}", "{answer}"):
        if key not in block:
            raise ValueError(f"{path}: answer_block must contain {key}")
    return PromptSpec(data.pop("system"), user, block, (scale[0], scale[1]), data, str(path))


# ------------------------------------------------------------------------------ verdict parsing

_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
# A number word counts only where it ends the verdict ("Score: seven."), not in "one of the best".
_NUM = r"(-?\d+(?:\.\d+)?|(?:" + "|".join(_WORDS) + r")(?=\s*(?:/|out\s+of|[.!,;)*\"\n]|$)))"
_DEN = r"(?:\s*(?:/|out\s+of|of)\s*(\d+))?"
_GAP = r"[\s*_`\"':=]*"
# Priority order: an explicit label, a fraction, a "give it a N" phrase, a bold number.
_VERDICT_PATTERNS = [
    re.compile(rf"\b(?:final\s+)?(?:score|rating|grade|verdict){_GAP}(?:is|of|would\s+be|=)?{_GAP}(?<![\w.]){_NUM}(?![\w]){_DEN}", re.I),
    re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*(\d+)(?!\w)", re.I),
    re.compile(rf"\b(?:give|gave|rate|rated|award|assign|score)\w*\s+(?:it|this|the\s+answer|this\s+answer|the\s+response)?\s*(?:an?\s+)?(?:score\s+of\s+)?(?<![\w.]){_NUM}(?![\w]){_DEN}", re.I),
    re.compile(r"\*\*\s*(-?\d+(?:\.\d+)?)\s*\*\*()"),
    re.compile(r"^\W*(-?\d+(?:\.\d+)?)\W*$()"),
]


@dataclass
class ParsedVerdict:
    """What ``parse_verdict`` found: the score or an error, and where the number starts."""

    score: float | None
    error: str | None
    start: int = -1  # offset of the number in the original text, for logprob lookup


def parse_verdict(text: object, scale: tuple[int, int] = (0, 10)) -> ParsedVerdict:
    """Read the judge's score from free text; never raises.

    Anything before a closing ``</think>`` is ignored (an unclosed ``<think>`` is an error: the judge
    ran out of tokens while thinking). A fraction whose denominator is not the scale's top is
    rescaled (``4/5`` on 0-10 is 8). Out of range, no number, or empty text give ``score=None``
    and an ``error``.

    >>> parse_verdict("<think>maybe 3</think> Score: **7**/10").score
    7.0
    """
    if not isinstance(text, str):
        return ParsedVerdict(None, f"unparseable: not text ({type(text).__name__})")
    lo, hi = scale
    offset = 0
    close = text.lower().rfind("</think>")
    if close >= 0:
        offset = close + len("</think>")
    elif "<think>" in text.lower():
        return ParsedVerdict(None, "unparseable: unfinished <think> block")
    body = text[offset:]
    if not body.strip():
        return ParsedVerdict(None, "unparseable: empty verdict")
    for pattern in _VERDICT_PATTERNS:
        matches = list(pattern.finditer(body))
        if not matches:
            continue
        match = matches[-1]  # judges restate their final answer last
        raw, den = match[1], match[2]
        value = float(_WORDS[raw.lower()]) if raw.lower() in _WORDS else float(raw)
        if den and int(den) != hi:
            if int(den) == 0:
                return ParsedVerdict(None, f"unparseable: fraction {raw}/0")
            value = value / int(den) * hi
        if not lo <= value <= hi:
            return ParsedVerdict(None, f"out of range: {value:g} not in [{lo}, {hi}]")
        return ParsedVerdict(value, None, offset + match.start(1))
    return ParsedVerdict(None, f"unparseable: no score in {body.strip()[:80]!r}")


# ------------------------------------------------------------------------------ logit mode

# next_dists(items) -> for each (request index, path) the next-token options (key, text, prob);
# a path is the tuple of keys chosen so far (token ids for local models, strings for servers).
NextDists = Callable[[list[tuple[int, tuple]]], list[list[tuple[Hashable, str, float]]]]


def score_probs(next_dists: NextDists, n: int, scale: tuple[int, int], *, eps: float = 1e-3, max_depth: int = 4,
                step_space: bool = True) -> list[dict[int, float]]:
    """Probability of each integer score for ``n`` prompts that end where the score begins.

    Walks the tokens as a trie, batched per depth: a number split into tokens ("1", "0") is
    followed to its end; the mass of "1" that does *not* continue with a digit is the mass of 1.
    With ``step_space`` a whitespace token before the number is stepped over once (for a prompt
    that ends in "Score:"); a prompt that already ends in a space sets it False, since following
    the model's small mass on a second space would cost a whole extra forward pass. Branches
    below ``eps`` stop (a candidate there keeps its mass). Tokens outside the score set are ignored.
    """
    lo, hi = scale
    cands = {str(k): k for k in range(lo, hi + 1)}
    prefixes = {c[:j] for c in cands for j in range(1, len(c))}
    out: list[dict[int, float]] = [defaultdict(float) for _ in range(n)]
    # frontier items: (request, path, digits so far, probability of the path, whitespace used)
    frontier = [(i, (), "", 1.0, False) for i in range(n)]
    for depth in range(max_depth):
        if not frontier:
            break
        dists = next_dists([(i, path) for i, path, _, _, _ in frontier])
        nxt = []
        for (i, path, digits, p, spaced), dist in zip(frontier, dists):
            cont = 0.0
            for key, tok, q in dist:
                if not digits:
                    if not tok.strip():
                        if step_space and not spaced and p * q > eps:
                            nxt.append((i, path + (key,), "", p * q, True))
                        continue
                    if not re.fullmatch(r"\s?\d+", tok):
                        continue
                    s = tok.strip()
                else:
                    if not tok[:1].isdigit():
                        continue
                    cont += q
                    if not tok.isdigit():
                        continue
                    s = digits + tok
                m = p * q
                if s in prefixes and m > eps and depth + 1 < max_depth:
                    nxt.append((i, path + (key,), s, m, spaced))
                elif s in cands:
                    out[i][cands[s]] += m
            if digits and digits in cands:
                out[i][cands[digits]] += p * max(0.0, 1.0 - cont)
        frontier = nxt
    return [dict(d) for d in out]


def expected_verdict(probs: dict[int, float], min_mass: float) -> Verdict:
    """The expected score under ``probs`` (renormalised), or a failure when too little mass is on scores."""
    mass = sum(probs.values())
    if mass < min_mass or mass <= 0:
        return Verdict(None, f"low score mass: {mass:.4f} < {min_mass}", mass=mass)
    value = sum(k * p for k, p in probs.items()) / mass
    return Verdict(value, None, mass=mass)


def chat_prompt(tokenizer: Any, messages: list[dict], prefix: str = "", template_kwargs: dict | None = None) -> str:
    """The chat-templated prompt text with the assistant turn opened and ``prefix`` already written.

    Used by local backends: the judge continues after ``prefix`` ("Score: " in logit mode).
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(template_kwargs or {}))
    return text + prefix


def score_token_table(tokenizer: Any) -> dict[int, str]:
    """Token ids whose text is a number (with at most one leading space) or whitespace only.

    These are the only tokens ``score_probs`` reads; gathering them keeps a vocabulary-sized
    distribution out of Python.
    """
    table = {}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if re.fullmatch(r"\s?\d+", text) or (text and not text.strip() and len(text) <= 4):
            table[token_id] = text
    return table


class LocalPrompts:
    """Prompt building for backends that hold a tokenizer (``self._tok``): token-level truncation of
    the answer (``max_answer_tokens``) and the chat-templated prompt as token ids."""

    _tok: Any
    max_answer_tokens: int
    chat_template_kwargs: dict

    def _truncate_tokens(self, text: str) -> str:
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_answer_tokens:
            return text
        kept = self._tok.decode(ids[: self.max_answer_tokens])
        return kept + f"\n[... {len(ids) - self.max_answer_tokens} more tokens cut]"

    def messages(self, request: JudgeRequest) -> list[dict]:
        """As ``Judge.messages``, with every special and added token of this judge's tokenizer neutralised."""
        return render_messages(request, self.max_answer_chars, self._truncate_tokens,  # type: ignore[attr-defined]
                               tokenizer_specials(self._tok))

    def prompt_ids(self, request: JudgeRequest, prefix: str) -> list[int]:
        """Token ids of the templated prompt for ``request``, the assistant turn opened with ``prefix``."""
        text = chat_prompt(self._tok, self.messages(request), prefix, self.chat_template_kwargs)  # type: ignore[attr-defined]
        return self._tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------ retries


@dataclass
class RetryPolicy:
    """Exponential backoff: attempt ``k`` (from 0) waits ``min(backoff_max_s, backoff_s * 2**k)``
    times a jitter factor in ``[1 - jitter, 1]`` before the next attempt."""

    max_attempts: int = bounded(4, ge=1)
    backoff_s: float = bounded(0.5, ge=0)
    backoff_max_s: float = bounded(8.0, ge=0)
    jitter: float = bounded(0.1, ge=0, le=1)

    def __post_init__(self) -> None:
        check_ranges(self)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.backoff_max_s, self.backoff_s * 2**attempt)
        return base * (1 - self.jitter * (rng or random).random())


class RetryableError(Exception):
    """A failure worth another attempt (timeout, connection error, HTTP 429 or 5xx)."""


def with_retries(fn: Callable[[], Any], policy: RetryPolicy, stats: JudgeStats | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """Call ``fn`` until it returns, retrying ``RetryableError`` with backoff; the last error is raised."""
    for attempt in range(policy.max_attempts):
        try:
            return fn()
        except RetryableError:
            if attempt + 1 == policy.max_attempts:
                raise
            if stats is not None:
                stats.add("retries")
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------ the interface


class Judge(ABC):
    """Scores ``JudgeRequest``s. Backends implement ``_judge`` over unique requests.

    Parameters shared by every backend: ``mode`` (``generate``: parse the number the judge
    writes; ``logit``: expected value over the score tokens), ``max_answer_chars`` (the answer is
    cut beyond it), ``min_score_mass`` (logit mode: below it the verdict fails instead of
    renormalising noise). Instances are picklable; models load lazily on the first ``score``.
    """

    backend = "base"

    def __init__(self, *, mode: str = "generate", max_answer_chars: int = 6000, min_score_mass: float = 0.05) -> None:
        if mode not in MODES:
            raise ValueError(f"judge mode must be one of {MODES}, got {mode!r}")
        if max_answer_chars < 1:
            raise ValueError("max_answer_chars must be >= 1")
        self.mode = mode
        self.max_answer_chars = max_answer_chars
        self.min_score_mass = min_score_mass
        self.stats = JudgeStats()

    def score(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One ``Verdict`` per request, in order. Identical requests are judged once."""
        requests = list(requests)
        unique: dict[JudgeRequest, int] = {}
        for req in requests:
            unique.setdefault(req, len(unique))
        self.stats.add("requests", len(requests))
        self.stats.add("unique", len(unique))
        if not unique:
            return []
        verdicts = self._judge(list(unique))
        if len(verdicts) != len(unique):
            raise RuntimeError(f"{type(self).__name__}._judge returned {len(verdicts)} verdicts for {len(unique)} requests")
        for v in verdicts:
            if v.score is None:
                self.stats.fail(v.error or "unknown: no reason given")
            else:
                self.stats.add("scored")
        return [verdicts[unique[req]] for req in requests]

    def messages(self, request: JudgeRequest) -> list[dict]:
        return render_messages(request, self.max_answer_chars, self._truncate_tokens)

    def _truncate_tokens(self, text: str) -> str:
        return text  # backends with a tokenizer cut by tokens too

    @abstractmethod
    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """Judge unique requests; one verdict each, in order; failures as ``Verdict(None, error)``."""

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["stats"] = None  # locks do not pickle; a shipped judge starts counting afresh
        return self._drop_runtime(state)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stats = JudgeStats()

    def _drop_runtime(self, state: dict) -> dict:
        return state


BACKENDS = {
    "transformers": "judges.transformers_judge:TransformersJudge",
    "openai": "judges.openai_judge:OpenAIJudge",
    "vllm": "judges.vllm_judge:VLLMJudge",
}


# The numeric settings the judge backends share, and their ranges: checked once, in build_judge.
PARAM_RANGES: dict[str, dict[str, Any]] = {
    "max_tokens": {"ge": 1}, "max_new_tokens": {"ge": 1}, "max_input_tokens": {"ge": 1},
    "max_answer_tokens": {"ge": 1}, "max_answer_chars": {"ge": 1}, "top_logprobs": {"ge": 1},
    "temperature": {"ge": 0}, "timeout_s": {"gt": 0}, "connect_timeout_s": {"gt": 0}, "concurrency": {"ge": 1},
    "batch_size": {"ge": 1}, "threads": {"ge": 1}, "min_score_mass": {"ge": 0, "le": 1},
    "branch_eps": {"ge": 0, "lt": 1}, "max_attempts": {"ge": 1}, "backoff_s": {"ge": 0}, "backoff_max_s": {"ge": 0},
    "jitter": {"ge": 0, "le": 1}, "gpu_memory_utilization": {"gt": 0, "le": 1},
}


def build_judge(backend: str, **params: Any) -> Judge:
    """Build a judge from flat config: ``build_judge(backend="openai", base_url=..., mode="logit")``.

    ``backend`` is a name in ``BACKENDS`` or a dotted ``module:Class`` path; unknown parameters
    raise ``TypeError`` from the backend's constructor, and a number out of its range (``PARAM_RANGES``)
    a ``ValueError`` naming it (``judge.timeout_s must be > 0, got -1``).
    """
    for name, bounds in PARAM_RANGES.items():
        if isinstance(params.get(name), (int, float)):
            check_value(f"judge.{name}", params[name], **bounds)
    target = BACKENDS.get(backend, backend)
    if ":" not in target:
        raise ValueError(f"unknown judge backend {backend!r}; known: {', '.join(BACKENDS)} or 'module:Class'")
    module, cls = target.split(":", 1)
    return getattr(importlib.import_module(module), cls)(**params)


def load_judge_config(spec: str | Path | dict) -> dict[str, Any]:
    """A judge config as a flat dict: a dict as is, else a YAML file by path or by name."""
    if isinstance(spec, dict):
        data = dict(spec)
    else:
        data = yaml.safe_load(resolve_config(spec).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "backend" not in data:
        raise ValueError(f"judge config {spec!r} must be a mapping with a 'backend' key")
    return data


def judge_from_config(spec: str | Path | dict) -> Judge:
    """``build_judge`` from a YAML file, a config name (``"smollm2"``) or a dict."""
    return build_judge(**load_judge_config(spec))


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
