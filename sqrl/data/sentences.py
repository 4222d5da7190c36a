"""A built-in English sentence generator: simple grammatical sentences of a requested length.

Short sentences use an intransitive verb ("The old dog barked loudly."); longer ones a
transitive core plus adverbial phrases and a second clause. About 10^8 distinct sentences, so
held-out test sentences are easy to keep apart from training ones (``synth.py`` checks).
"""
from __future__ import annotations

import hashlib

import numpy as np

SUBJECTS = (
    "the old man", "my sister", "a small dog", "the teacher", "our neighbours", "Anna", "the pilot",
    "a young girl", "the farmer", "my uncle", "the students", "the tired nurse", "Peter", "the baker",
    "a tall stranger", "her brother", "the children", "the captain", "my friend", "the doctor",
    "a quiet boy", "the driver", "the gardener", "Maria", "the musician", "his mother", "the old woman",
    "the new manager", "a little cat", "the painter",
)
INTRANSITIVE = (
    "laughed", "slept", "waited", "smiled", "arrived", "left", "sang", "danced", "shouted", "listened",
    "fell", "agreed", "stayed", "returned", "whispered", "worked", "rested", "jumped",
)
ADVERBS = ("quietly", "loudly", "again", "early", "slowly", "today", "outside", "happily", "late", "twice")
TRANSITIVE = (
    "painted", "found", "carried", "opened", "wanted", "will visit", "cleaned", "bought", "lost",
    "repaired", "watched", "forgot", "sold", "borrowed", "closed", "moved", "wrapped", "noticed",
    "counted", "described",
)
OBJECTS = (
    "a blue door", "the heavy box", "an old letter", "the kitchen window", "a red bicycle", "the garden",
    "a wooden chair", "the morning paper", "a small boat", "the broken clock", "a warm coat", "the map",
    "a basket of apples", "the front gate", "a silver key", "the long table", "a paper bird", "the piano",
    "a bag of rice", "the yellow car", "an empty bottle", "the stone wall", "a green lamp", "the photos",
)
ADVERBIALS = (
    "in the morning", "after lunch", "near the river", "before the storm", "at the station",
    "on a cold day", "with great care", "by the old bridge", "in the quiet village", "during the holiday",
    "after the long meeting", "under the bright lights", "behind the school", "without a word",
    "at the end of the week", "in the small shop", "on the way home", "for the first time",
    "before dinner", "in the rain",
)
CLAUSES = (
    "and then went home", "because it was late", "while the others watched", "but nobody noticed",
    "and everyone was pleased", "although it was raining", "so we could leave early",
    "before the bus arrived", "and the dog barked", "while the kettle boiled",
)


def _cap(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def make_sentence(rng: np.random.Generator, n_words: int) -> str:
    """A sentence of about ``n_words`` words (within a few words; at least 2)."""
    subject = SUBJECTS[rng.integers(len(SUBJECTS))].split()
    if n_words <= 4:
        words = subject + [INTRANSITIVE[rng.integers(len(INTRANSITIVE))]]
        if len(words) < n_words:
            words.append(ADVERBS[rng.integers(len(ADVERBS))])
        return _cap(words)
    words = subject + TRANSITIVE[rng.integers(len(TRANSITIVE))].split() + OBJECTS[rng.integers(len(OBJECTS))].split()
    used_clause = False
    while len(words) < n_words - 1:
        if not used_clause and n_words - len(words) >= 5 and rng.random() < 0.4:
            words += CLAUSES[rng.integers(len(CLAUSES))].split()
            used_clause = True
        else:
            words += ADVERBIALS[rng.integers(len(ADVERBIALS))].split()
    return _cap(words)


def sentence_id(text: str) -> str:
    """A stable id for a sentence text: 'snt-' and 10 hex digits of its SHA-1."""
    return "snt-" + hashlib.sha1(text.lower().encode("utf-8")).hexdigest()[:10]
