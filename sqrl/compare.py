"""``sqrl compare``: the paper's comparison (Tables 1 and 3) on one corpus, one budget and several seeds.

Rows (``ROWS``): the untrained base model; calibration only (encoder trained); calibration only with the
encoder frozen; calibration + SFT reasoning on long-form answers (the warm-up, "QualiSpeech-FT style"); and
GRPO from that warm-up with the unified judge reward (SQ-LLM style), with accuracy + semantic rewards
dimension-wise, and with the LLM judge dimension-wise. Within a seed the rows share their upstream stages:
one calibration, one warm-up and one merged model that the three GRPO variants start from; the
frozen-encoder row is its own calibration. The untrained model does not depend on the seed and is evaluated
once.

Layout of ``OUT``::

    compare.yaml                    the resolved config
    untrained/model, untrained/eval
    seed<S>/{calibration,calibration_frozen,warmup,merged,grpo_unified,grpo_accsem,grpo_llmjudge}
    seed<S>/eval/<row>/             sqrl eval output (metrics.json, predictions.jsonl, report.md, plots/)
    results.json, report.md, plots/{pcc_by_row,reward_curves,scatter_best}.png

The stages are ``sqrl.pipeline``'s runners: a complete stage folder is skipped, an interrupted one continues
from its checkpoints, an evaluation newer than its model is reused. So a second call with the same ``OUT``
trains nothing and only rewrites the results, and an interrupted compare resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from sqrl.config import add_config_arguments, bounded, check_ranges, load_config, save_config
from sqrl.data.config import CorpusConfig
from sqrl.pipeline import EvalConfig, StageConfig, _done, print_finished
from sqrl.rundir import prepare_out

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    stage: str | None
    """The stage folder (under ``seed<S>/``) whose model the row evaluates; None: the untrained model."""
    calibration: str | None
    """The calibration stage the row descends from (its encoder mode is the row's 'Enc.' column)."""
    reasoning: str
    """How the long-form reasoning was trained: none, sft or grpo."""


ROWS: tuple[Row, ...] = (
    Row("untrained", "untrained base model", None, None, "none"),
    Row("calibration", "calibration only", "calibration", "calibration", "none"),
    Row("calibration_frozen", "calibration only, encoder frozen", "calibration_frozen", "calibration_frozen", "none"),
    Row("sft_reasoning", "calibration + SFT reasoning (QualiSpeech-FT style)", "warmup", "calibration", "sft"),
    Row("grpo_unified", "GRPO unified judge (SQ-LLM style)", "grpo_unified", "calibration", "grpo"),
    Row("grpo_accsem", "GRPO Acc.+Sem. dim.-wise", "grpo_accsem", "calibration", "grpo"),
    Row("grpo_llmjudge", "GRPO LLM-judge dim.-wise", "grpo_llmjudge", "calibration", "grpo"),
)
ROW_BY_NAME = {r.name: r for r in ROWS}
GRPO_STAGES = ("grpo_unified", "grpo_accsem", "grpo_llmjudge")
SFT_STAGES = ("calibration", "calibration_frozen", "warmup")
# The metrics of sqrl eval that are aggregated over seeds (numbers, or nested mappings of numbers).
AGGREGATED = ("pcc", "srcc", "mae", "parse_rate", "artifacts", "long_form", "expected")
REWARD_KEY = "rewards/total/mean"


@dataclass
class CompareConfig:
    """Stages are ``sqrl pipeline``'s ``StageConfig`` (their ``enabled`` is not used here: ``rows`` decides)."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The one corpus every row trains on (train split) and is evaluated on (test split)."""
    seeds: list[int] = bounded(default_factory=lambda: [0, 1], ge=0)
    """Training seeds (``train.seed`` of every SFT and GRPO stage); the corpus and base model stay fixed."""
    rows: list[str] = field(default_factory=lambda: [r.name for r in ROWS])
    """Rows to train and evaluate (a subset runs only the stages it needs)."""
    calibration: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/calibration.yaml"))
    calibration_frozen: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/calibration.yaml"))
    """The encoder-frozen calibration; ``lora.encoder_mode=frozen`` is applied after its overrides."""
    warmup: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/warmup.yaml"))
    grpo_unified: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/grpo_unified.yaml"))
    grpo_accsem: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/grpo_accsem_dimwise.yaml"))
    grpo_llmjudge: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/grpo_llmjudge_dimwise.yaml"))
    sft_overrides: list[str] = field(default_factory=list)
    """Dotted overrides for every SFT stage, before each stage's own (e.g. ``train.max_steps=2``)."""
    grpo_overrides: list[str] = field(default_factory=list)
    """Dotted overrides for every GRPO stage, before each stage's own: the shared GRPO budget."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward_window: int = bounded(5, ge=1)
    """Table 3's training reward: mean over the first and the last N logged steps (at most half of them)."""

    def __post_init__(self):
        check_ranges(self)
        unknown = [r for r in self.rows if r not in ROW_BY_NAME]
        if unknown:
            raise ValueError(f"rows: unknown {unknown}; known: {', '.join(ROW_BY_NAME)}")
        if not self.rows:
            raise ValueError("rows must name at least one row")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")


# ------------------------------------------------------------------------------------ aggregation
def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; None for fewer than two values), min and max over the
    defined values; ``n`` counts them and ``undefined`` the ``None`` ones (e.g. a PCC left undefined by a
    constant prediction)."""
    defined = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"mean": None, "std": None, "min": None, "max": None, "n": len(defined),
                           "undefined": len(values) - len(defined)}
    if defined:
        mean = sum(defined) / len(defined)
        out.update(mean=mean, min=min(defined), max=max(defined))
        if len(defined) > 1:
            out["std"] = math.sqrt(sum((v - mean) ** 2 for v in defined) / (len(defined) - 1))
    return out


def aggregate(runs: Sequence[Mapping[str, Any]]) -> Any:
    """The same nesting as each run, with every numeric leaf replaced by its ``spread`` over the runs. A key
    missing from a run counts as undefined there."""
    keys = list(dict.fromkeys(k for run in runs for k in run))
    out: dict[str, Any] = {}
    for key in keys:
        values = [run.get(key) for run in runs]
        if any(isinstance(v, Mapping) for v in values):
            out[key] = aggregate([v if isinstance(v, Mapping) else {} for v in values])
        elif all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            out[key] = spread(values)
    return out


def summarize_metrics(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Spread over seeds of the aggregated ``sqrl eval`` metrics (PCC/SRCC/MAE, parse rate, artifacts, ROUGE-L)."""
    return aggregate([{k: m.get(k) for k in AGGREGATED} for m in per_seed.values()])


def reward_curve(per_seed_rows: Mapping[str, Sequence[Mapping[str, Any]]], window: int = 5,
                 keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Reward curves of one GRPO row from each seed's ``metrics.jsonl`` rows: for the total reward and each
    reward's mean (``rewards/<name>/mean``), the per-seed series and their mean/std/min/max per step; and
    ``first``/``last``: the spread over seeds of the total reward's mean over the first and last ``window``
    steps (at most half the steps, at least one); ``change``: of last minus first."""
    steps = sorted({int(r["step"]) for rows in per_seed_rows.values() for r in rows if "step" in r})
    if keys is None:
        found = [k for rows in per_seed_rows.values() for r in rows for k in r
                 if k.startswith("rewards/") and k.endswith("/mean") and k.count("/") == 2]
        keys = [REWARD_KEY] + [k for k in dict.fromkeys(found) if k != REWARD_KEY]
    curves: dict[str, Any] = {}
    for key in keys:
        series = {}
        for seed, rows in per_seed_rows.items():
            by_step = {int(r["step"]): r.get(key) for r in rows if "step" in r}
            series[seed] = [by_step.get(s) for s in steps]
        stats = [spread([series[seed][i] for seed in series]) for i in range(len(steps))]
        curves[key] = {"per_seed": series, **{s: [x[s] for x in stats] for s in ("mean", "std", "min", "max")}}
    k = max(1, min(window, len(steps) // 2))
    total = curves.get(REWARD_KEY, {"per_seed": {}})["per_seed"]

    first = [spread(v[:k])["mean"] for v in total.values()]
    last = [spread(v[-k:])["mean"] for v in total.values()]
    change = [b - a if a is not None and b is not None else None for a, b in zip(first, last)]
    return {"steps": steps, "curves": curves, "window": k,
            "first": spread(first), "last": spread(last), "change": spread(change)}


def row_entry(row: Row, per_seed: Mapping[str, Mapping[str, Any]], encoder: str | None = None,
              logged: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, window: int = 5) -> dict[str, Any]:
    """A row of results.json: its description, the eval metrics per seed (``{seed: metrics.json}``), their
    ``summary`` over seeds and, for a GRPO row, its ``reward_curve`` from each seed's logged steps."""
    entry: dict[str, Any] = {"label": row.label, "encoder": encoder, "calibrated": row.calibration is not None,
                             "reasoning": row.reasoning, "seed_independent": row.stage is None,
                             "per_seed": dict(per_seed), "summary": summarize_metrics(per_seed)}
    if logged is not None:
        entry["reward_curve"] = reward_curve(logged, window=window)
    return entry


# ------------------------------------------------------------------------------------------ report
def _pm(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone when one value; ``n/a`` when none); a dagger when some seeds were
    undefined (their values are left out)."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:.{digits}f}"
    if stat.get("undefined"):
        text += " †"
    return text


def _get(tree: Mapping[str, Any], *path: str) -> Any:
    node: Any = tree
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


ENC_MARK = {"trainable": "✓", "lora": "LoRA", "frozen": "x", None: "—"}


def table1_lines(results: Mapping[str, Any]) -> list[str]:
    """Table 1 of the paper: PCC per dimension and the six-dimension mean, mean ± std over seeds, per row
    (plus the parse rate, which the paper does not need: its answers come parsed by GPT-4o)."""
    from sqrl.dimensions import EVAL_DIMENSIONS

    short = {"naturalness": "Nat.", "noise": "Noise", "distortion": "Distort.", "listening_effort": "Effort",
             "continuity": "Cont.", "overall": "MOS"}
    head = ["Row", "Learned Enc.", "Calibration", *[short[d] for d in EVAL_DIMENSIONS], "Avg.", "Avg., expected",
            "parse rate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results["rows"].items():
        s = row["summary"]
        cells = [row["label"], ENC_MARK.get(row.get("encoder"), str(row.get("encoder"))),
                 "✓" if row.get("calibrated") else "x",
                 *[_pm(_get(s, "pcc", d)) for d in EVAL_DIMENSIONS], f"**{_pm(_get(s, 'pcc', 'mean'))}**",
                 _pm(_get(s, "expected", "pcc", "mean")), _pm(_get(s, "parse_rate"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table3_lines(results: Mapping[str, Any]) -> list[str]:
    """Table 3 of the paper: artifact detection F1, description similarity ((cos + 1) / 2 of MiniLM embeddings,
    where the paper asks GPT-4o for a correlation score) and interval IoU per kind, and long-form ROUGE-L."""
    from sqrl.dimensions import ARTIFACT_DISPLAY_NAMES, ARTIFACT_KINDS

    head = ["Row"]
    for kind in ARTIFACT_KINDS:
        name = ARTIFACT_DISPLAY_NAMES[kind]
        head += [f"{name} F1", f"{name} Sim.", f"{name} IoU"]
    head.append("Long-form ROUGE-L")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["rows"].values():
        s = row["summary"]
        cells = [row["label"]]
        for kind in ARTIFACT_KINDS:
            cells += [_pm(_get(s, "artifacts", kind, m)) for m in ("f1", "similarity", "iou")]
        cells.append(_pm(_get(s, "long_form", "rouge_l")))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def reward_table_lines(results: Mapping[str, Any]) -> list[str]:
    """GRPO training reward per row: each row's own reward (scales differ between variants), first vs last steps."""
    lines = ["| Row | rewards | steps | first steps | last steps | change |", "|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        rc = row.get("reward_curve")
        if not rc:
            continue
        names = ", ".join(k.split("/")[1] for k in rc["curves"] if k != REWARD_KEY) or "total"
        lines.append(f"| {row['label']} | {names} | {len(rc['steps'])} | {_pm(rc['first'])} | {_pm(rc['last'])} | "
                     f"{_pm(rc['change'])} |")
    return lines


def other_metrics_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| Row | mean SRCC | mean MAE | eval clips | seeds |", "|---|---|---|---|---|"]
    for row in results["rows"].values():
        s = row["summary"]
        n = {m.get("n") for m in row["per_seed"].values()}
        seeds = "one model" if row.get("seed_independent") else ", ".join(row["per_seed"])
        lines.append(f"| {row['label']} | {_pm(_get(s, 'srcc', 'mean'))} | {_pm(_get(s, 'mae', 'mean'))} | "
                     f"{', '.join(str(x) for x in sorted(n, key=str))} | {seeds} |")
    return lines


def best_row(results: Mapping[str, Any]) -> tuple[str, str] | None:
    """(row, seed) with the highest mean PCC: the row by its mean over seeds (the first in table order on a
    tie), then its best seed."""
    scored = [(r["summary"]["pcc"]["mean"]["mean"], name) for name, r in results["rows"].items()
              if _get(r, "summary", "pcc", "mean", "mean") is not None]
    if not scored:
        return None
    top = max(v for v, _ in scored)
    name = next(n for v, n in scored if v == top)
    per_seed = results["rows"][name]["per_seed"]
    seed = max(per_seed, key=lambda s: _get(per_seed[s], "pcc", "mean") if _get(per_seed[s], "pcc", "mean")
               is not None else -math.inf)
    return name, seed


def write_plots(out: Path, results: Mapping[str, Any]) -> dict[str, Path]:
    """plots/pcc_by_row.png (bars: mean over seeds, error bars: std), plots/reward_curves.png (GRPO rows:
    mean total reward per step, shaded min-max over seeds), plots/scatter_best.png (predicted vs true of the
    best row's best seed)."""
    from sqrl.plots import pcc_bars, reward_curves, scatter_per_dimension

    plots = out / "plots"
    written: dict[str, Path] = {}
    means = {r["label"]: {d: v.get("mean") for d, v in r["summary"].get("pcc", {}).items()} for r in results["rows"].values()}
    stds = {r["label"]: {d: v.get("std") for d, v in r["summary"].get("pcc", {}).items()} for r in results["rows"].values()}
    written["pcc"] = pcc_bars(means, plots / "pcc_by_row.png", errors=stds,
                              title=f"PCC per dimension, mean ± std over seeds {results['seeds']}")
    curves = {}
    for row in results["rows"].values():
        rc = row.get("reward_curve")
        if rc and REWARD_KEY in rc["curves"]:
            c = rc["curves"][REWARD_KEY]
            curves[row["label"]] = {"steps": rc["steps"], "mean": c["mean"], "lo": c["min"], "hi": c["max"]}
    if curves:
        written["rewards"] = reward_curves(curves, plots / "reward_curves.png", ylabel="mean total reward (own scale)")
    best = best_row(results)
    if best is not None:
        from sqrl.schema import record_from_dict

        name, seed = best
        predictions = Path(results["rows"][name]["per_seed"][seed]["eval"])
        if not predictions.is_absolute():
            predictions = out / predictions
        preds, refs = [], []
        with open(predictions / "predictions.jsonl", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                refs.append(record_from_dict(row["reference"]))
                preds.append(_assessment(row.get("parsed")))
        written["scatter"] = scatter_per_dimension(preds, refs, plots / "scatter_best.png")
    return written


def _assessment(parsed: Mapping[str, Any] | None):
    from sqrl.schema import Artifact, Assessment, empty_scores

    if parsed is None:
        return None
    scores = empty_scores()
    scores.update({k: v for k, v in (parsed.get("scores") or {}).items() if k in scores})
    artifacts = [Artifact(a["kind"], float(a["start"]), float(a["end"]), a.get("text") or "")
                 for a in parsed.get("artifacts") or []]
    return Assessment(scores, artifacts, parsed.get("description"))


def write_report(out: Path, results: Mapping[str, Any]) -> Path:
    """report.md: Table 1 and Table 3 (mean ± std over seeds), the GRPO rewards, the plots."""
    plots = write_plots(out, results)
    best = best_row(results)
    seeds = results["seeds"]
    lines = [
        "# sqrl compare", "",
        f"Seeds {seeds}; {results.get('eval_clips', '?')} held-out clips of `{results.get('manifest', '?')}`; "
        f"total time {results.get('seconds', 0) / 60:.1f} min (this call). Cells are mean ± std over seeds "
        "(sample std); † marks a value undefined for some seeds (constant predictions), left out of the mean. "
        "The untrained model does not depend on the seed and is evaluated once.", "",
        "## Table 1: PCC per dimension", "", *table1_lines(results), "",
        "PCC of the greedy answers' integer scores, as the paper reports. *Avg., expected*: the six-dimension "
        "mean PCC of the expected scores (sum of k p(k) over the score digits the model wrote; `sqrl eval`), "
        "which keeps the ranking that the argmax flattens when a model hesitates.", "",
        "![PCC per row](plots/pcc_by_row.png)", "",
        "## Table 3: description quality", "",
        "Artifact detection F1 over clips, description similarity ((cos + 1) / 2 of all-MiniLM-L6-v2 embeddings "
        "where the paper asks GPT-4o for a correlation score) and interval IoU over clips where both sides "
        "detect the kind; long-form ROUGE-L.", "", *table3_lines(results), "",
    ]
    reward_lines = reward_table_lines(results)
    if len(reward_lines) > 2:
        windows = sorted({r["reward_curve"]["window"] for r in results["rows"].values() if r.get("reward_curve")})
        lines += ["## GRPO training rewards", "",
                  "Total training reward (each row's own rewards, so scales differ between rows) averaged over the "
                  f"first and the last {'/'.join(map(str, windows))} logged steps, and last minus first; mean ± std "
                  "over seeds.", "", *reward_lines, ""]
        if "rewards" in plots:
            lines += ["![reward curves](plots/reward_curves.png)", ""]
    lines += ["## Other score metrics", "", *other_metrics_lines(results), ""]
    if best is not None:
        which = "its only model" if results["rows"][best[0]].get("seed_independent") else f"seed {best[1]}"
        lines += [f"Predicted vs true scores of the best row by mean PCC, **{results['rows'][best[0]]['label']}** "
                  f"({which}):", "", "![predicted vs true](plots/scatter_best.png)", ""]
    lines += ["Per-model reports: `seed<S>/eval/<row>/report.md`; all numbers: `results.json`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ progress
# (fixed seconds, seconds per unit) per kind of task, measured on 2 CPU cores: SFT per optimizer step
# (calibration ~4.6 min for 639 steps, warm-up ~2 min for 213), GRPO per step (accuracy + semantic ~3 s, the
# SmolLM2 judges 30-60 s), eval per clip (~1 min for 300). Replaced by this run's own rate once a task of
# the kind has run.
DEFAULT_RATES: dict[str, tuple[float, float]] = {
    "calibration": (15.0, 0.43), "calibration_frozen": (15.0, 0.43), "warmup": (15.0, 0.56), "merge": (10.0, 0.0),
    "grpo_accsem": (30.0, 3.0), "grpo_unified": (55.0, 60.0), "grpo_llmjudge": (55.0, 45.0), "eval": (10.0, 0.2),
    "build": (5.0, 0.0),
}


@dataclass
class Task:
    name: str
    kind: str
    units: float
    run: Callable[[], Any]
    done: Callable[[], bool]


class Progress:
    """Runs tasks in order and logs a line per task: elapsed time and an estimate of what remains."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        self.rates = dict(DEFAULT_RATES)
        self.t0 = time.perf_counter()
        self.record: dict[str, dict[str, Any]] = {}

    def estimate(self, task: Task) -> float:
        fixed, per = self.rates.get(task.kind, (10.0, 0.0))
        return fixed + per * task.units

    def remaining(self, start: int) -> float:
        return sum(self.estimate(t) for t in self.tasks[start:] if not t.done())

    def run_all(self) -> dict[str, dict[str, Any]]:
        n = len(self.tasks)
        log.info("[compare] %d tasks, about %.0f min of work left", n, self.remaining(0) / 60)
        for i, task in enumerate(self.tasks):
            reused = task.done()
            if not reused:
                log.info("[compare %d/%d] %s: starting (about %.1f min)", i + 1, n, task.name, self.estimate(task) / 60)
            t = time.perf_counter()
            task.run()
            seconds = time.perf_counter() - t
            if not reused:  # this run's own rate replaces the default for the kind
                fixed = min(self.rates.get(task.kind, (10.0, 0.0))[0], seconds)
                per = (seconds - fixed) / task.units if task.units > 0 else 0.0
                self.rates[task.kind] = (fixed if task.units > 0 else seconds, per)
            self.record[task.name] = {"seconds": round(seconds, 1), "reused": reused}
            log.info("[compare %d/%d] %s %s in %.1f min | elapsed %.1f min | about %.0f min left", i + 1, n, task.name,
                     "reused" if reused else "done", seconds / 60, (time.perf_counter() - self.t0) / 60,
                     self.remaining(i + 1) / 60)
        return self.record


# ------------------------------------------------------------------------------------------ running
@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """One Ray runtime for the GRPO stages of a seed (the driver uses it instead of starting its own): a new
    local cluster of ``num_cpus`` (None: Ray's count), or the one ``$RAY_ADDRESS`` names; never another
    user's cluster on this machine (a bare ``ray.init()`` joins one it finds)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=True,
                 **({"num_cpus": num_cpus} if num_cpus else {}))
    try:
        yield
    finally:
        ray.shutdown()


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _sft_steps(stage: StageConfig, overrides: list[str], n_clips: int) -> int:
    from sft.config import SFTStageConfig

    cfg = load_config(SFTStageConfig, stage.config, overrides)
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    n = min(n_clips, cfg.data.limit) if cfg.data.limit else n_clips
    n *= 7 if cfg.data.prompting == "per_dimension" else 1
    return math.ceil(n * cfg.train.epochs / (cfg.train.batch_size * cfg.train.grad_accum))


def _grpo_plan(stage: StageConfig, overrides: list[str]) -> tuple[int, int | None]:
    """(steps, local Ray CPUs) of a GRPO stage."""
    from grpo.config import GRPOConfig

    cfg = load_config(GRPOConfig, stage.config, overrides)
    return cfg.train.steps, cfg.cluster.num_cpus


def _encoder_mode(model_dir: Path) -> str | None:
    import yaml

    cfg_file = model_dir / "sqrl_config.yaml"
    if not cfg_file.exists():
        return None
    return ((yaml.safe_load(cfg_file.read_text()) or {}).get("lora") or {}).get("encoder_mode")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


class Compare:
    """Plans the stages the chosen rows need, runs them (``Progress``), and collects the results."""

    def __init__(self, cfg: CompareConfig, out: str | Path, overwrite: bool = False):
        self.cfg, self.out, self.overwrite = cfg, Path(out), overwrite

    # ---- overrides per stage
    def corpus_overrides(self) -> list[str]:
        c = self.cfg.corpus
        return [f"data.synth.root={c.root}", f"data.synth.num={c.num}", f"data.synth.seed={c.seed}"]

    def sft_args(self, stage: str, seed: int) -> tuple[StageConfig, list[str], list[str]]:
        """(settings, overrides before the stage's, overrides after) of an SFT stage of ``seed``."""
        cfg = self.cfg
        before = [*self.corpus_overrides(), *cfg.sft_overrides]
        after = [f"train.seed={seed}"]
        if stage == "warmup":
            before.append(f"model.init={self.seed_dir(seed) / 'calibration'}")
        if stage == "calibration_frozen":
            after.append("lora.encoder_mode=frozen")
        return getattr(cfg, stage), before, after

    def grpo_args(self, stage: str, seed: int) -> tuple[StageConfig, list[str], list[str]]:
        before = [*self.corpus_overrides(), "model.bootstrap=null", *self.cfg.grpo_overrides]
        return getattr(self.cfg, stage), before, [f"train.seed={seed}"]

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    def model_dir(self, row: Row, seed: int | None) -> Path:
        if row.stage is None:
            return self.out / "untrained" / "model"
        return self.seed_dir(seed) / row.stage

    def eval_dir(self, row: Row, seed: int | None) -> Path:
        if row.stage is None:
            return self.out / "untrained" / "eval"
        return self.seed_dir(seed) / "eval" / row.name

    # ---- plan
    def needed_stages(self) -> list[str]:
        rows = [ROW_BY_NAME[r] for r in self.cfg.rows]
        need: set[str] = set()
        for row in rows:
            if row.stage in ("warmup", *GRPO_STAGES):
                need |= {"calibration", "warmup"}
            if row.stage in GRPO_STAGES:
                need.add("merged")
            if row.stage is not None:
                need.add(row.stage)
        order = ["calibration", "calibration_frozen", "warmup", "merged", "grpo_accsem", "grpo_unified", "grpo_llmjudge"]
        return [s for s in order if s in need]

    def plan(self, test_manifest: Path, train_manifest: Path) -> list[Task]:
        from sqrl.pipeline import evaluate_model, merge_stage, run_grpo_config, run_sft_stage

        cfg = self.cfg
        n_clips = _count_lines(train_manifest)
        n_eval = _count_lines(test_manifest)
        n_eval = min(n_eval, cfg.eval.limit) if cfg.eval.limit else n_eval
        rows = [r for r in ROWS if r.name in cfg.rows]
        tasks: list[Task] = []

        def eval_task(row: Row, seed: int | None) -> Task:
            model, target = self.model_dir(row, seed), self.eval_dir(row, seed)
            rubric = self.rubric() if row.stage is None else None

            def run():
                self.metrics[(row.name, seed)] = evaluate_model(model, test_manifest, target, cfg.eval, rubric)[0]

            def done():
                f = target / "metrics.json"
                meta = model / "sqrl_model.json"
                return f.exists() and meta.exists() and f.stat().st_mtime >= meta.stat().st_mtime

            name = f"{'untrained' if seed is None else f'seed{seed}'}/eval/{row.name}"
            return Task(name, "eval", n_eval, run, done)

        if any(r.stage is None for r in rows):
            untrained = ROW_BY_NAME["untrained"]
            tasks.append(Task("untrained/model", "build", 0, self.build_untrained,
                              lambda: _done(self.model_dir(untrained, None))))
            tasks.append(eval_task(untrained, None))
        for seed in cfg.seeds:
            sd = self.seed_dir(seed)
            stages = self.needed_stages()
            grpo = [s for s in stages if s in GRPO_STAGES]
            for stage in stages:
                out = sd / stage
                if stage in SFT_STAGES:
                    settings, before, after = self.sft_args(stage, seed)
                    units = _sft_steps(settings, [*before, *settings.overrides, *after], n_clips)
                    run = (lambda st=stage, s=settings, o=out, b=before, a=after: run_sft_stage(st, s, o, b, a))
                    tasks.append(Task(f"seed{seed}/{stage}", stage, units, run, lambda o=out: _done(o)))
                elif stage == "merged":
                    tasks.append(Task(f"seed{seed}/merged", "merge", 0,
                                      lambda sd=sd: merge_stage(sd / "warmup", sd / "merged"), lambda o=out: _done(o)))
                else:
                    settings, before, after = self.grpo_args(stage, seed)
                    units, cpus = _grpo_plan(settings, [*before, f"model.init={sd / 'merged'}", *settings.overrides,
                                                        *after])

                    def run(st=stage, s=settings, o=out, b=before, a=after, last=stage == grpo[-1], sd=sd, cpus=cpus):
                        # one Ray runtime for the seed's GRPO stages, started only when one has to train
                        try:
                            if not _done(o):
                                self._open_ray(cpus)
                            run_grpo_config(st, s, sd / "merged", o, b, a)
                        except BaseException:
                            self._close_ray()
                            raise
                        if last:
                            self._close_ray()

                    tasks.append(Task(f"seed{seed}/{stage}", stage, units, run, lambda o=out: _done(o)))
            for row in rows:
                if row.stage is not None:
                    tasks.append(eval_task(row, seed))
        return tasks

    def _open_ray(self, num_cpus: int | None) -> None:
        if getattr(self, "_ray", None) is None:
            self._ray = ray_session(num_cpus)
            self._ray.__enter__()

    def _close_ray(self) -> None:
        ray = getattr(self, "_ray", None)
        if ray is not None:
            self._ray = None
            ray.__exit__(None, None, None)

    def rubric(self) -> str | None:
        """The rubric of the calibration config (the untrained model has none of its own)."""
        from sft.config import SFTStageConfig

        settings, before, after = self.sft_args("calibration", self.cfg.seeds[0])
        return load_config(SFTStageConfig, settings.config, [*before, *settings.overrides, *after]).data.rubric

    def build_untrained(self) -> Path:
        """The base model every calibration starts from, as a model directory (the calibration config's tiny
        backbone and its options). A real backbone (``model.path``) is not supported: leave the row out."""
        from grpo.bootstrap import untrained_init
        from sft.config import SFTStageConfig

        settings, before, after = self.sft_args("calibration", self.cfg.seeds[0])
        model_cfg = load_config(SFTStageConfig, settings.config, [*before, *settings.overrides, *after]).model
        target = self.model_dir(ROW_BY_NAME["untrained"], None)
        if model_cfg.path:
            raise ValueError("the untrained row needs a tiny backbone (model.path is set); leave it out of rows")
        return untrained_init(target, model_cfg.backbone, **dict(model_cfg.options or {}))

    # ---- run
    def run(self) -> dict[str, Any]:
        prepare_out(self.out, resume=not self.overwrite, overwrite=self.overwrite)  # continues unless --overwrite
        save_config(self.cfg, self.out / "compare.yaml")
        t0 = time.perf_counter()
        corpus = self.cfg.corpus.folder()
        train_manifest, test_manifest = corpus / "train.jsonl", corpus / "test.jsonl"
        self.metrics: dict[tuple[str, int | None], dict[str, Any]] = {}
        tasks = self.plan(Path(test_manifest), Path(train_manifest))
        try:
            record = Progress(tasks).run_all()
        finally:
            self._close_ray()
        results = self.collect(Path(test_manifest), record)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        (self.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        write_report(self.out, results)
        return results

    def collect(self, manifest: Path, record: Mapping[str, Any]) -> dict[str, Any]:
        from grpo.tracking import read_metrics

        cfg = self.cfg
        rows: dict[str, Any] = {}
        eval_clips = None
        for row in (r for r in ROWS if r.name in cfg.rows):
            seeds: list[int | None] = [None] if row.stage is None else list(cfg.seeds)
            per_seed: dict[str, Any] = {}
            for seed in seeds:
                metrics = dict(self.metrics[(row.name, seed)])
                eval_clips = metrics.get("n", eval_clips)
                model = self.model_dir(row, seed)
                stage_time = _read_json(model / "stage_time.json")
                metrics.update(model=str(model.relative_to(self.out)),
                               eval=str(self.eval_dir(row, seed).relative_to(self.out)),
                               train_seconds=stage_time["seconds"] if stage_time else None)
                per_seed["all" if seed is None else str(seed)] = metrics
            encoder = None
            if row.calibration is not None:
                encoder = _encoder_mode(self.seed_dir(cfg.seeds[0]) / row.calibration)
            logged = None
            if row.stage in GRPO_STAGES:
                logged = {str(s): read_metrics(self.seed_dir(s) / row.stage / "metrics.jsonl") for s in cfg.seeds}
            rows[row.name] = row_entry(row, per_seed, encoder, logged, cfg.reward_window)
        try:
            shown = str(manifest.resolve().relative_to(Path.cwd()))
        except ValueError:
            shown = str(manifest)
        return {"seeds": list(cfg.seeds), "manifest": shown, "eval_clips": eval_clips, "rows": rows,
                "stages": dict(record)}


def run_compare(cfg: CompareConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate every row of ``cfg`` for every seed into ``out``; returns results.json's content.
    ``overwrite``: remove an existing ``out`` first (otherwise its finished stages are reused)."""
    return Compare(cfg, out, overwrite).run()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the paper's comparison: every row (untrained, calibration, frozen encoder, "
                       "SFT reasoning, three GRPO rewards) over several seeds, Tables 1 and 3 with mean ± std")
    add_config_arguments(p, example="configs/tiny/compare.yaml", default=True,
                         overrides_example="seeds=[0] 'rows=[calibration]'",
                         out_help="run folder; a second call reuses its finished stages", overwrite=True)
    p.set_defaults(func=_run)


def _run(args) -> int:
    results = run_compare(load_config(CompareConfig, args.config, args.overrides), args.out, overwrite=args.overwrite)
    return print_finished(table1_lines(results), results["seconds"], args.out)
