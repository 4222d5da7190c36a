"""Reading a judge's verdict: the score it wrote (generate mode) or its probabilities (logit mode).

* ``parse_verdict`` reads a score out of what judges really write ("Score: 7/10", "**8**",
  "I'd give it a 6.5", ``{"score": 9}``, a leading ``<think>...</think>``).
* ``score_probs`` turns next-token probabilities into a distribution over the integer scores
  (``mode: logit``), walking multi-token numbers ("1" then "0" for 10) as a trie.

A failed judgement is a ``Verdict`` with ``score=None`` and an ``error`` saying why; it is never a
quiet 0.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Hashable


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
