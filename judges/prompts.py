"""Judge prompts: the request a judge answers, prompt sets from YAML, and the untrusted answer fenced in.

* ``PromptSpec`` holds a prompt set loaded from YAML (``configs/judges/*.yaml``); its ``request``
  makes a ``JudgeRequest``. Rubric text is data, never code.
* The answer under judgement is untrusted (it is the policy's output). ``delimit`` neutralises
  markers, chat-control look-alikes and every special or added token of the judge's own tokenizer
  inside it (``judges.hygiene``), truncates it, and wraps it in markers derived from a hash of the
  answer itself, so the answer cannot close its own block and pose as instructions.
* ``LocalPrompts`` and ``chat_prompt``: the chat-templated prompt for backends that hold a tokenizer.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from judges.hygiene import neutralise, tokenizer_specials
from sqrl.config import shipped

CONFIG_DIR = shipped("judges")  # configs/judges/, shipped with sqrl as package data


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
    """A judge YAML by path, or by bare name under ``configs/judges/`` (``"dimwise"``, ``"qwen2.5-coder-1.5b"``)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
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


def chat_prompt(tokenizer: Any, messages: list[dict], prefix: str = "", template_kwargs: dict | None = None) -> str:
    """The chat-templated prompt text with the assistant turn opened and ``prefix`` already written.

    Used by local backends: the judge continues after ``prefix`` ("Score: " in logit mode).
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(template_kwargs or {}))
    return text + prefix


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
