"""The structured answer: one canonical text format, ``render`` and a forgiving ``parse``.

The canonical answer that calibration and warm-up teach::

    Scores:
    - Speed: 3/5
    - Naturalness: 4/5
    - Noise: 2/5
    - Distortion: 5/5
    - Listening effort: 3/5
    - Continuity: 4/5
    - Overall quality: 3/5
    Artifacts:
    - Noise [0.00-1.70 s]: a steady hiss like wind
    - Distortion: none
    - Unnatural pause [1.20-1.50 s]: the speech stops mid-word
    Description: The speech is ...

A rubric with ``voice_line: true`` ends the artifact block with the voice's character, the evidence
for the naturalness score (``- Voice: slightly robotic``, ``- Voice: natural``); ``parse`` reads it into
``Assessment.voice`` wherever it stands outside the description.

``parse`` reads that and what models really write around it: any case and spacing, ``4/5``,
``4 out of 5``, ``score: 4``, markdown bold, headers and bullets, a leading ``<think>...</think>``,
intervals as ``1.2-1.5s``, ``1.2 s to 1.5 s``, ``from 0-1.7s``, several per line, and "none" or
"not noticeable" for an absent artifact. A missing or out-of-range value becomes ``None``;
``parse`` never raises. A non-integer score (``3.5``) is ``None`` too: rewarding a hedge would
teach the policy to hedge.

The score rule (rewards read ``parse``, so a lenient parser is a reward hack): a score is read only
where an integer 1-5 stands in score position, i.e. right after the dimension's name with nothing
between but punctuation and a few filler words (``score``, ``rating``, ``is``, ...), and it is on the
stated scale: no scale, ``/5``, ``of 5`` or ``out of 5``. Everything else is ``None``:
placeholders whose only digit is the scale's (``?/5``, ``N/A (out of 5)``, ``unknown/5``,
``cannot tell, out of 5``), numbers that run on (``1e309/5``, ``3rd``, ``4,5``), and every other
scale (``2/10``, ``7 out of 10``, ``80%``). Other scales are not rescaled: a mapping from 0-10 or
percent to 1-5 is a guess (is ``2/10`` a 1 or a 2?) that the policy could learn to game, and an answer
off the trained format should earn no accuracy and no format reward, so that the format stays the one
the rewards and ``sqrl eval`` read. ``sqrl eval`` counts such answers as unparsed.
"""
from __future__ import annotations

import re
from typing import Iterable

from sqrl.dimensions import (
    ARTIFACT_DISPLAY_NAMES,
    ARTIFACT_KINDS,
    DIMENSIONS,
    DISPLAY_NAMES,
    SCORE_MAX,
    SCORE_MIN,
)
from sqrl.schema import Artifact, Assessment

VOICE_NAME = "Voice"
MAX_PARSE_CHARS = 20_000  # longer answers are truncated before parsing; keeps parse linear and bounded

# ----------------------------------------------------------------------------------------- render


def format_time(seconds: float) -> str:
    return f"{seconds:.2f}"


def render_artifact(artifact: Artifact) -> str:
    name = ARTIFACT_DISPLAY_NAMES[artifact.kind]
    head = f"- {name} [{format_time(artifact.start)}-{format_time(artifact.end)} s]:"
    return f"{head} {artifact.text.strip()}".rstrip()


def render(
    answer: Assessment,
    *,
    dimensions: Iterable[str] | None = None,
    artifacts: bool | Iterable[str] = True,
    description: bool = True,
    artifacts_first: bool = False,
    voice: bool = False,
) -> str:
    """Render an ``Assessment`` (or ``Record``) as the canonical answer text.

    ``dimensions`` limits the score lines (default: every dimension that has a score);
    ``artifacts`` is True (all kinds), False, or the kinds to list; kinds without artifacts are
    written as ``none``. ``description`` adds the long-form description when there is one.
    ``artifacts_first`` puts the artifact block before the scores (a rubric's ``answer_order``), so a
    model writes what it heard before the scores that follow from it; ``parse`` reads either order.
    ``voice`` ends the artifact block with ``- Voice: <answer.voice>`` when the answer has a voice and
    naturalness is among ``dimensions`` (a rubric's ``voice_line``).

    >>> from sqrl.schema import Assessment
    >>> print(render(Assessment(scores={"noise": 2}), artifacts=False))
    Scores:
    - Noise: 2/5
    """
    dims = list(dimensions) if dimensions is not None else list(DIMENSIONS)
    score_lines = [
        f"- {DISPLAY_NAMES[d]}: {answer.scores[d]}/5" for d in dims if answer.scores.get(d) is not None
    ]
    scores = ["Scores:", *score_lines] if score_lines else []
    artifact_lines = []
    if artifacts:
        kinds = list(ARTIFACT_KINDS) if artifacts is True else list(artifacts)
        artifact_lines.append("Artifacts:")
        for kind in kinds:
            found = [a for a in answer.artifacts if a.kind == kind]
            if not found:
                artifact_lines.append(f"- {ARTIFACT_DISPLAY_NAMES[kind]}: none")
            artifact_lines += [render_artifact(a) for a in found]
    if voice and answer.voice and "naturalness" in dims:
        if not artifact_lines:
            artifact_lines.append("Artifacts:")
        artifact_lines.append(f"- {VOICE_NAME}: {answer.voice.strip()}")
    lines = artifact_lines + scores if artifacts_first else scores + artifact_lines
    if description and answer.description:
        lines.append(f"Description: {answer.description.strip()}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ parse

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_MARKDOWN = re.compile(r"(\*\*|__|`)")

_DIM_ALIASES: list[tuple[str, str]] = [
    # longest aliases first so "listening effort" wins over a bare "effort"
    ("overall quality", "overall"),
    ("overall score", "overall"),
    ("overall", "overall"),
    ("mos", "overall"),
    ("listening effort", "listening_effort"),
    ("listening_effort", "listening_effort"),
    ("effort", "listening_effort"),
    ("background noise", "noise"),
    ("noisiness", "noise"),
    ("noise", "noise"),
    ("distortion", "distortion"),
    ("continuity", "continuity"),
    ("naturalness", "naturalness"),
    ("speaking speed", "speed"),
    ("speech rate", "speed"),
    ("speed", "speed"),
]
_KIND_ALIASES: list[tuple[str, str]] = [
    ("unnatural pauses", "unnatural_pause"),
    ("unnatural pause", "unnatural_pause"),
    ("unnatural_pause", "unnatural_pause"),
    ("pauses", "unnatural_pause"),
    ("pause", "unnatural_pause"),
    ("background noise", "noise"),
    ("noise", "noise"),
    ("distortions", "distortion"),
    ("distortion", "distortion"),
]


def _alias_pattern(aliases: list[tuple[str, str]]) -> str:
    return "|".join(re.escape(a).replace(r"\ ", r"[\s_-]+") for a, _ in aliases)


def _canonical(name: str, aliases: list[tuple[str, str]]) -> str:
    key = re.sub(r"[\s_-]+", " ", name.lower()).strip()
    for alias, canon in aliases:
        if key == alias.replace("_", " "):
            return canon
    raise KeyError(name)  # unreachable for a name the pattern matched


_NUM = r"\d{1,6}(?:\.\d+)?"
_SECONDS = r"(?:s|sec|secs|second|seconds)\b"
# "1.2-1.5s", "1.2 s to 1.5 s", "from 0-1.7s", "0.00–1.70 s", "between 1 and 2 seconds"
_INTERVAL = re.compile(
    rf"(?<![\d.])({_NUM})\s*(?:{_SECONDS})?\s*(?:-|–|—|to|and|until)\s*({_NUM})(?![\d.])\s*(?:{_SECONDS})?",
    re.I,
)
# What may stand between a dimension's name and its score: punctuation, spaces and a few filler words
# ("Noise: 4", "Distortion - 2/5", "naturalness score: 3", "LISTENING EFFORT (5/5)", "MOS = 1"). Nothing
# else: a placeholder ("?", "N/A", "unknown", "cannot tell") is not a filler, so "Noise: ?/5" has no number
# in score position and cannot borrow the scale's 5 as its score. "of" and "out of" are not fillers either:
# a number after them is a scale ("of 5"), never a score. One token per repetition, and the alternatives
# cannot overlap, so the match stays linear.
_GAP_WORDS = r"score|scores|rating|rated|rate|level|grade|value|is|was|a|at|as"
_GAP = rf"(?:[\s:=(\[|–—-]|(?:{_GAP_WORDS})\b){{0,24}}?"
_SCORE_LINE = re.compile(
    rf"^(?P<name>{_alias_pattern(_DIM_ALIASES)})\b{_GAP}"
    rf"(?P<value>-?{_NUM})(?![\d.]*\s*(?:{_SECONDS}|-\s*\d|–|to\s+\d))"
    rf"(?:\s*(?:/|\bout\s+of\b|\bof\b)\s*(?P<scale>-?{_NUM}|five\b|ten\b|hundred\b))?"
    # a score ends where a number ends: "1e309", "3rd", "4,5", "80%", "4/5.5", "3/5/10" are not scores
    rf"(?P<tail>(?:[.,]\d|[^\W_]|_|\s*%|\s*/\s*\d)?)",
    re.I,
)
_KIND_LINE = re.compile(rf"^(?P<name>{_alias_pattern(_KIND_ALIASES)})\b\s*(?P<rest>.*)$", re.I | re.S)
_NONE_WORDS = re.compile(
    r"^(?:none|no\b.*|not\s+(?:noticeable|detected|present|observed|distorted|found)|n/?a|nil|absent|"
    r"nothing.*|clean|—|-)\W*$",
    re.I,
)
_HEADER = re.compile(
    r"^(?P<h>scores?|ratings?|dimension scores|quality scores|artifacts?|audio artifacts|detected artifacts|"
    r"description|long[\s-]*form description|summary|overall description|explanation)\s*:?\s*(?P<rest>.*)$",
    re.I | re.S,
)


# "Voice: slightly robotic", "Feeling of voice - hoarse"; not "Voice quality: 3/5" (no dimension is named
# "voice", and a score-like value is not a description of the voice), not "Voice: N/A" (a placeholder), not
# "Voice-over artifacts are audible" (a dash is a separator only with a space before it or a colon).
_VOICE_LINE = re.compile(r"^(?:feeling\s+of\s+(?:the\s+)?voice|voice)(?:\s*[:=]|\s+[-–—]|\s*[–—])\s*(?P<text>\S.*)$",
                         re.I | re.S)
_SCORE_LIKE = re.compile(r"\d\s*(?:/|out\s+of\b|of\s+\d)", re.I)
# only bare placeholders: "no special feeling" is a description of a voice (QualiSpeech writes such)
_VOICE_PLACEHOLDER = re.compile(r"(?:none|n/?a|nil|null|not\s+applicable|unknown)", re.I)


def _parse_voice(line: str) -> str | None:
    match = _VOICE_LINE.match(line)
    if not match:
        return None
    text = " ".join(match["text"].split()).strip(" .;,")
    if not re.search(r"[^\W\d_]", text) or _SCORE_LIKE.search(text) or _VOICE_PLACEHOLDER.fullmatch(text):
        return None
    return text


def _clean_line(line: str) -> str:
    line = _MARKDOWN.sub("", line).strip()
    line = re.sub(r"^(?:#+\s*|[-*•+]\s+|\d+[.)]\s+)", "", line)
    return line.strip()


def _score_match(line: str) -> tuple[str, int | None, re.Match] | None:
    """``(dimension, value, match)`` for a score line, else ``None``; ``value`` is ``None`` unless an integer
    on the 1-5 scale stands in score position, on the stated scale (none, or ``/5``, ``out of 5``)."""
    match = _SCORE_LINE.match(line)
    if not match:
        return None
    dim = _canonical(match["name"], _DIM_ALIASES)
    value: int | None = None
    on_scale = match["scale"] is None or match["scale"].lower() in (str(SCORE_MAX), "five")
    if on_scale and not match["tail"] and re.fullmatch(r"[0-9]", match["value"]):
        number = int(match["value"])
        value = number if SCORE_MIN <= number <= SCORE_MAX else None
    return dim, value, match


def _parse_score(line: str) -> tuple[str, int | None] | None:
    found = _score_match(line)
    return None if found is None else found[:2]


_LINE_LEAD = re.compile(r"^\s*(?:#+\s*|[-*•+]\s+|\d+[.)]\s+)?")


def score_spans(text: object) -> dict[str, tuple[int, int]]:
    """Character spans of the score digits that ``parse`` reads, per dimension.

    Only plain lines are located (``- Noise: 4/5``, ``Noise: 4 out of 5``, with or without a bullet);
    a score inside markdown emphasis or after a ``<think>`` block is parsed but has no span. Spans are
    for ``text`` as given. Used to read the model's probability of each score (``sqrl eval``'s
    expected scores).

    >>> text = "Scores:\\n- Noise: 4/5\\n- Distortion: 2/5"
    >>> {d: text[a:b] for d, (a, b) in score_spans(text).items()}
    {'noise': '4', 'distortion': '2'}
    """
    spans: dict[str, tuple[int, int]] = {}
    if not isinstance(text, str) or not text or _THINK.search(text[:MAX_PARSE_CHARS]):
        return spans
    offset, section = 0, None
    for raw in text[:MAX_PARSE_CHARS].splitlines(keepends=True):
        line = raw.rstrip("\r\n")
        lead = _LINE_LEAD.match(line).end()
        body = line[lead:]
        header = _HEADER.match(body.strip())
        if header and not _SCORE_LINE.match(body):
            h = header["h"].lower()
            section = ("description" if h.startswith(("desc", "long", "summ", "overall desc", "expl"))
                       else "artifacts" if h.startswith(("artifact", "audio art", "detected")) else "scores")
        elif section not in ("description", "artifacts"):
            found = _score_match(body)
            if found is not None and found[1] is not None and found[0] not in spans:
                start = offset + lead + found[2].start("value")
                spans[found[0]] = (start, start + 1)
        offset += len(raw)
    return spans


def _intervals(text: str) -> list[tuple[float, float]]:
    out = []
    for match in _INTERVAL.finditer(text):
        start, end = float(match[1]), float(match[2])
        if 0 <= start <= end:
            out.append((start, end))
    return out


_INTERVAL_PHRASE = re.compile(
    rf"(?:\b(?:from|between|at|during|around)\s+)?{_INTERVAL.pattern}(?:\s*(?:,|;|&|\band\b)\s*)?", re.I
)


def _strip_intervals(text: str) -> str:
    text = _INTERVAL_PHRASE.sub(" ", text)
    text = re.sub(r"[\[(]\s*[,;]?\s*[\])]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip(" ,;:-")


def _parse_artifact(line: str) -> tuple[str, list[Artifact]] | None:
    """``(kind, artifacts)`` for an artifact line (empty list for "none"), else ``None``."""
    match = _KIND_LINE.match(line)
    if not match:
        return None
    kind = _canonical(match["name"], _KIND_ALIASES)
    rest = match["rest"].strip()
    head, sep, tail = rest.partition(":")
    if not sep:
        head, tail = "", rest
    head_intervals = _intervals(head)
    text = tail.strip() if head_intervals else _strip_intervals(rest.lstrip(":").strip())
    intervals = head_intervals or _intervals(rest)
    if not intervals:
        if _NONE_WORDS.match(rest.lstrip(":").strip() or "none"):
            return kind, []
        return None  # a kind mentioned without time or "none": not an artifact claim we can use
    return kind, [Artifact(kind, s, e, text) for s, e in intervals]


def parse(text: object) -> Assessment:
    """Parse a model's answer into an ``Assessment``; never raises.

    >>> a = parse("**Noise**: 4 out of 5\\nDistortion - 2/5\\n- Noise from 0-1.7s: hiss")
    >>> a.scores["noise"], a.scores["distortion"], a.artifacts[0].end
    (4, 2, 1.7)
    """
    result = Assessment()
    if not isinstance(text, str) or not text:
        return result
    text = _THINK.sub("", text[:MAX_PARSE_CHARS])
    text = re.sub(r"^\s*<think>", "", text, flags=re.I)  # an unclosed tag: keep what follows
    section = None
    description: list[str] = []
    loose_prose: list[str] = []
    for raw in text.splitlines():
        line = _clean_line(raw)
        if not line:
            continue
        if section == "description":
            description.append(line)
            continue
        header = _HEADER.match(line)
        if header and (header["h"].lower().startswith(("desc", "long", "summ", "overall desc", "expl"))):
            section = "description"
            if header["rest"].strip():
                description.append(header["rest"].strip())
            continue
        if header and not _parse_score(line):
            section = "artifacts" if header["h"].lower().startswith(("artifact", "audio art", "detected")) else "scores"
            line = header["rest"].strip()
            if not line:
                continue
        if _consume(line, section, result):
            continue
        loose_prose.append(line)
    if description:
        result.description = " ".join(description).strip() or None
    elif loose_prose:
        prose = " ".join(p for p in loose_prose if len(p.split()) >= 4)
        result.description = prose or None
    return result


def _consume(line: str, section: str | None, result: Assessment) -> bool:
    """Read one cleaned line as a score, an artifact claim or the voice line; True when it was one."""
    voice = _parse_voice(line)
    if voice is not None:
        if result.voice is None:
            result.voice = voice
        return True
    if section != "artifacts":
        score = _parse_score(line)
        if score is not None:
            dim, value = score
            if result.scores[dim] is None:
                result.scores[dim] = value
            return True
    artifact = _parse_artifact(line)
    if artifact is not None and (section == "artifacts" or artifact[1] or section is None):
        result.artifacts.extend(artifact[1])
        return True
    return False
