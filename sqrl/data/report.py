"""The synthetic corpus's README: label rules, score histograms and the label-sanity figures.

Sanity by measurement: the SNR measured on each noisy clip per noise score (it must fall as the
score falls) and, independent of the label rules, wideband PESQ of each clip against its clean
source, which must correlate with the overall label.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sqrl.data import labels
from sqrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN
from sqrl.schema import Record

LEVELS = range(SCORE_MIN, SCORE_MAX + 1)


def histogram(records: Iterable[Record]) -> dict[str, dict[int, int]]:
    """Counts of each score 1-5 per dimension (missing scores are not counted)."""
    out = {d: {s: 0 for s in LEVELS} for d in DIMENSIONS}
    for rec in records:
        for d, s in rec.scores.items():
            if s is not None:
                out[d][s] += 1
    return out


def snr_by_noise_score(records: Iterable[Record]) -> dict[int, dict[str, float]]:
    """Measured SNR (dB) summary per noise score for the clips that carry noise."""
    values: dict[int, list[float]] = {}
    for rec in records:
        snr = rec.meta.get("measured_snr_db")
        if snr is not None and rec.scores.get("noise") is not None:
            values.setdefault(rec.scores["noise"], []).append(float(snr))
    return {s: {"n": len(v), "mean": round(float(np.mean(v)), 2), "std": round(float(np.std(v)), 2),
                "min": round(float(np.min(v)), 2), "max": round(float(np.max(v)), 2)}
            for s, v in sorted(values.items())}


def snr_monotone(table: dict[int, dict[str, float]]) -> bool:
    """True when the mean SNR rises strictly with the noise score (over the scores present)."""
    means = [table[s]["mean"] for s in sorted(table)]
    return all(a < b for a, b in zip(means, means[1:]))


def pesq_agreement(records: list[Record]) -> dict[str, Any]:
    """Pearson and Spearman of PESQ against each dimension, and mean PESQ per overall score."""
    from scipy import stats

    scored = [r for r in records if r.meta.get("pesq") is not None]
    out: dict[str, Any] = {"n": len(scored), "unscorable": sum(1 for r in records if "pesq" in r.meta
                                                                 and r.meta["pesq"] is None)}
    if len(scored) < 3:
        return out
    pesq = np.array([r.meta["pesq"] for r in scored])
    per_dim = {}
    for d in DIMENSIONS:
        y = np.array([r.scores[d] for r in scored], dtype=float)
        if np.ptp(y) == 0 or np.ptp(pesq) == 0:
            continue  # correlation undefined for a constant
        per_dim[d] = {"pearson": round(float(stats.pearsonr(pesq, y)[0]), 3),
                      "spearman": round(float(stats.spearmanr(pesq, y)[0]), 3)}
    out["per_dimension"] = per_dim
    out.update(per_dim.get("overall", {}))
    by_overall: dict[int, list[float]] = {}
    for r, p in zip(scored, pesq):
        by_overall.setdefault(r.scores["overall"], []).append(float(p))
    out["mean_by_overall"] = {s: round(float(np.mean(v)), 3) for s, v in sorted(by_overall.items())}
    return out


def corpus_stats(records: list[Record]) -> dict[str, Any]:
    """Everything README.md reports, as plain JSON-able data."""
    splits = {s: [r for r in records if r.meta.get("split") == s] for s in ("train", "test")}
    speakers = {s: {r.meta.get("speaker") for r in rs} for s, rs in splits.items()}
    sentences = {s: {r.meta.get("sentence_id") for r in rs} for s, rs in splits.items()}
    durations = [r.meta.get("duration", 0.0) for r in records]
    kinds: Counter = Counter()
    for r in records:
        for fam, params in (r.meta.get("degradations") or {}).items():
            if params:
                kinds[f"{fam}:{params.get('kind', 'gaps')}"] += 1
    snr = snr_by_noise_score(records)
    return {
        "n": len(records), "n_train": len(splits["train"]), "n_test": len(splits["test"]),
        "speakers": {s: len(v) for s, v in speakers.items()},
        "sentences": {s: len(v) for s, v in sentences.items()},
        "shared_speakers": len(speakers["train"] & speakers["test"]),
        "shared_sentences": len(sentences["train"] & sentences["test"]),
        "duration_s": {"mean": round(float(np.mean(durations)), 2) if durations else None,
                       "min": round(float(np.min(durations)), 2) if durations else None,
                       "max": round(float(np.max(durations)), 2) if durations else None},
        "histogram": {s: histogram(rs) for s, rs in (("all", records), *splits.items())},
        "degradation_kinds": dict(sorted(kinds.items())),
        "snr_by_noise_score": snr, "snr_monotone": snr_monotone(snr),
        "pesq": pesq_agreement(records),
    }


def _figures(out: Path, stats: dict[str, Any], records: list[Record]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig, axes = plt.subplots(1, len(DIMENSIONS), figsize=(2.4 * len(DIMENSIONS), 2.6), sharey=True)
    for ax, d in zip(axes, DIMENSIONS):
        counts = stats["histogram"]["all"][d]
        ax.bar(list(LEVELS), [counts[s] for s in LEVELS], color="#4878a8")
        ax.set_title(d, fontsize=9)
        ax.set_xticks(list(LEVELS))
    axes[0].set_ylabel("clips")
    fig.tight_layout()
    fig.savefig(fig_dir / "histograms.png", dpi=90)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    by_noise = [[r.meta["measured_snr_db"] for r in records if r.scores["noise"] == s
                 and r.meta.get("measured_snr_db") is not None] for s in range(1, 5)]
    a1.boxplot([v if v else [math.nan] for v in by_noise], tick_labels=["1", "2", "3", "4"])
    a1.set_xlabel("noise score")
    a1.set_ylabel("measured SNR (dB)")
    scored = [r for r in records if r.meta.get("pesq") is not None]
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(scored))
    a2.scatter([r.scores["overall"] + j for r, j in zip(scored, jitter)], [r.meta["pesq"] for r in scored],
               s=6, alpha=0.5)
    a2.set_xlabel("overall score")
    a2.set_ylabel("PESQ (wb) vs clean source")
    fig.tight_layout()
    fig.savefig(fig_dir / "label_sanity.png", dpi=90)
    plt.close(fig)
    return ["figures/histograms.png", "figures/label_sanity.png"]


def _hist_table(hist: dict[str, dict[int, int]]) -> str:
    rows = ["| dimension | " + " | ".join(str(s) for s in LEVELS) + " |", "|---" * 6 + "|"]
    rows += [f"| {d} | " + " | ".join(str(hist[d][s]) for s in LEVELS) + " |" for d in DIMENSIONS]
    return "\n".join(rows)


def _sanity_text(stats: dict[str, Any]) -> str:
    snr = stats["snr_by_noise_score"]
    lines = ["| noise score | clips | mean SNR (dB) | std | min | max |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {v['n']} | {v['mean']} | {v['std']} | {v['min']} | {v['max']} |" for s, v in snr.items()]
    n5 = stats["histogram"]["all"]["noise"][5]
    lines.append(f"| 5 | {n5} | no noise added | | | |")
    lines.append(f"\nMean SNR rises strictly with the noise score: **{'yes' if stats['snr_monotone'] else 'NO'}**. "
                 "The SNR is measured on each rendered clip (power of the signal before noise over the power "
                 "of the noise actually added, over the noisy span); the tests re-derive it from a freshly "
                 "synthesised clean source and the written wav, within 1 dB.\n")
    p = stats["pesq"]
    if "pearson" in p:
        lines.append(f"PESQ (wideband, P.862.2; independent of the label rules) of each clip against its clean "
                     f"source (the speech at its speed, before any degradation), n = {p['n']} "
                     f"({p['unscorable']} unscorable): against **overall** Pearson **{p['pearson']}**, "
                     f"Spearman **{p['spearman']}**.\n")
        lines.append("| overall | " + " | ".join(str(s) for s in p["mean_by_overall"]) + " |")
        lines.append("|---" * (len(p["mean_by_overall"]) + 1) + "|")
        lines.append("| mean PESQ | " + " | ".join(str(v) for v in p["mean_by_overall"].values()) + " |\n")
        lines.append("Per dimension (Pearson / Spearman): " + ", ".join(
            f"{d} {v['pearson']} / {v['spearman']}" for d, v in p["per_dimension"].items()) + ".")
    else:
        lines.append("PESQ was not measured (too few clips, or --no-pesq).")
    return "\n".join(lines)


def write_readme(out: Path, stats: dict[str, Any], records: list[Record]) -> Path:
    """Write ``out/README.md`` and ``out/figures/*.png`` from ``corpus_stats`` and the records."""
    figures = _figures(out, stats, records)
    t, cfg = stats.get("timing", {}), stats.get("config", {})
    text = f"""# Synthetic degraded-speech corpus

Made by `sqrl data synth` ({cfg.get('generator', '')}) with seed {cfg.get('seed')}, {stats['n']} clips
({stats['n_train']} train, {stats['n_test']} test) at {cfg.get('sample_rate')} Hz, source:
{'recordings under ' + str(cfg['clean_dir']) if cfg.get('clean_dir') else 'eSpeak NG'}.
Clip length {stats['duration_s']['mean']} s on average ({stats['duration_s']['min']}-{stats['duration_s']['max']} s).
Built in {t.get('seconds')} s ({t.get('clips_per_second')} clips/s, {t.get('workers')} worker processes).
Skipped: {len(stats.get('skipped', []))}{' (see stats.json)' if stats.get('skipped') else ''}.

The test split holds out voices and sentences: {stats['speakers']['train']} train and
{stats['speakers']['test']} test voices/speakers ({stats['shared_speakers']} shared),
{stats['sentences']['train']} train and {stats['sentences']['test']} test sentences
({stats['shared_sentences']} shared).

Files: `train.jsonl`, `test.jsonl` (sqrl manifests; degradation parameters, voice, sentence id,
measured SNR and PESQ in `meta`), `wav/`, `stats.json` (every number on this page), `figures/`.

## Label rules

{labels.RULES_MARKDOWN}
## Score histograms (all clips)

{_hist_table(stats['histogram']['all'])}

![histograms]({figures[0]})

## Label sanity, by measurement

{_sanity_text(stats)}

![label sanity]({figures[1]})

Degradation kinds used: {', '.join(f'{k} {v}' for k, v in stats['degradation_kinds'].items())}.
"""
    path = out / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
