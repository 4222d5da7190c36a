"""Evaluation plots as PNG files (matplotlib's Agg canvas; no display, no global pyplot state).

``sqrl eval`` calls ``scatter_per_dimension`` (a panel per dimension of predicted vs reference scores; integer
scores are jittered so that stacked points show; a missing prediction is drawn at the midpoint 3 as a red
cross, as the metrics count it) and ``pcc_bars`` (PCC per dimension, one bar per model or variant, with
optional error bars). ``sqrl compare`` adds ``reward_curves`` (GRPO reward per step, mean and spread over
seeds); ``sqrl sft`` writes ``training_curves`` (loss and token accuracy per logged step, one line per run);
``sqrl evaldiff`` draws ``difference_intervals`` (PCC differences between models with bootstrap intervals).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sqrl.dimensions import DIMENSIONS, DISPLAY_NAMES, SCORE_MAX, SCORE_MIN, valid_score
from sqrl.metrics import MIDPOINT, predicted_score, score_metrics
from sqrl.schema import Assessment


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _draw_scatter(ax: Any, rows: list[tuple[int | None, int]], title: str, rng: np.random.Generator,
                  jitter: float) -> None:
    for missing, style in ((False, dict(marker="o", color="tab:blue", alpha=0.5, s=12, label="parsed")),
                           (True, dict(marker="x", color="tab:red", alpha=0.8, s=18, label="missing -> 3"))):
        pts = [(MIDPOINT if p is None else p, r) for p, r in rows if (p is None) == missing]
        if pts:
            pred, true = np.array(pts, dtype=float).T
            ax.scatter(true + rng.uniform(-jitter, jitter, len(true)),
                       pred + rng.uniform(-jitter, jitter, len(pred)), **style)
    lim = (SCORE_MIN - 0.5, SCORE_MAX + 0.5)
    ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
    ticks = range(SCORE_MIN, SCORE_MAX + 1)
    ax.set(xlim=lim, ylim=lim, xticks=ticks, yticks=ticks, xlabel="reference", ylabel="predicted")
    ax.set_title(title, fontsize=9)
    if any(p is None for p, _ in rows):
        ax.legend(loc="upper left", fontsize=7)


def scatter_per_dimension(predictions: Sequence[Assessment | None], references: Sequence[Assessment],
                          path: str | Path, *, dimensions: Sequence[str] | None = None, jitter: float = 0.15,
                          seed: int = 0) -> Path:
    """One PNG with a predicted-vs-reference panel per dimension (default: every dimension some reference
    scores), each titled with its n and PCC as ``compute_metrics`` computes them."""
    dims = list(dimensions) if dimensions is not None else \
        [d for d in DIMENSIONS if any(valid_score(r.scores.get(d)) for r in references)]
    pcc = score_metrics(predictions, references)["pcc"]
    cols = min(4, max(1, len(dims)))
    rows_n = max(1, -(-len(dims) // cols))
    fig = _figure(3.2 * cols, 3.1 * rows_n)
    rng = np.random.default_rng(seed)
    for i, dim in enumerate(dims):
        rows = [(predicted_score(p, dim), r.scores[dim]) for p, r in zip(predictions, references)
                if valid_score(r.scores.get(dim))]
        value = "n/a" if pcc.get(dim) is None else f"{pcc[dim]:.2f}"
        _draw_scatter(fig.add_subplot(rows_n, cols, i + 1), rows,
                      f"{DISPLAY_NAMES.get(dim, dim)} (n={len(rows)}, PCC={value})", rng, jitter)
    if not dims:
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, "no reference scores", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def pcc_bars(pcc_by_model: Mapping[str, Mapping[str, float | None]], path: str | Path, *,
             errors: Mapping[str, Mapping[str, float | None]] | None = None, title: str | None = None) -> Path:
    """Grouped bars: for each dimension and the mean, one bar per model (``{label: metrics["pcc"]}``), so
    variants (unified vs dimension-wise, before vs after GRPO) compare at a glance; ``None`` drawn as 'n/a'.
    ``errors`` (same shape, e.g. the std over seeds) draws an error bar of that half-length on each bar."""
    names = [d for d in DIMENSIONS if any(d in pcc for pcc in pcc_by_model.values())] + ["mean"]
    labels = list(pcc_by_model)
    width = 0.8 / max(1, len(labels))
    fig = _figure(max(6.0, 1.0 + 0.9 * len(names) * max(1, len(labels)) ** 0.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    lowest = 0.0
    for j, label in enumerate(labels):
        values = [pcc_by_model[label].get(n) for n in names]
        xs = np.arange(len(names)) + (j - (len(labels) - 1) / 2) * width
        heights = [v if v is not None else 0.0 for v in values]
        lowest = min([lowest, *heights])
        errs = [(errors or {}).get(label, {}).get(n) for n in names]
        yerr = [e if e is not None and v is not None else 0.0 for e, v in zip(errs, values)]
        bars = ax.bar(xs, heights, width=width * 0.95, label=label,
                      **({"yerr": yerr, "capsize": 2, "error_kw": {"lw": 0.8}} if errors is not None else {}))
        for bar, v, e in zip(bars, values, yerr):
            ax.annotate("n/a" if v is None else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, max(v or 0, 0) + e),
                        ha="center", va="bottom", fontsize=7)
            lowest = min(lowest, (v or 0.0) - e)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([DISPLAY_NAMES.get(n, "Mean (6 dims)") for n in names], rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set(ylim=(lowest - 0.1, 1.08), ylabel="PCC",
           title=title or "Pearson correlation per dimension (speed not in the mean)")
    if len(labels) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def reward_curves(curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: str | Path, *,
                  ylabel: str = "mean total reward", spread_label: str = "min-max over seeds") -> Path:
    """One panel per run label (rewards differ in scale between variants): the mean over seeds per step as a
    line and the spread (``lo`` to ``hi``, e.g. min and max over seeds) shaded. Each curve is
    ``{"steps": [...], "mean": [...], "lo": [...], "hi": [...]}``; ``None`` values leave gaps."""
    labels = list(curves)
    cols = min(3, max(1, len(labels)))
    rows_n = max(1, -(-len(labels) // cols))
    fig = _figure(4.2 * cols, 3.2 * rows_n)
    for i, label in enumerate(labels):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        curve = curves[label]
        steps = np.asarray(curve.get("steps", []), dtype=float)

        def arr(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in curve.get(key, [])], dtype=float)

        mean = arr("mean")
        if len(steps) and len(mean):
            line, = ax.plot(steps, mean, marker="o" if len(steps) < 20 else None, ms=3, lw=1.4, label="mean over seeds")
            lo, hi = arr("lo"), arr("hi")
            if len(lo) == len(steps) and len(hi) == len(steps):
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.25, lw=0, label=spread_label)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no steps logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=label, xlabel="step", ylabel=ylabel)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    if not labels:
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, "no GRPO runs", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                    keys: Sequence[str] = ("loss", "mean_token_accuracy")) -> Path:
    """One panel per metric in ``keys``, one line per run: each run is its logged rows (``metrics.jsonl`` of
    a stage, dicts with ``step`` and the metrics); rows without a metric are skipped for that panel. A sawtooth
    here is an order effect: docs/small.md, "Length grouping"."""
    fig = _figure(4.6 * max(1, len(keys)), 3.4)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, max(1, len(keys)), i + 1)
        drawn = False
        for label, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
            if pts:
                x, y = np.array(pts, dtype=float).T
                ax.plot(x, y, lw=1.1, label=label)
                drawn = True
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=key.replace("_", " "), xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def difference_intervals(panels: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]], path: str | Path) -> Path:
    """One panel per score kind (``{"greedy": paired_bootstrap_pcc(...), "expected": ...}``): for each model
    but the first, its PCC difference from the first per dimension and the mean, a dot with its interval
    (``diff``, ``low``, ``high``); an interval that does not cross 0 is drawn solid. ``sqrl evaldiff``."""
    fig = _figure(5.2 * max(1, len(panels)), 3.8)
    for i, (title, result) in enumerate(panels.items()):
        ax = fig.add_subplot(1, max(1, len(panels)), i + 1)
        labels = list(result)[1:]
        names = [n for n in [*DIMENSIONS, "mean"] if n in result[list(result)[0]]]
        step = 0.7 / max(1, len(labels))
        for j, label in enumerate(labels):
            ys = np.arange(len(names)) + (j - (len(labels) - 1) / 2) * step
            for y, n in zip(ys, names):
                row = result[label][n]
                if row.get("diff") is None:
                    continue
                low, high = row.get("low", row["diff"]), row.get("high", row["diff"])
                ax.plot([low, high], [y, y], color=f"C{j}", lw=1.6, ls="-" if low > 0 or high < 0 else ":")
                ax.plot(row["diff"], y, "o", color=f"C{j}", ms=4, label=label if n == names[0] else None)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([DISPLAY_NAMES.get(n, "Mean (6 dims)") for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"{title}: PCC difference from {list(result)[0]}", xlabel="difference (95% interval)")
        ax.grid(alpha=0.3, axis="x")
        if labels:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def score_share_bars(shares: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path) -> Path:
    """One panel per dimension (``sqrl.evaldiff.score_shares``): for the scores 1-5, the share of clips the
    reference labels give each (grey) beside the share each model's greedy answers give it."""
    dims = list(shares)
    cols = min(4, max(1, len(dims)))
    rows = -(-len(dims) // cols)
    fig = _figure(3.4 * cols, 2.8 * rows)
    for i, d in enumerate(dims):
        ax = fig.add_subplot(rows, cols, i + 1)
        labels = list(shares[d])
        models = [label for label in labels if label != "reference"]
        scores = np.arange(SCORE_MIN, SCORE_MAX + 1)
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            color = "0.6" if label == "reference" else f"C{models.index(label)}"
            ax.bar(scores + (j - (len(labels) - 1) / 2) * width, shares[d][label]["shares"], width=width,
                   color=color, label=label)
        ax.set(title=DISPLAY_NAMES.get(d, d), xlabel="score", ylabel="share of clips", xticks=scores)
        ax.grid(alpha=0.3, axis="y")
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
