"""``sqrl pipeline``: the whole method in one command.

synthetic corpus -> calibration (SFT, encoder trained) -> long-form warm-up -> merge -> GRPO -> eval
-> report. Each stage writes its own folder under ``OUT`` and is skipped when that folder is
complete (``recipes.stages``: the one runner and its rules for "done" and "fresh"), so an interrupted
pipeline picks up where it stopped. Every stage's model is evaluated on
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

from recipes.stages import (EvalStep, GRPOStep, MergeStep, RewardStep, SFTStep, Step, backbone_scale, corpus_overrides,
                            count_lines, grpo_kind, run_steps, sft_units, stage_seconds)
from sft.config import continuation_problem
from sqrl.config import add_config_arguments, bounded, check_ranges, load_config, save_config
from sqrl.data.config import CorpusConfig
from sqrl.rundir import prepare_out

log = logging.getLogger(__name__)


@dataclass
class StageConfig:
    config: str
    """The stage's own YAML (sft or grpo)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides applied on top of it."""
    enabled: bool = True


@dataclass
class EvalConfig:
    limit: int | None = bounded(None, ge=1)
    """Evaluate on the first N test clips (None: all)."""
    batch_size: int = bounded(16, ge=1)
    max_new_tokens: int = bounded(200, ge=1)
    grpo_reward: bool | None = None
    """Score the GRPO stage's own rewards on the greedy answers of its start model and of the GRPO model to the
    same held-out clips, paired by clip (the report's "GRPO's own rewards on the greedy answers"). None: when its
    rewards are accuracy and semantic only (seconds), not for others (a CPU judge takes seconds an answer)."""
    sampled_reward: bool = False
    """Also score them on answers sampled as GRPO's rollouts sample (its ``rollout.temperature``, seed 0): what
    GRPO maximises. Two more evaluations of the held-out clips (``eval/<start>_sampled``, ``eval/grpo_sampled``;
    13-15 min each for 300 clips of the small model on 2 cores, past ``make small``'s 2 hours, so its config
    leaves it off) and ``reward/grpo_sampled``; needs the greedy scoring on (``grpo_reward``)."""

    def __post_init__(self):
        check_ranges(self)


@dataclass
class PipelineConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    calibration: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/calibration.yaml"))
    warmup: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/warmup.yaml"))
    grpo: StageConfig = field(default_factory=lambda: StageConfig("configs/tiny/grpo_accsem_dimwise.yaml"))
    eval: EvalConfig = field(default_factory=EvalConfig)
    isolate: bool = False
    """Run every stage but GRPO in a fresh process of its own (~10 s more a stage): on the small backbone the
    stages after the calibration ran 30-50% slower in its process (recipes/stages.py, ``run_isolated``)."""


def stage_steps(cfg: PipelineConfig, out: Path, test_manifest: Path) -> tuple[list[Step], dict[str, Path]]:
    """The pipeline's steps in order, and the model folder of each evaluated stage. Each step carries its size
    (optimizer steps, GRPO steps, clips) so that the progress line's estimate of what is left scales with it."""
    corpus = corpus_overrides(cfg.corpus)
    n_clips = count_lines(test_manifest.parent / "train.jsonl")
    n_eval = count_lines(test_manifest)
    n_eval = min(n_eval, cfg.eval.limit) if cfg.eval.limit else n_eval
    calib = out / "calibration"
    overrides = [*corpus, *cfg.calibration.overrides]
    steps: list[Step] = [SFTStep("calibration", calib, kind="calibration", config=cfg.calibration.config,
                                 overrides=overrides, units=sft_units(cfg.calibration.config, overrides, n_clips))]
    models = {"calibration": calib}
    last = calib
    if cfg.warmup.enabled:
        last = models["warmup"] = out / "warmup"
        overrides = [*corpus, f"model.init={calib}", *cfg.warmup.overrides]
        steps.append(SFTStep("warmup", last, kind="sft_reasoning", config=cfg.warmup.config, overrides=overrides,
                             units=sft_units(cfg.warmup.config, overrides, n_clips)))
        # refused now, not after the calibration's hour (sft.train.continue_encoder refuses it there too)
        modes = [steps[i].load().lora.encoder_mode for i in (0, 1)]
        if problem := continuation_problem(*modes):
            raise ValueError(f"warmup: {problem}")
    if cfg.grpo.enabled:
        merged = out / "merged"
        steps.append(MergeStep("merge", merged, kind="merge", adapter=last))
        models["grpo"] = out / "grpo"
        grpo = GRPOStep("grpo", models["grpo"], kind="grpo", config=cfg.grpo.config,
                        overrides=[*corpus, f"model.init={merged}", *cfg.grpo.overrides])
        grpo_cfg = grpo.load()
        grpo.kind, grpo.units = grpo_kind(grpo_cfg), grpo_cfg.train.steps
        steps.append(grpo)
    e = cfg.eval
    steps += [EvalStep(f"eval/{name}", out / "eval" / name, units=n_eval, model=model, manifest=test_manifest,
                       limit=e.limit, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens)
              for name, model in models.items()]
    if cfg.grpo.enabled and (e.grpo_reward if e.grpo_reward is not None else
                             grpo.kind == "grpo_accsem" and not grpo_cfg.rewards.pass_audio):
        start = last.name  # the model the merge merged, GRPO's start: "warmup" or "calibration"
        reward = RewardStep("reward/grpo", out / "eval" / "grpo_reward", units=n_eval,
                            kind="reward" if grpo.kind == "grpo_accsem" else "reward_judge",
                            config=grpo.config, overrides=grpo.overrides, manifest=test_manifest,
                            evals=[(f"start ({start})", out / "eval" / start), ("grpo", out / "eval" / "grpo")])
        reward.rewards()  # refused now (rewards that read the audio), not after the GRPO stage
        steps.append(reward)
        if e.sampled_reward:
            temperature = grpo_cfg.rollout.temperature
            sampled = {f"{start}_sampled": last, "grpo_sampled": models["grpo"]}
            steps += [EvalStep(f"eval/{name}", out / "eval" / name, units=n_eval, model=model, manifest=test_manifest,
                               limit=e.limit, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens,
                               temperature=temperature, seed=0)
                      for name, model in sampled.items()]
            steps.append(RewardStep("reward/grpo_sampled", out / "eval" / "grpo_reward_sampled", units=n_eval,
                                    kind=reward.kind, config=grpo.config, overrides=grpo.overrides,
                                    manifest=test_manifest, evals=[(f"start ({start})", out / "eval" / f"{start}_sampled"),
                                                                   ("grpo", out / "eval" / "grpo_sampled")]))
    elif e.sampled_reward:
        raise ValueError("eval.sampled_reward scores the GRPO rewards on sampled answers: it needs a GRPO stage "
                         "whose rewards are scored on held-out answers (eval.grpo_reward)")
    from sft.config import SFTStageConfig

    scale = backbone_scale(load_config(SFTStageConfig, cfg.calibration.config, overrides=[]).model.backbone)
    for step in steps:
        step.scale = scale
    return steps, models


def run_pipeline(cfg: PipelineConfig, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Run every enabled stage into ``out`` and return the final table (metrics per stage). A second call
    continues: complete stages are skipped, an interrupted one resumes; ``overwrite`` starts over (the old
    ``out`` is removed first, sqrl/rundir.py)."""
    out = prepare_out(out, resume=not overwrite, overwrite=overwrite)
    save_config(cfg, out / "pipeline.yaml")
    t0 = time.perf_counter()
    steps, models = stage_steps(cfg, out, cfg.corpus.folder() / "test.jsonl")
    run_steps(steps, tag="pipeline", isolate=cfg.isolate)
    table = results_table(steps)
    table["seconds"] = round(time.perf_counter() - t0, 1)
    table["stage_seconds"] = stage_seconds(steps)
    (out / "results.json").write_text(json.dumps(table, indent=2))
    write_report(out, table)
    return table


def results_table(steps: list[Step]) -> dict[str, Any]:
    """``results.json``'s metrics: each stage's greedy evaluation under ``stages`` (the sampled ones only feed
    the reward steps), and the GRPO rewards on held-out answers, greedy and sampled, where scored."""
    table: dict[str, Any] = {"stages": {s.name.split("/", 1)[1]: s.metrics() for s in steps
                                        if isinstance(s, EvalStep) and s.temperature is None}}
    for step in steps:
        if isinstance(step, RewardStep) and step.done():
            key = "grpo_heldout_reward_sampled" if step.name.endswith("_sampled") else "grpo_heldout_reward"
            table[key] = step.result()
    return table


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


def time_lines(table: dict[str, Any]) -> list[str]:
    """The report's time: the stages' own times (whichever call ran each) and their sum, then this call's."""
    stages = table.get("stage_seconds") or {}
    known = {k: v for k, v in stages.items() if v is not None}
    this_call = f"this call: {table['seconds'] / 60:.1f} min"
    if not known:
        return [f"Total time: {table['seconds'] / 60:.1f} min."]
    missing = [k for k, v in stages.items() if v is None]
    lines = [f"Total time: {sum(known.values()) / 60:.1f} min over the stages ({this_call}"
             + (f"; no time recorded for {', '.join(missing)}" if missing else "") + ").", "",
             "| stage | minutes |", "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in known.items()]
    return lines


def reward_lines(result: dict[str, Any] | None, sampled: dict[str, Any] | None = None) -> list[str]:
    """The GRPO stage's own rewards on held-out clips, start model against GRPO model (``RewardStep``): on the
    greedy answers, and on sampled ones where the pipeline scored those too (``eval.sampled_reward``)."""
    from grpo.agreement import source_table

    lines = []
    if result:
        lines += [f"GRPO's own rewards on the greedy answers to the same {result['clips']} held-out clips, its start "
                  "model against the GRPO model, paired by clip (the training reward curve moves with the few clips "
                  "of each step; this does not; greedy answers, what a user gets):", "",
                  source_table(result["by_model"]), ""]
    if sampled:
        lines += [f"The same on one answer per clip sampled as GRPO's rollouts sample ({sampled['clips']} clips): "
                  "the reward GRPO maximises, over its own samples:", "", source_table(sampled["by_model"]), ""]
    return lines


def write_report(out: Path, table: dict[str, Any]) -> None:
    from sqrl.plots import pcc_bars

    pcc_bars({name: m["pcc"] for name, m in table["stages"].items()}, out / "pcc_by_stage.png")
    lines = ["# sqrl pipeline", "", *time_lines(table), "",
             "PCC per dimension on the held-out synthetic test set, per stage (greedy answers' integer scores; "
             "*mean, expected*: the six-dimension mean PCC of the expected scores, sum of k p(k) over the digits "
             "the model wrote, see `sqrl eval`):", "", *table_lines(table), "",
             "![PCC by stage](pcc_by_stage.png)", ""]
    if (out / "grpo" / "plots" / "reward_curve.png").exists():
        lines += ["GRPO reward curve:", "", "![reward curve](grpo/plots/reward_curve.png)", ""]
    lines += reward_lines(table.get("grpo_heldout_reward"), table.get("grpo_heldout_reward_sampled"))
    lines += [f"Per-stage reports: `{out}/eval/<stage>/report.md`."]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="the whole method: corpus, calibration, warm-up, GRPO, eval, report")
    add_config_arguments(p, example="configs/tiny/pipeline.yaml", default=True, overrides_example="grpo.enabled=false",
                         out_help="run folder; a second call continues the run in it", overwrite=True)
    p.set_defaults(func=_run)


def print_finished(lines: list[str], seconds: float, out: str | Path) -> int:
    """What a recipe command prints at the end: its table, the time taken, where the report is."""
    print("\n".join(lines))
    print(f"\nfinished in {seconds / 60:.1f} min; report: {Path(out) / 'report.md'}")
    return 0


def _run(args) -> int:
    table = run_pipeline(load_config(PipelineConfig, args.config, args.overrides), args.out, overwrite=args.overwrite)
    return print_finished(table_lines(table), table["seconds"], args.out)
