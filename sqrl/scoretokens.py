"""Where an answer's score digits sit among its tokens, and their sibling tokens 1..5.

Shared by ``sqrl eval``'s expected scores (the probability of each digit where the model wrote a score) and
the SFT stage's ordinal score targets (``train.score_sigma``: soft targets over the five digits there).

A score digit is found in the decoded text by ``sqrl.response.score_spans`` and traced back to the token that
wrote it. Its *siblings* are the five spellings of that token with the digit replaced by 1..5 (``"3"`` ->
``"1"..."5"``; with a leading-space marker, ``"Ġ3"`` -> ``"Ġ1"..."Ġ5"``); only spellings with all five in the
vocabulary count.
"""
from __future__ import annotations

from typing import Any, Sequence

from sqrl.response import score_spans


def digit_templates(tokenizer: Any) -> dict[str, list[int]]:
    """Token spelling with its digit replaced by ``{}`` -> the ids of its spellings 1..5, in order."""
    found: dict[str, dict[int, int]] = {}
    for tok, tid in tokenizer.get_vocab().items():
        digits = [c for c in tok if c.isdigit()]
        if len(digits) == 1 and digits[0] in "12345":
            found.setdefault(tok.replace(digits[0], "{}"), {})[int(digits[0])] = tid
    return {t: [ids[k] for k in range(1, 6)] for t, ids in found.items() if len(ids) == 5}


def siblings(templates: dict[str, list[int]], token: str) -> tuple[list[int], int] | None:
    """(ids of the spellings 1..5 of ``token``, its own digit) for a token that writes one digit 1-5, else None."""
    digits = [c for c in token if c.isdigit()]
    if len(digits) != 1 or digits[0] not in "12345":
        return None
    ids = templates.get(token.replace(digits[0], "{}"))
    return (ids, int(digits[0])) if ids is not None else None


def score_positions(tokenizer: Any, ids: Sequence[int]) -> dict[str, int]:
    """Dimension -> the index in ``ids`` of the token that writes its score digit.

    ``ids`` is an answer's token ids (special tokens and negative ids are skipped, their indices kept).
    Only the score lines ``score_spans`` locates count, and only where one token holds the digit.
    """
    special = set(tokenizer.all_special_ids)
    kept = [k for k, t in enumerate(ids) if t >= 0 and t not in special]
    tokens = [int(ids[k]) for k in kept]
    # no clean-up of spaces: the prefix lengths below must add up to the same text
    text = tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    spans = score_spans(text)
    if not spans:
        return {}
    # the end of the text after each token: a decode per prefix (answers are a few hundred tokens)
    ends = [len(tokenizer.decode(tokens[:j + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False))
            for j in range(len(tokens))]
    out: dict[str, int] = {}
    for dim, (start, _) in spans.items():
        j = next((j for j, end in enumerate(ends) if end > start), None)
        if j is not None:
            out[dim] = kept[j]
    return out
