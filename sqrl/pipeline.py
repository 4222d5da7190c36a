"""``sqrl pipeline``: the whole method in one command.

synthetic corpus -> calibration (SFT, encoder trained) -> long-form warm-up -> merge -> GRPO -> eval
-> report. Each stage writes its own folder under ``OUT`` and is skipped when that folder is
complete, so an interrupted pipeline picks up where it stopped. Every stage's model is evaluated on
the same held-out clips, so the final table shows what each stage added.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.config import SynthSettings
from sqrl.config import bounded, check_ranges, load_config, save_config
from sqrl.rundir import prepare_out

log = logging.getLogger(__name__)


@dataclass
class StageSettings:
    config: str
    """The stage's own YAML (sft or grpo)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied on top of it."""
    enabled: bool = True


@dataclass
class EvalSettings:
    limit: int | None = bounded(None, ge=1)
    """Evaluate on the first N test clips (None: all)."""
    batch_size: int = bounded(16, ge=1)
    max_new_tokens: int = bounded(200, ge=1)

    def __post_init__(self):
        check_ranges(self)


@dataclass
class PipelineConfig:
    corpus: SynthSettings = field(default_factory=SynthSettings)
    calibration: StageSettings = field(default_factory=lambda: StageSettings("configs/tiny/calibration.yaml"))
    warmup: StageSettings = field(default_factory=lambda: StageSettings("configs/tiny/warmup.yaml"))
    grpo: StageSettings = field(default_factory=lambda: StageSettings("configs/tiny/grpo_accsem_dimwise.yaml"))
    eval: EvalSettings = field(default_factory=EvalSettings)


def _done(path: Path) -> bool:
    return (path / "sqrl_model.json").exists()


def _corpus_overrides(cfg: PipelineConfig, section: str = "data") -> list[str]:
    c = cfg.corpus
    return [f"{section}.synth.root={c.root}", f"{section}.synth.num={c.num}", f"{section}.synth.seed={c.seed}"]


def run_sft_stage(name: str, stage: StageSettings, out: Path, extra: list[str],
                  after: list[str] | None = None) -> Path:
    """Train an SFT stage into ``out`` (skipped when complete; continued from its last checkpoint when
    interrupted). Overrides apply in the order ``extra``, ``stage.overrides``, ``after``."""
    from sft.config import SFTStageConfig
    from sft.train import run_sft

    if _done(out):
        log.info("%s: %s exists, skipping", name, out)
        return out
    cfg = load_config(SFTStageConfig, stage.config, [*extra, *stage.overrides, *(after or [])])
    t0 = time.perf_counter()
    run_sft(cfg, out, resume=out.exists())  # a folder that is not done holds this stage's interrupted run
    _stamp(out, name, time.perf_counter() - t0)
    return out


def merge_stage(adapter: Path, out: Path) -> Path:
    """``sft.merge.merge`` of ``adapter`` into ``out`` (skipped when complete)."""
    from sft.merge import merge

    if _done(out):
        log.info("merge: %s exists, skipping", out)
        return out
    merge(adapter, out)
    return out


def _stamp(out: Path, name: str, seconds: float) -> None:
    (out / "stage_time.json").write_text(json.dumps({"stage": name, "seconds": round(seconds, 1)}))


def run_pipeline(cfg: PipelineConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Run every enabled stage into ``out`` and return the final table (metrics per stage). A second call
    continues: complete stages are skipped, an interrupted one resumes; ``overwrite`` starts over (the old
    ``out`` is removed first, sqrl/rundir.py)."""
    from sft.data import resolve_manifests
    from sft.config import DataConfig

    out = prepare_out(out, resume=not overwrite, overwrite=overwrite)
    save_config(cfg, out / "pipeline.yaml")
    t0 = time.perf_counter()
    _, test_manifest = resolve_manifests(DataConfig(synth=cfg.corpus))
    models: dict[str, Path] = {}
    calib = run_sft_stage("calibration", cfg.calibration, out / "calibration", _corpus_overrides(cfg))
    models["calibration"] = calib
    last = calib
    if cfg.warmup.enabled:
        warm = run_sft_stage("warmup", cfg.warmup, out / "warmup", [*_corpus_overrides(cfg), f"model.init={calib}"])
        models["warmup"] = last = warm
    if cfg.grpo.enabled:
        merged = merge_stage(last, out / "merged")
        models["grpo"] = run_grpo_stage(cfg, merged, out / "grpo")
    table = evaluate_stages(cfg, models, test_manifest, out)
    table["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(table, indent=2))
    write_report(out, table)
    return table


def run_grpo_stage(cfg: PipelineConfig, init: Path, out: Path) -> Path:
    return run_grpo_config("grpo", cfg.grpo, init, out, _corpus_overrides(cfg))


def run_grpo_config(name: str, stage: StageSettings, init: Path, out: Path, extra: list[str],
                    after: list[str] | None = None) -> Path:
    """Train a GRPO stage from the merged model ``init`` into ``out`` (skipped when complete; resumed when
    an earlier run left checkpoints or logged steps). Overrides apply in the order ``extra``,
    ``model.init``, ``stage.overrides``, ``after``."""
    from grpo.config import GRPOConfig
    from grpo.driver import run_grpo

    if _done(out):
        log.info("%s: %s exists, skipping", name, out)
        return out
    grpo_cfg = load_config(GRPOConfig, stage.config,
                           [*extra, f"model.init={init}", *stage.overrides, *(after or [])])
    t0 = time.perf_counter()
    # a folder that is not done holds this stage's interrupted run (the driver refuses a non-empty run
    # directory without resume; with no checkpoint it starts from step 0)
    run_grpo(grpo_cfg, out, resume=out.exists())
    _stamp(out, name, time.perf_counter() - t0)
    return out


def evaluate_model(model: Path | str, manifest: Path | str, target: Path, settings: EvalSettings,
                   rubric: str | None = None) -> tuple[dict[str, Any], bool]:
    """(metrics, reused): ``sqrl eval`` of ``model`` into ``target``, or the metrics already there when
    they are newer than the model (a model retrained since is evaluated again)."""
    from sqrl.evaluate import evaluate
    from sqrl.models import META_FILE

    metrics_file = target / "metrics.json"
    model_meta = Path(model) / META_FILE
    if metrics_file.exists() and (not model_meta.exists()
                                  or metrics_file.stat().st_mtime >= model_meta.stat().st_mtime):
        return json.loads(metrics_file.read_text()), True
    metrics = evaluate(str(model), str(manifest), target, batch_size=settings.batch_size,
                       max_new_tokens=settings.max_new_tokens, limit=settings.limit, rubric=rubric)
    return metrics, False


def evaluate_stages(cfg: PipelineConfig, models: dict[str, Path], manifest: Path, out: Path) -> dict[str, Any]:
    return {"stages": {name: evaluate_model(model, manifest, out / "eval" / name, cfg.eval)[0]
                       for name, model in models.items()}}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def table_lines(table: dict[str, Any]) -> list[str]:
    """The final table: Table 1 style PCC columns, then artifact F1/IoU and ROUGE-L, one row per stage."""
    from sqrl.dimensions import ARTIFACT_KINDS, EVAL_DIMENSIONS

    head = ["stage", *EVAL_DIMENSIONS, "mean", "mean, expected", "parse", *[f"{k} F1" for k in ARTIFACT_KINDS],
            "ROUGE-L"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in table["stages"].items():
        expected = (m.get("expected") or {}).get("pcc", {}).get("mean")
        cells = [name, *[_fmt(m["pcc"].get(d)) for d in EVAL_DIMENSIONS], _fmt(m["pcc"].get("mean")),
                 _fmt(expected), _fmt(m["parse_rate"]), *[_fmt(m["artifacts"].get(k, {}).get("f1")) for k in ARTIFACT_KINDS],
                 _fmt(m["long_form"].get("rouge_l"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(out: Path, table: dict[str, Any]) -> None:
    from sqrl.plots import pcc_bars

    pcc_bars({name: m["pcc"] for name, m in table["stages"].items()}, out / "pcc_by_stage.png")
    lines = ["# sqrl pipeline", "", f"Total time: {table['seconds'] / 60:.1f} min.", "",
             "PCC per dimension on the held-out synthetic test set, per stage (greedy answers' integer scores; "
             "*mean, expected*: the six-dimension mean PCC of the expected scores, sum of k p(k) over the digits "
             "the model wrote, see `sqrl eval`):", "", *table_lines(table), "",
             "![PCC by stage](pcc_by_stage.png)", ""]
    if (out / "grpo" / "plots" / "reward_curve.png").exists():
        lines += ["GRPO reward curve:", "", "![reward curve](grpo/plots/reward_curve.png)", ""]
    lines += [f"Per-stage reports: `{out}/eval/<stage>/report.md`."]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole method: corpus, calibration, warm-up, GRPO, eval, report")
    p.add_argument("--config", default="configs/tiny/pipeline.yaml")
    p.add_argument("--out", required=True, help="run folder; a second call continues the run in it")
    p.add_argument("--overwrite", action="store_true", help="remove an existing run in OUT first and start over")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. grpo.enabled=false")
    p.set_defaults(func=_run)


def _run(args) -> int:
    cfg = load_config(PipelineConfig, args.config, args.overrides)
    table = run_pipeline(cfg, args.out, overwrite=args.overwrite)
    print("\n".join(table_lines(table)))
    print(f"\nfinished in {table['seconds'] / 60:.1f} min; report: {Path(args.out) / 'report.md'}")
    return 0
