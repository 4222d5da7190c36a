"""The synthetic corpus's label rules: parameter tables per score level, the rules that turn
degradation parameters into 1-5 scores, and the wording of artifacts and long descriptions.

Scores are integers 1-5, higher is better, except ``speed`` (1 very slow, 3 normal, 5 very
fast), as in QualiSpeech. Each degraded dimension's level sets the degradation's strength, and
the score is then computed back from the parameters with the thresholds below, so the label is a
rule on what was done to the clip. ``listening_effort`` and ``overall`` are derived.
``RULES_MARKDOWN`` is the same rules in prose for the corpus README.
"""
from __future__ import annotations

import math

import numpy as np

from sqrl.dimensions import DIMENSIONS

QUALITY_FAMILIES: tuple[str, ...] = ("naturalness", "noise", "distortion", "continuity")

# How many of the four quality families a clip degrades (k = 0..4), and each degraded family's
# level (1..4). Tuned so that every dimension, the derived two included, covers all of 1-5.
FAMILY_COUNT_P = (0.18, 0.30, 0.28, 0.16, 0.08)
LEVEL_P = {1: 0.20, 2: 0.25, 3: 0.27, 4: 0.28}
SPEED_LEVEL_P = {1: 0.15, 2: 0.15, 3: 0.40, 4: 0.15, 5: 0.15}

SPEECH_SECONDS = (2.0, 3.2)  # clean speech per clip, before gaps are inserted

# Speed: tempo = eSpeak words/min / 175, or the time-stretch factor of a recording.
SPEED_TEMPO = {1: (0.46, 0.54), 2: (0.70, 0.77), 3: (0.94, 1.08), 4: (1.40, 1.54), 5: (1.94, 2.15)}
SPEED_THRESHOLDS = (0.63, 0.86, 1.20, 1.65)  # tempo below each -> speed 1, 2, 3, 4; else 5
ESPEAK_NORMAL_WPM = 175

# Noise: SNR (dB) sampled inside each level's band; the score comes back from NOISE_THRESHOLDS.
NOISE_SNR = {4: (22.0, 28.0), 3: (13.0, 17.0), 2: (6.0, 9.0), 1: (-2.0, 2.0)}
NOISE_THRESHOLDS = (20.0, 11.0, 4.0)  # SNR >= 20 -> 4, >= 11 -> 3, >= 4 -> 2, else 1
NOISE_WHOLE_P = 0.55
NOISE_INTERVAL_S = (1.0, 2.0)

DISTORTION_PARAMS = {
    "clipping": {4: {"gain_db": (6, 8)}, 3: {"gain_db": (13, 16)}, 2: {"gain_db": (21, 25)},
                 1: {"gain_db": (30, 35)}},
    "bitcrush": {4: {"bits": 8, "hold": 1}, 3: {"bits": 6, "hold": 2}, 2: {"bits": 4, "hold": 3},
                 1: {"bits": 3, "hold": 5}},
    "bandlimit": {4: {"low_hz": 150, "high_hz": 4500}, 3: {"low_hz": 300, "high_hz": 3000},
                  2: {"low_hz": 400, "high_hz": 1800}, 1: {"low_hz": 500, "high_hz": 1000}},
    "crackle": {4: {"rate_hz": 4, "amplitude": 0.2}, 3: {"rate_hz": 12, "amplitude": 0.35},
                2: {"rate_hz": 30, "amplitude": 0.6}, 1: {"rate_hz": 70, "amplitude": 0.9}},
}
DISTORTION_WHOLE_P = 0.35
DISTORTION_INTERVAL_S = (0.8, 1.6)

# Strong enough at level 4 to be heard (and seen in a log-mel) through moderate noise: a probe on
# simple pitch features could not tell the first, weaker table's level 4 from clean speech.
NATURALNESS_PARAMS = {
    "monotone": {4: {"wet": 0.55}, 3: {"wet": 0.75}, 2: {"wet": 0.90}, 1: {"wet": 1.0}},
    "robotic": {4: {"depth": 0.50}, 3: {"depth": 0.70}, 2: {"depth": 0.85}, 1: {"depth": 1.0}},
    "warble": {4: {"cents": 100}, 3: {"cents": 200}, 2: {"cents": 320}, 1: {"cents": 500}},
}

# Continuity: (number of gaps, seconds per gap) per level; the score comes back from
# continuity_score on the gaps actually made.
CONTINUITY_GAPS = {4: (1, (0.20, 0.30)), 3: (1, (0.50, 0.70)), 2: (2, (0.40, 0.60)), 1: (3, (0.50, 0.80))}
LONG_GAP_S = 0.4

# Listening effort: weighted deficits (5 - score); speed costs effort only at its extremes.
EFFORT_WEIGHTS = {"noise": 1.0, "distortion": 0.85, "continuity": 0.6, "naturalness": 0.4}
EFFORT_SPEED_DEFICIT = {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0}
EFFORT_SECOND_WEIGHT = 0.3
OVERALL_WEIGHTS = (0.5, 0.3, 0.2, 0.1)  # applied to the sorted deficits, largest first


def round_half_up(x: float) -> int:
    """2.5 -> 3, 3.5 -> 4 (Python's round would give 2 and 4); a tiny epsilon absorbs float noise."""
    return int(math.floor(x + 0.5 + 1e-9))


def clamp_score(x: int) -> int:
    return max(1, min(5, int(x)))


def speed_score(tempo: float) -> int:
    """Speed 1-5 from the tempo relative to a normal speaking rate (1.0)."""
    return 1 + sum(tempo >= t for t in SPEED_THRESHOLDS)


def noise_score(snr_db: float | None) -> int:
    """Noise 1-5 from the SNR of the added noise; ``None`` (no noise added) is 5."""
    if snr_db is None:
        return 5
    return 4 - sum(snr_db < t for t in NOISE_THRESHOLDS)


def continuity_score(gaps: list[float]) -> int:
    """Continuity 1-5 from the durations (s) of the unnatural pauses and dropouts."""
    if not gaps:
        return 5
    if len(gaps) == 1:
        return 4 if gaps[0] < LONG_GAP_S else 3
    return 2 if len(gaps) == 2 else 1


def listening_effort(scores: dict[str, int]) -> int:
    """5 minus (largest weighted deficit + 0.3 x the second), rounded half up, clamped to 1-5."""
    deficits = sorted(
        [w * (5 - scores[d]) for d, w in EFFORT_WEIGHTS.items()] + [EFFORT_SPEED_DEFICIT[scores["speed"]]],
        reverse=True,
    )
    return clamp_score(5 - round_half_up(deficits[0] + EFFORT_SECOND_WEIGHT * deficits[1]))


def overall(scores: dict[str, int]) -> int:
    """5 minus a weighted sum of the sorted deficits of the four quality dimensions and effort."""
    deficits = sorted((5 - scores[d] for d in (*QUALITY_FAMILIES, "listening_effort")), reverse=True)
    return clamp_score(5 - round_half_up(sum(w * d for w, d in zip(OVERALL_WEIGHTS, deficits))))


def derive_scores(speed: int, naturalness: int, noise: int, distortion: int, continuity: int) -> dict[str, int]:
    """All seven dimensions, in ``DIMENSIONS`` order, from the five measured ones."""
    s = {"speed": speed, "naturalness": naturalness, "noise": noise, "distortion": distortion,
         "continuity": continuity}
    s["listening_effort"] = listening_effort(s)
    s["overall"] = overall(s)
    return {d: s[d] for d in DIMENSIONS}


def sample_levels(rng: np.random.Generator) -> dict[str, int]:
    """A random subset of the quality families with a level 1-4 each; untouched ones get 5."""
    k = int(rng.choice(len(FAMILY_COUNT_P), p=FAMILY_COUNT_P))
    chosen = set(rng.choice(QUALITY_FAMILIES, size=k, replace=False).tolist())
    return {f: (int(rng.choice(list(LEVEL_P), p=list(LEVEL_P.values()))) if f in chosen else 5)
            for f in QUALITY_FAMILIES}


def sample_speed_level(rng: np.random.Generator) -> int:
    return int(rng.choice(list(SPEED_LEVEL_P), p=list(SPEED_LEVEL_P.values())))


def sample_tempo(level: int, rng: np.random.Generator) -> float:
    lo, hi = SPEED_TEMPO[level]
    return float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------------------------
# Wording. Several phrasings each, so the model learns content rather than one sentence.
# ----------------------------------------------------------------------------------------------

SEVERITY = {
    4: ("faint", "slight", "light", "barely noticeable"),
    3: ("noticeable", "moderate", "clearly audible", "distinct"),
    2: ("loud", "strong", "prominent", "heavy"),
    1: ("very loud", "overwhelming", "severe", "extremely strong"),
}
NOISE_TEXT = {
    "white": ("steady broadband hiss", "white-noise hiss", "hiss like radio static", "flat, airy hiss"),
    "pink": ("rushing noise like a waterfall", "shower-like rushing noise", "soft rushing noise",
             "hiss similar to distant rain"),
    "brown": ("low rumbling noise", "rumble similar to wind", "dull background roar", "deep rumbling sound"),
    "hum": ("electrical mains hum at {hum_hz:g} Hz", "low buzzing hum", "droning power-line hum",
            "{hum_hz:g} Hz electrical hum"),
    "babble": ("background chatter of several voices", "crowd babble", "murmur of other speakers",
               "indistinct talking in the background"),
}
DISTORTION_TEXT = {
    "clipping": ("clipping on the loud syllables", "harsh clipping distortion", "overdriven, clipped sound",
                 "saturated, clipped peaks"),
    "bitcrush": ("grainy bit-crushed quantization", "gritty low-resolution digital sound",
                 "crunchy lo-fi digital texture", "quantization distortion that sounds grainy"),
    "bandlimit": ("muffled band-limited sound like a telephone line", "narrow, tinny telephone-like band",
                  "muffled voice with the high frequencies missing", "band-limited sound lacking treble"),
    "crackle": ("crackling clicks", "popping and crackling like an old record", "intermittent clicks and pops",
                "electrical crackle"),
}
PAUSE_TEXT = {
    "pause": ("unnatural pause in the middle of the speech", "abrupt silent gap", "speaker stops unexpectedly",
              "sudden break in the speech"),
    "dropout": ("audio drops out", "dropout cuts off part of a word", "signal vanishes briefly",
                "chunk of speech is missing"),
}
NATURALNESS_TEXT = {
    5: ("The voice sounds natural for this speaker.", "The voice itself sounds natural.",
        "Nothing about the voice sounds artificial."),
    "monotone": ("The voice is {sev} flattened into a monotone, buzzy robotic pitch.",
                 "There is a {sev} vocoder-like buzz and the pitch sounds flat.",
                 "Intonation is {sev} flattened, with a mechanical buzzing quality."),
    "robotic": ("A {sev} metallic, ring-modulated quality makes the voice sound robotic.",
                "The voice has a {sev} metallic robotic ring.",
                "A {sev} inharmonic, metallic modulation makes the voice sound synthetic."),
    "warble": ("The pitch wobbles with a {sev} warble, which sounds unnatural.",
               "A {sev} pitch jitter makes the voice waver unnaturally.",
               "The voice warbles with {sev} pitch instability."),
}
# The answer's voice line (``Assessment.voice``): one fixed phrase per kind and level, like a score line, so
# that the model names what it hears in the voice before it scores naturalness.
VOICE_NATURAL = "natural"
VOICE_ADVERB = {4: "slightly", 3: "clearly", 2: "strongly", 1: "severely"}
VOICE_KIND = {"monotone": "monotone", "robotic": "robotic", "warble": "warbling"}


def voice_text(naturalness: dict | None) -> str:
    """The voice phrase for a clip's naturalness degradation (``meta.degradations.naturalness``):
    ``natural`` for none, else adverb of the level and adjective of the kind.

    >>> voice_text(None), voice_text({"kind": "robotic", "level": 2})
    ('natural', 'strongly robotic')
    """
    if naturalness is None:
        return VOICE_NATURAL
    return f"{VOICE_ADVERB[int(naturalness['level'])]} {VOICE_KIND[naturalness['kind']]}"


SPEED_TEXT = {
    1: ("The speaker talks very slowly.", "The speaking rate is far too slow.", "The pace is extremely slow."),
    2: ("The pace is somewhat slow.", "The speaker talks a little slowly.", "Speech is slightly slower than normal."),
    3: ("The speaking rate is normal.", "The pace is natural.", "The speaker talks at a normal speed."),
    4: ("The speech is a little fast.", "The speaker talks somewhat quickly.", "The pace is slightly hurried."),
    5: ("The speaker talks very fast.", "The speaking rate is far too fast.", "The pace is extremely rushed."),
}
EFFORT_TEXT = {5: "no effort", 4: "little effort", 3: "some effort", 2: "considerable effort", 1: "great effort"}
OVERALL_TEXT = {5: "excellent", 4: "good", 3: "fair", 2: "poor", 1: "bad"}
NEG_NOISE = ("There is no background noise.", "The background is clean.", "No noise is audible.")
NEG_DISTORTION = ("The signal is not distorted.", "No distortion is audible.", "The sound is free of distortion.")
NEG_PAUSE = ("The speech flows without unnatural pauses.", "There are no unnatural pauses or dropouts.",
             "The speech is continuous.")


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def fmt_time(t: float) -> str:
    return f"{t:.1f}"


def when(start: float, end: float, duration: float, rng: np.random.Generator) -> str:
    """'throughout the clip' for a whole-clip span, else one of several interval phrasings."""
    if start <= 0.05 and end >= duration - 0.05:
        return pick(rng, ("throughout the clip", "over the whole recording", "from start to end"))
    a, b = fmt_time(start), fmt_time(end)
    return pick(rng, (f"from {a} to {b} seconds", f"between {a} s and {b} s", f"at {a}-{b}s",
                      f"from {a}s to {b}s"))


def artifact_text(group: str, kind: str, level: int, params: dict, rng: np.random.Generator) -> str:
    """Brief description of one artifact; ``group`` is noise, distortion or pause."""
    table = {"noise": NOISE_TEXT, "distortion": DISTORTION_TEXT, "pause": PAUSE_TEXT}[group]
    base = pick(rng, table[kind]).format(**params)
    if group == "pause":
        return base[0].upper() + base[1:]
    sev = pick(rng, SEVERITY[level])
    text = f"{sev} {base}"
    return text[0].upper() + text[1:]


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:] if text else text


def _artifact_sentence(group: str, items: list[tuple[str, float, float]], duration: float,
                       rng: np.random.Generator) -> str:
    """One sentence for all artifacts of a group: ``items`` are (brief text, start, end)."""
    if group == "pause":
        spans = [when(s, e, duration, rng) for _, s, e in items]
        joined = spans[0] if len(spans) == 1 else ", ".join(spans[:-1]) + " and " + spans[-1]
        count = {2: "two", 3: "three", 4: "four"}.get(len(items), str(len(items)))
        noun = "an unnatural break" if len(items) == 1 else f"{count} unnatural breaks"
        return pick(rng, (f"There is {noun} in the speech {joined}.",
                          f"The speech is interrupted by {noun} {joined}.",
                          f"Continuity suffers from {noun}, {joined}."))
    parts = [f"{_lower_first(t)} {when(s, e, duration, rng)}" for t, s, e in items]
    joined = "; ".join(parts)
    return pick(rng, (f"There is {joined}.", f"One can hear {joined}.", f"The recording contains {joined}."))


def long_description(scores: dict[str, int], naturalness_kind: str | None,
                     artifacts: dict[str, list[tuple[str, float, float]]], duration: float,
                     rng: np.random.Generator) -> str:
    """A varied, multi-sentence description that states every dimension and every artifact.

    ``artifacts`` maps group (noise, distortion, pause) to (brief text, start, end) triples.
    """
    nat = scores["naturalness"]
    if naturalness_kind is None or nat == 5:
        nat_sentence = pick(rng, NATURALNESS_TEXT[5])
    else:
        nat_sentence = pick(rng, NATURALNESS_TEXT[naturalness_kind]).format(sev=pick(rng, SEVERITY[nat]))
    middle = [nat_sentence]
    for group, negatives in (("noise", NEG_NOISE), ("distortion", NEG_DISTORTION), ("pause", NEG_PAUSE)):
        items = artifacts.get(group, [])
        middle.append(_artifact_sentence(group, items, duration, rng) if items else pick(rng, negatives))
    order = rng.permutation(len(middle))
    effort, quality = EFFORT_TEXT[scores["listening_effort"]], OVERALL_TEXT[scores["overall"]]
    closing = pick(rng, (f"Listening takes {effort}, and the overall quality is {quality}.",
                         f"Understanding it requires {effort}; overall the quality is {quality}.",
                         f"Overall the quality is {quality}, and listening takes {effort}."))
    sentences = [pick(rng, SPEED_TEXT[scores["speed"]])] + [middle[i] for i in order] + [closing]
    return " ".join(sentences)


def _level_table() -> str:
    """One row per level 4..1 with the parameters of every degradation at that level."""
    head = ("| level | speed tempo | noise SNR dB | clipping gain dB | bitcrush bits, hold | bandlimit Hz | "
            "crackle clicks/s, peak | monotone wet | robotic depth | warble cents | gaps (count x s) |")
    rows = [head, "|---" * 11 + "|"]
    d, n = DISTORTION_PARAMS, NATURALNESS_PARAMS
    for lv in (5, 4, 3, 2, 1):
        if lv == 5:
            rows.append(f"| 5 | {SPEED_TEMPO[5]} | none | none | none | none | none | none | none | none | none |")
            continue
        count, secs = CONTINUITY_GAPS[lv]
        rows.append(
            f"| {lv} | {SPEED_TEMPO[lv]} | {NOISE_SNR[lv]} | {d['clipping'][lv]['gain_db']} | "
            f"{d['bitcrush'][lv]['bits']}, {d['bitcrush'][lv]['hold']} | "
            f"{d['bandlimit'][lv]['low_hz']}-{d['bandlimit'][lv]['high_hz']} | "
            f"{d['crackle'][lv]['rate_hz']}, {d['crackle'][lv]['amplitude']} | {n['monotone'][lv]['wet']} | "
            f"{n['robotic'][lv]['depth']} | {n['warble'][lv]['cents']} | {count} x {secs} |")
    return "\n".join(rows)


RULES_MARKDOWN = f"""\
Scores are integers 1-5, higher is better, except **speed** (1 very slow, 3 normal, 5 very fast).
Each clip degrades a random subset of the four quality families (naturalness, noise, distortion,
continuity): k of them with probabilities {FAMILY_COUNT_P} for k = 0..4, each at a level 1-4 drawn
with probabilities {tuple(LEVEL_P.values())}; an untouched family scores 5. The level sets the
strength of the degradation (table below; ranges are sampled uniformly) and the score is computed
back from the parameters by these rules:

- **speed**: tempo = eSpeak words/min / {ESPEAK_NORMAL_WPM} (or the time-stretch factor applied
  to a recording, which is taken to be at normal speed). tempo < {SPEED_THRESHOLDS[0]} -> 1,
  < {SPEED_THRESHOLDS[1]} -> 2, < {SPEED_THRESHOLDS[2]} -> 3, < {SPEED_THRESHOLDS[3]} -> 4, else 5.
- **noise**: white, pink, brown, mains hum (50/60 Hz with harmonics) or babble (five windows of
  reversed eSpeak speech) over the whole clip (p={NOISE_WHOLE_P}) or one interval of
  {NOISE_INTERVAL_S[0]}-{NOISE_INTERVAL_S[1]} s that carries speech. SNR = mean power of the signal
  before noise / mean noise power, over the noisy span. No noise -> 5; SNR >= {NOISE_THRESHOLDS[0]}
  dB -> 4, >= {NOISE_THRESHOLDS[1]} -> 3, >= {NOISE_THRESHOLDS[2]} -> 2, else 1.
- **distortion**: over the whole clip (p={DISTORTION_WHOLE_P}) or one interval of
  {DISTORTION_INTERVAL_S[0]}-{DISTORTION_INTERVAL_S[1]} s; score = the level of its parameters.
  clipping: overdrive by the gain into a hard limit, RMS restored; bitcrush: bits relative to the
  peak, sample-and-hold factor (at 16 kHz); bandlimit: 8th-order Butterworth band-pass; crackle:
  1-4 ms clicks per second with a peak relative to the clip peak.
- **naturalness** is a proxy: eSpeak voices as they come score 5, and one of these lowers it
  (score = level): monotone (channel vocoder onto a constant 95-140 Hz pulse train, mixed in at
  `wet`), robotic (ring modulation by a 120-250 Hz carrier at `depth`: inharmonic, metallic),
  warble (pitch jitter of up to `cents` at 4.5-8 Hz).
- **continuity**: unnatural gaps inside the speech, either inserted digital silence (pause) or
  zeroed speech (dropout). No gap -> 5; one gap < {LONG_GAP_S} s -> 4; one longer gap -> 3; two
  gaps -> 2; three or more -> 1.
- **listening_effort** = 5 - round_half_up(d1 + {EFFORT_SECOND_WEIGHT} d2), d1 >= d2 the two
  largest of the deficits (5 - score) weighted noise {EFFORT_WEIGHTS['noise']}, distortion
  {EFFORT_WEIGHTS['distortion']}, continuity {EFFORT_WEIGHTS['continuity']}, naturalness
  {EFFORT_WEIGHTS['naturalness']}, and a speed deficit of 1 at speed 1 or 5; clamped to 1-5.
- **overall** = 5 - round_half_up({' + '.join(f"{w} d{i + 1}" for i, w in enumerate(OVERALL_WEIGHTS))}), d1 >= ... >= d4
  the largest deficits among naturalness, noise, distortion, continuity and listening effort;
  clamped to 1-5.

Parameters per level (for speed the row is the speed score itself; 5 elsewhere means untouched):

{_level_table()}

Artifacts: one `noise` and one `distortion` artifact at most, with its interval (0 to the clip's
end when it covers the clip), and one `unnatural_pause` artifact per gap; intervals rounded to
10 ms, on the final timeline. Processing order: speech at its speed -> naturalness -> gaps ->
distortion -> noise -> loudness (RMS -26 to -20 dBFS, peak <= 0.95).
"""
