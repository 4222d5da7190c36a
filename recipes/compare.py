"""``sqrl compare``: the paper's comparison (Tables 1 and 3) on one corpus, one budget and several seeds.

The rows are data: each is one entry of ``variants`` in the config (``configs/tiny/compare.yaml``; fields in
``recipes.compare_plan.Variant``). The shipped config has the untrained base model; calibration only (encoder
trained); calibration only with the encoder frozen; calibration + SFT reasoning on long-form answers (the
warm-up, "QualiSpeech-FT style"); and GRPO from that warm-up with the unified judge reward (SQ-LLM style), with
accuracy + semantic rewards dimension-wise, and with the LLM judge dimension-wise. Within a seed the rows share
their upstream stages: one calibration, one warm-up and one merged model that the three GRPO variants start
from; the frozen-encoder row is its own calibration. The untrained model does not depend on the seed and is
evaluated once. With ``sft_seed`` set, the SFT stages are trained once (with that seed) under ``shared/`` and
only the GRPO stages are repeated per seed, all starting from that one merged model.

Layout of ``OUT`` (with the shipped variants)::

    compare.yaml                    the resolved config
    untrained/model, untrained/eval
    seed<S>/{calibration,calibration_frozen,warmup,merged,grpo_unified,grpo_accsem,grpo_llmjudge}
    seed<S>/eval/<row>/             sqrl eval output (metrics.json, predictions.jsonl, report.md, plots/)
    shared/<stage>, shared/eval/<row>  under sft_seed: the SFT stages, merges and SFT rows' evals (not seed<S>/)
    results.json, report.md, plots/{pcc_by_row,reward_curves,scatter_best}.png

Planning is ``recipes.compare_plan``, the tables and plots ``recipes.compare_report``, and the stages run on
``recipes.stages``: a complete stage folder is skipped, an interrupted one continues from its checkpoints, an
evaluation newer than its model is reused. So a second call with the same ``OUT`` trains nothing and only
rewrites the results, and an interrupted compare resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from recipes.compare_plan import Plan, Row, Variant, check_variants
from recipes.compare_report import row_entry, table1_lines, write_report
from recipes.pipeline import EvalConfig, print_finished
from recipes.stages import run_steps
from sqrl.config import add_config_arguments, bounded, check_ranges, load_config, save_config
from sqrl.data.config import CorpusConfig
from sqrl.rundir import prepare_out

log = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The one corpus every row trains on (train split) and is evaluated on (test split)."""
    seeds: list[int] = bounded(default_factory=lambda: [0, 1], ge=0)
    """Training seeds (``train.seed`` of every SFT and GRPO stage, of the GRPO stages only under ``sft_seed``); the
    corpus and base model stay fixed."""
    sft_seed: int | None = bounded(None, ge=0)
    """None: every seed trains its whole chain. Set: every SFT stage (and merge) is trained once, with this
    ``train.seed``, under ``shared/``, and only the GRPO stages are repeated per seed, all from that one start."""
    variants: dict[str, Variant] = field(default_factory=dict)
    """The rows, in table order: ``{name: Variant}`` (``recipes.compare_plan``)."""
    rows: list[str] | None = None
    """Rows to train and evaluate (None: every variant; a subset runs only the stages it needs)."""
    sft_overrides: list[str] = field(default_factory=list)
    """Dotted overrides for every SFT stage, before each variant's own (e.g. ``train.max_steps=2``)."""
    grpo_overrides: list[str] = field(default_factory=list)
    """Dotted overrides for every GRPO stage, before each variant's own: the shared GRPO budget."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward_window: int = bounded(5, ge=1)
    """Table 3's training reward: mean over the first and the last N logged steps (at most half of them)."""

    def __post_init__(self):
        check_ranges(self)
        check_variants(self.variants)
        if self.rows is not None:
            unknown = [r for r in self.rows if r not in self.variants]
            if unknown:
                raise ValueError(f"rows: unknown {unknown}; known: {', '.join(self.variants)}")
            if not self.rows:
                raise ValueError("rows must name at least one row")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")


def _encoder_mode(model_dir: Path) -> str | None:
    import yaml

    cfg_file = model_dir / "sqrl_config.yaml"
    if not cfg_file.exists():
        return None
    return ((yaml.safe_load(cfg_file.read_text()) or {}).get("lora") or {}).get("encoder_mode")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


class Compare:
    """Plans the stages the chosen rows need (``Plan``), runs them (``recipes.stages``), collects the results."""

    def __init__(self, cfg: CompareConfig, out: str | Path, overwrite: bool = False):
        self.cfg, self.out, self.overwrite = cfg, Path(out), overwrite
        self.plan = Plan(cfg, self.out)

    def run(self) -> dict[str, Any]:
        prepare_out(self.out, resume=not self.overwrite, overwrite=self.overwrite)  # continues unless --overwrite
        save_config(self.cfg, self.out / "compare.yaml")
        t0 = time.perf_counter()
        corpus = self.cfg.corpus.folder()
        train_manifest, test_manifest = corpus / "train.jsonl", corpus / "test.jsonl"
        record = run_steps(self.plan.steps(test_manifest, train_manifest), tag="compare")
        results = self.collect(test_manifest, record)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        (self.out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        write_report(self.out, results)
        return results

    def collect(self, manifest: Path, record: Mapping[str, Any]) -> dict[str, Any]:
        from grpo.tracking import read_metrics

        cfg, plan = self.cfg, self.plan
        out: dict[str, Any] = {}
        eval_clips = None
        for row in plan.rows():
            per_seed: dict[str, Any] = {}
            for seed in [None] if row.seed_independent else list(cfg.seeds):
                metrics = json.loads((plan.eval_dir(row, seed) / "metrics.json").read_text())
                eval_clips = metrics.get("n", eval_clips)
                model = plan.model_dir(row, seed)
                stage_time = _read_json(model / "stage_time.json")
                metrics.update(model=str(model.relative_to(self.out)),
                               eval=str(plan.eval_dir(row, seed).relative_to(self.out)),
                               train_seconds=stage_time["seconds"] if stage_time else None)
                per_seed["all" if seed is None else str(seed)] = metrics
            encoder = None
            if row.calibration is not None:
                encoder = _encoder_mode(plan.sft_dir(cfg.seeds[0]) / row.calibration)
            logged = None
            if row.stage == "grpo":
                logged = {str(s): read_metrics(plan.seed_dir(s) / row.folder / "metrics.jsonl") for s in cfg.seeds}
            out[row.name] = row_entry(row, per_seed, encoder, logged, cfg.reward_window)
        try:
            shown = str(manifest.resolve().relative_to(Path.cwd()))
        except ValueError:
            shown = str(manifest)
        return {"seeds": list(cfg.seeds), "sft_seed": cfg.sft_seed, "manifest": shown, "eval_clips": eval_clips,
                "rows": out, "stages": dict(record)}


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


__all__ = ["Compare", "CompareConfig", "Row", "Variant", "run_compare"]
