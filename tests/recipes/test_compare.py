"""``sqrl compare``: the spread over seeds on hand-worked numbers, the tables and plots from synthetic results,
and the whole command end to end on a minuscule budget (two seeds), including its resume."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from recipes.compare import CompareConfig, run_compare
from recipes.compare_plan import Plan, Variant, make_row
from recipes.compare_plan import rows as plan_rows
from recipes.compare_report import (best_row, other_metrics_lines, reward_curve, row_entry, spread, step_time_lines,
                                    table1_lines, table3_lines, write_report)
from sqrl.config import load_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "tiny" / "compare.yaml"
ROW_BY_NAME = {r.name: r for r in plan_rows(load_config(CompareConfig, SHIPPED).variants)}
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ aggregation
def test_spread_is_mean_sample_std_min_max_over_the_defined_values():
    s = spread([0.2, 0.4, 0.9])
    # mean 0.5; deviations -0.3, -0.1, 0.4 -> squares 0.09 + 0.01 + 0.16 = 0.26; / (3 - 1) -> sqrt(0.13)
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(math.sqrt(0.13))
    assert (s["min"], s["max"], s["n"], s["undefined"]) == (0.2, 0.9, 3, 0)
    # an undefined PCC (constant prediction) is left out and counted
    s = spread([0.2, None, 0.4])
    assert s["mean"] == pytest.approx(0.3) and s["std"] == pytest.approx(math.sqrt(0.02))
    assert (s["n"], s["undefined"]) == (2, 1)
    assert spread([0.7]) == {"mean": 0.7, "std": None, "min": 0.7, "max": 0.7, "n": 1, "undefined": 0}
    assert spread([None, None]) == {"mean": None, "std": None, "min": None, "max": None, "n": 0, "undefined": 2}


def _metrics(pcc_noise, pcc_mean, f1, rouge, parse=1.0):
    return {"pcc": {"noise": pcc_noise, "overall": 0.5, "mean": pcc_mean}, "srcc": {"mean": pcc_mean},
            "mae": {"noise": 1.0, "mean": 1.0}, "parse_rate": parse, "n": 3, "prompting": "long_form",
            "artifacts": {"noise": {"f1": f1, "iou": None, "similarity": 0.8}}, "long_form": {"rouge_l": rouge},
            "expected": {"pcc": {"mean": pcc_mean + 0.1}}}


def test_a_row_summarises_every_metric_over_seeds_and_its_reward_curve():
    per_seed = {"0": _metrics(0.2, 0.30, 0.5, 0.10), "1": _metrics(None, 0.50, 0.7, 0.30, parse=0.5)}
    logged = {"0": [{"step": s, "rewards/total/mean": r, "rewards/accuracy/mean": r / 2} for s, r in zip((1, 2, 3, 4), (1, 2, 3, 4))],
              "1": [{"step": s, "rewards/total/mean": r, "rewards/accuracy/mean": r / 2} for s, r in zip((1, 2, 3, 4), (3, 4, 5, 8))]}
    entry = row_entry(ROW_BY_NAME["grpo_accsem"], per_seed, "trainable", logged, window=5)
    s = entry["summary"]
    assert s["pcc"]["mean"]["mean"] == pytest.approx(0.4) and s["pcc"]["mean"]["std"] == pytest.approx(math.sqrt(0.02))
    assert s["pcc"]["noise"]["mean"] == pytest.approx(0.2) and s["pcc"]["noise"]["undefined"] == 1
    assert s["parse_rate"]["min"] == 0.5 and s["parse_rate"]["max"] == 1.0
    assert s["artifacts"]["noise"]["f1"]["mean"] == pytest.approx(0.6)
    assert s["artifacts"]["noise"]["iou"]["n"] == 0  # never defined: no mean
    assert s["long_form"]["rouge_l"]["mean"] == pytest.approx(0.2)
    assert s["expected"]["pcc"]["mean"]["mean"] == pytest.approx(0.5)  # 0.40 and 0.60: Table 1's "Avg., expected"
    assert "| **0.40 ± 0.14** | 0.50 ± 0.14 |" in table1_lines({"rows": {"grpo_accsem": entry}})[2]
    assert "prompting" not in s and "n" not in s
    rc = entry["reward_curve"]
    assert rc["steps"] == [1, 2, 3, 4] and rc["window"] == 2  # at most half the steps
    total = rc["curves"]["rewards/total/mean"]
    assert total["mean"] == [2.0, 3.0, 4.0, 6.0] and total["min"] == [1, 2, 3, 4] and total["max"] == [3, 4, 5, 8]
    assert total["std"][3] == pytest.approx(math.sqrt(8))  # (4 - 6)^2 + (8 - 6)^2 = 8, / (2 - 1)
    # first two steps: 1.5 and 3.5; last two: 3.5 and 6.5; change: 2 and 3
    assert (rc["first"]["mean"], rc["first"]["std"]) == (pytest.approx(2.5), pytest.approx(math.sqrt(2)))
    assert (rc["last"]["mean"], rc["last"]["std"]) == (pytest.approx(5.0), pytest.approx(math.sqrt(4.5)))
    assert (rc["change"]["mean"], rc["change"]["std"]) == (pytest.approx(2.5), pytest.approx(math.sqrt(0.5)))
    assert rc["curves"]["rewards/accuracy/mean"]["mean"][0] == pytest.approx(1.0)


def test_a_grpo_row_splits_its_step_time_into_phases_per_seed_then_over_seeds():
    def step(total, generate, score, update, sync):
        return {"step": 1, "rewards/total/mean": 0.0, "time/step": total, "time/generate": generate,
                "time/score": score, "time/update": update, "time/sync": sync}

    # seed 0: steps of 10 s and 20 s (score 8 and 16); seed 1: one step of 30 s (score 27), one without timings
    logged = {"0": [step(10, 1, 8, 0.9, 0.1), step(20, 3, 16, 0.9, 0.1)],
              "1": [step(30, 2, 27, 0.5, 0.5), {"step": 2, "rewards/total/mean": 0.0}]}
    t = row_entry(ROW_BY_NAME["grpo_llmjudge"], {"0": _metrics(0.2, 0.3, 0.5, 0.1)}, "trainable", logged)["step_time"]
    assert t["step"]["mean"] == pytest.approx(22.5) and t["step"]["std"] == pytest.approx(math.sqrt(112.5))  # 15, 30
    assert t["score"]["mean"] == pytest.approx(19.5) and t["score"]["std"] == pytest.approx(15 / math.sqrt(2)) and t["generate"]["mean"] == pytest.approx(2.0)
    assert t["update"]["min"] == pytest.approx(0.5) and t["sync"]["max"] == pytest.approx(0.5)
    assert (t["steps"]["min"], t["steps"]["max"]) == (1.0, 2.0)  # the step without timings is not averaged
    line = step_time_lines({"rows": {"grpo_llmjudge": {"label": "judge", "step_time": t}, "calibration": {"label": "sft"}}})
    assert line[2:] == ["| judge | 22.5 ± 10.6 | 2.0 ± 0.0 | 19.5 ± 10.6 | 0.7 ± 0.3 | 0.3 ± 0.3 |"]


def test_reward_curve_aligns_steps_and_leaves_gaps_for_missing_ones():
    rc = reward_curve({"0": [{"step": 1, "rewards/total/mean": 1.0}, {"step": 2, "rewards/total/mean": 3.0}],
                       "1": [{"step": 1, "rewards/total/mean": 2.0}]}, window=1)
    total = rc["curves"]["rewards/total/mean"]
    assert total["per_seed"]["1"] == [2.0, None]
    assert total["mean"] == [1.5, 3.0] and total["std"][1] is None
    assert rc["last"]["n"] == 1 and rc["last"]["undefined"] == 1


# ------------------------------------------------------------------------------------ report
def _synthetic_results(tmp_path: Path, sft_seed: int | None = None, calibration=(0.4, 0.6)) -> dict:
    """Three rows as `sqrl compare` writes them, with a predictions file for the scatter plot. With
    ``sft_seed`` the calibration row is shared: one evaluation (``all``) with the first value of ``calibration``."""
    from sqrl.dimensions import DIMENSIONS

    refs = [{"id": f"c{i}", "audio": f"c{i}.wav", "scores": {d: 1 + (i + j) % 5 for j, d in enumerate(DIMENSIONS)},
             "artifacts": [], "description": "clean"} for i in range(5)]
    preds = [{"scores": dict(r["scores"]), "artifacts": [], "description": "clean"} for r in refs]
    preds[0] = None
    rows, variants = {}, load_config(CompareConfig, SHIPPED).variants
    for name, pcc in (("untrained", None), ("calibration", calibration), ("grpo_accsem", (0.5, 0.7))):
        row = make_row(variants, name, sft_seed)
        seeds = ["all"] if row.seed_independent else ["0", "1"]
        per_seed = {}
        for i, seed in enumerate(seeds):
            ev = tmp_path / f"seed{seed}" / "eval" / name
            ev.mkdir(parents=True)
            (ev / "predictions.jsonl").write_text("".join(
                json.dumps({"id": r["id"], "text": "", "parsed": p, "reference": r}) + "\n" for p, r in zip(preds, refs)))
            value = 0.0 if pcc is None else pcc[i]
            per_seed[seed] = {**_metrics(value, value, 0.5 + i / 10, 0.2), "eval": str(ev.relative_to(tmp_path))}
        logged = None
        if name.startswith("grpo"):
            logged = {s: [{"step": k, "rewards/total/mean": k + i} for k in (1, 2, 3)] for i, s in enumerate(seeds)}
        rows[name] = row_entry(row, per_seed, None if pcc is None else "trainable", logged, window=1)
    return {"seeds": [0, 1], "sft_seed": sft_seed, "manifest": "test.jsonl", "eval_clips": 5, "rows": rows,
            "stages": {}, "seconds": 60.0}


def test_the_report_has_both_tables_with_mean_and_std_and_the_three_plots(tmp_path):
    results = _synthetic_results(tmp_path)
    assert best_row(results) == ("grpo_accsem", "1")
    t1 = table1_lines(results)
    assert t1[0].startswith("| Row | Learned Enc. | Calibration | Nat. | Noise |") and len(t1) == 2 + 3
    # noise PCC 0.5 and 0.7 over two seeds: 0.60 ± 0.14 (sample std 0.1414)
    assert "| GRPO Acc.+Sem. dim.-wise | ✓ | ✓ | n/a | 0.60 ± 0.14 |" in t1[4]
    assert t1[2].startswith("| untrained base model | — | x | n/a | 0.00 |")  # one model: no ± part
    t3 = table3_lines(results)
    assert "Noise F1" in t3[0] and "Long-form ROUGE-L" in t3[0]
    assert "| 0.55 ± 0.07 | 0.80 ± 0.00 | n/a |" in t3[3]
    report = write_report(tmp_path, results).read_text()
    assert "## Table 1" in report and "## Table 3" in report and "## GRPO training rewards" in report
    # reward of seed 0: 1, 2, 3; seed 1: 2, 3, 4 -> first 1.5 ± 0.71, last 3.5 ± 0.71, change 2.00 ± 0.00
    assert "| GRPO Acc.+Sem. dim.-wise | total | 3 | 1.50 ± 0.71 | 3.50 ± 0.71 | 2.00 ± 0.00 |" in report
    for name in ("pcc_by_row", "reward_curves", "scatter_best"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and f"plots/{name}.png" in report


def test_config_checks_rows_and_seeds_and_plans_only_the_needed_stages(tmp_path):
    def shipped(*overrides: str) -> CompareConfig:
        return load_config(CompareConfig, SHIPPED, list(overrides))

    with pytest.raises(ValueError, match="unknown"):
        shipped("rows=[calibration, sq_llm]")
    with pytest.raises(ValueError, match="distinct"):
        shipped("seeds=[0, 0]")
    cfg = shipped()
    assert cfg.rows is None and list(cfg.variants) == list(ROW_BY_NAME) and cfg.seeds == [0, 1]
    assert Plan(shipped("rows=[grpo_llmjudge]"), tmp_path).needed_stages() == [
        "calibration", "warmup", "merged", "grpo_llmjudge"]
    assert Plan(shipped("rows=[calibration_frozen, untrained]"), tmp_path).needed_stages() == ["calibration_frozen"]
    # the frozen row's own override comes after the shared ones, so it freezes the encoder whatever they say;
    # the seed comes last
    plan = Plan(shipped("sft_overrides=[lora.encoder_mode=lora]"), tmp_path)
    assert plan.sft_overrides("calibration_frozen", 3)[-3:] == [
        "lora.encoder_mode=lora", "lora.encoder_mode=frozen", "train.seed=3"]
    assert plan.sft_config("calibration_frozen", 3).lora.encoder_mode == "frozen"
    assert f"model.init={tmp_path / 'seed3' / 'calibration'}" in plan.sft_overrides("sft_reasoning", 3)
    assert f"model.init={tmp_path / 'seed3' / 'merged'}" in plan.grpo_overrides("grpo_unified", 3)
    # what each row says about itself comes from its chain of starts
    assert (ROW_BY_NAME["grpo_accsem"].calibration, ROW_BY_NAME["grpo_accsem"].reasoning) == ("calibration", "grpo")
    assert ROW_BY_NAME["sft_reasoning"].reasoning == "sft" and not ROW_BY_NAME["untrained"].calibrated


def test_a_new_row_is_one_yaml_entry_and_trains_only_what_it_adds(tmp_path):
    """A GRPO row starting from the frozen-encoder calibration: its own merge and GRPO stage, nothing else new."""
    extra = ("variants.grpo_frozen={label: GRPO from the frozen encoder, stage: grpo, "
             "config: configs/tiny/grpo_accsem_dimwise.yaml, start: calibration_frozen, overrides: [train.steps=3]}")
    cfg = load_config(CompareConfig, SHIPPED, [extra, "rows=[grpo_accsem, grpo_frozen]"])
    plan = Plan(cfg, tmp_path)
    assert plan.needed_stages() == ["calibration", "warmup", "merged", "grpo_accsem", "calibration_frozen",
                                    "calibration_frozen_merged", "grpo_frozen"]
    row = plan_rows(cfg.variants, cfg.rows)[1]
    assert (row.label, row.calibration, row.reasoning) == ("GRPO from the frozen encoder", "calibration_frozen", "grpo")
    assert plan.grpo_overrides("grpo_frozen", 0)[-3:] == [
        f"model.init={tmp_path / 'seed0' / 'calibration_frozen_merged'}", "train.steps=3", "train.seed=0"]


@pytest.mark.parametrize("bad, match", [
    ({"g": {"stage": "grpo", "config": "x.yaml"}}, "needs start"),
    ({"g": {"stage": "grpo", "config": "x.yaml", "start": "nope"}}, "unknown variant"),
    ({"a": {"config": "x.yaml", "start": "b"}, "b": {"config": "x.yaml", "start": "a"}}, "loops"),
    ({"g": {"stage": "grpo", "config": "x.yaml", "start": "calibration"},
      "h": {"stage": "grpo", "config": "x.yaml", "start": "g"}}, "not an SFT variant"),
    ({"u": {"stage": "pretrain", "config": "x.yaml"}}, "stage must be"),
])
def test_variants_that_cannot_be_planned_are_config_errors(bad, match):
    variants = {"calibration": {"stage": "sft", "config": "configs/tiny/calibration.yaml"}, **bad}
    with pytest.raises(ValueError, match=match):
        load_config(CompareConfig, None, [f"variants={variants}"])


def test_a_config_without_variants_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        CompareConfig()
    assert Variant(config="c.yaml").stage == "sft"


# ------------------------------------------------------------------------------------ sft_seed
def _manifests(tmp_path: Path) -> tuple[Path, Path]:
    """A test manifest of 5 lines and a train manifest of 12: what the plan counts for its time estimates."""
    test, train = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    test.write_text("{}\n" * 5)
    train.write_text("{}\n" * 12)
    return test, train


def _override(step, key: str) -> str | None:
    """The last value ``step`` gives ``key`` (the one that wins)."""
    values = [o.split("=", 1)[1] for o in step.overrides if o.split("=", 1)[0] == key]
    return values[-1] if values else None


def test_sft_seed_trains_every_sft_stage_once_and_repeats_only_grpo_per_seed(tmp_path):
    from recipes.stages import GRPOStep, MergeStep, SFTStep

    test, train = _manifests(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(CompareConfig, SHIPPED, ["sft_seed=7", "seeds=[0, 3]"])
    plan = Plan(cfg, out)
    steps = plan.steps(test, train)
    by_name = {s.name: s for s in steps}
    assert len(by_name) == len(steps)  # every step has its own name (results.json's stages)
    grpo = ["grpo_unified", "grpo_accsem", "grpo_llmjudge"]
    assert [s.name for s in steps] == [
        "untrained/model", "untrained/eval/untrained",
        "shared/calibration", "shared/calibration_frozen", "shared/warmup", "shared/merged",
        "shared/eval/calibration", "shared/eval/calibration_frozen", "shared/eval/sft_reasoning",
        *[f"seed0/{g}" for g in grpo], *[f"seed0/eval/{g}" for g in grpo],
        *[f"seed3/{g}" for g in grpo], *[f"seed3/eval/{g}" for g in grpo]]
    assert all(s.out == out / s.name for s in steps if not s.name.startswith("untrained"))
    # the SFT stages: train.seed=sft_seed (last, whatever the shared overrides say), chained inside shared/
    sft = [s for s in steps if isinstance(s, SFTStep)]
    assert [s.name for s in sft] == ["shared/calibration", "shared/calibration_frozen", "shared/warmup"]
    assert all(s.overrides[-1] == "train.seed=7" for s in sft)
    assert _override(by_name["shared/warmup"], "model.init") == str(out / "shared" / "calibration")
    assert _override(by_name["shared/calibration_frozen"], "lora.encoder_mode") == "frozen"
    assert plan.sft_config("calibration_frozen", 0).train.seed == 7  # the seed argument no longer matters
    merge = by_name["shared/merged"]
    assert isinstance(merge, MergeStep) and merge.adapter == out / "shared" / "warmup"
    # every seed's GRPO rows start from the one shared merged model, with their own train.seed
    for seed in (0, 3):
        for g in grpo:
            step = by_name[f"seed{seed}/{g}"]
            assert isinstance(step, GRPOStep)
            assert _override(step, "model.init") == str(out / "shared" / "merged")
            assert _override(step, "train.seed") == str(seed)
            assert step.load().train.seed == seed
    # the SFT rows' evals read the shared models, the GRPO rows' evals their seed's model
    assert by_name["shared/eval/sft_reasoning"].model == out / "shared" / "warmup"
    assert by_name["seed3/eval/grpo_accsem"].model == out / "seed3" / "grpo_accsem"


def test_without_sft_seed_every_seed_trains_its_whole_chain(tmp_path):
    test, train = _manifests(tmp_path)
    out = tmp_path / "out"
    steps = Plan(load_config(CompareConfig, SHIPPED, ["rows=[calibration, grpo_accsem]"]), out).steps(test, train)
    assert [s.name for s in steps] == [
        f"seed{s}/{x}" for s in (0, 1) for x in ("calibration", "warmup", "merged", "grpo_accsem",
                                                 "eval/calibration", "eval/grpo_accsem")]
    by_name = {s.name: s for s in steps}
    assert _override(by_name["seed1/calibration"], "train.seed") == "1"
    assert _override(by_name["seed1/grpo_accsem"], "model.init") == str(out / "seed1" / "merged")


def test_sft_seed_makes_the_sft_rows_seed_independent_and_plans_a_subset(tmp_path):
    extra = ("variants.grpo_frozen={label: GRPO from the frozen encoder, stage: grpo, "
             "config: configs/tiny/grpo_accsem_dimwise.yaml, start: calibration_frozen}")
    cfg = load_config(CompareConfig, SHIPPED, [extra, "sft_seed=0", "rows=[calibration, grpo_frozen]"])
    plan = Plan(cfg, tmp_path)
    calibration, grpo_frozen = plan.rows()
    assert calibration.shared and calibration.seed_independent
    assert not grpo_frozen.shared and not grpo_frozen.seed_independent
    assert plan.model_dir(calibration, 0) == plan.model_dir(calibration, 1) == tmp_path / "shared" / "calibration"
    assert plan.eval_dir(calibration, 5) == tmp_path / "shared" / "eval" / "calibration"
    assert plan.model_dir(grpo_frozen, 1) == tmp_path / "seed1" / "grpo_frozen"
    # a GRPO row from the frozen-encoder calibration: that calibration and its merge are shared too
    test, train = _manifests(tmp_path)
    names = [s.name for s in plan.steps(test, train)]
    assert names == ["shared/calibration", "shared/calibration_frozen", "shared/calibration_frozen_merged",
                     "shared/eval/calibration", "seed0/grpo_frozen", "seed0/eval/grpo_frozen",
                     "seed1/grpo_frozen", "seed1/eval/grpo_frozen"]
    assert f"model.init={tmp_path / 'shared' / 'calibration_frozen_merged'}" in plan.grpo_overrides("grpo_frozen", 1)
    # the untrained row stays what it was: seed-independent, not a shared SFT row
    untrained = make_row(cfg.variants, "untrained", sft_seed=0)
    assert untrained.seed_independent and not untrained.shared
    with pytest.raises(ValueError, match="sft_seed"):
        load_config(CompareConfig, SHIPPED, ["sft_seed=-1"])


def test_the_report_gives_shared_sft_rows_one_value_and_grpo_rows_the_spread_over_seeds(tmp_path):
    """With sft_seed the SFT row has one evaluation (key ``all``): its value, no std; the GRPO row's mean and
    std are over its seeds."""
    results = _synthetic_results(tmp_path, sft_seed=7)
    calibration, grpo = results["rows"]["calibration"], results["rows"]["grpo_accsem"]
    assert list(calibration["per_seed"]) == ["all"] and calibration["seed_independent"]
    noise = calibration["summary"]["pcc"]["noise"]
    assert (noise["mean"], noise["std"], noise["n"]) == (pytest.approx(0.4), None, 1)
    noise = grpo["summary"]["pcc"]["noise"]
    assert (noise["mean"], noise["std"], noise["n"]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)), 2)
    t1 = table1_lines(results)
    # noise 0.4, overall 0.5, mean 0.4, expected 0.5, parse rate 1: single values, no ± part
    assert t1[3] == "| calibration only | ✓ | ✓ | n/a | 0.40 | n/a | n/a | n/a | 0.50 | **0.40** | 0.50 | 1.00 |"
    assert "| 0.60 ± 0.14 |" in t1[4]
    assert "| calibration only | 0.40 | 1.00 | 3 | one model (shared, train.seed=7) |" in other_metrics_lines(results)
    report = write_report(tmp_path, results).read_text()
    assert "**Shared SFT rows** (`sft_seed: 7`): calibration only were trained once, with train.seed=7" in report
    assert "`shared/eval/<row>/report.md`" in report
    # without sft_seed the same row is per seed and the report says nothing of shared rows
    plain = _synthetic_results(tmp_path / "plain")
    assert plain["rows"]["calibration"]["summary"]["pcc"]["noise"]["std"] == pytest.approx(math.sqrt(0.02))
    assert "Shared SFT rows" not in write_report(tmp_path / "plain", plain).read_text()


def test_a_shared_sft_row_can_be_the_best_row_with_its_only_model(tmp_path):
    results = _synthetic_results(tmp_path, sft_seed=7, calibration=(0.9,))
    assert best_row(results) == ("calibration", "all")
    report = write_report(tmp_path, results).read_text()
    assert "**calibration only** (its only model)" in report
    assert (tmp_path / "plots" / "scatter_best.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A private tiny-model cache and a 34-clip synthetic corpus (29 train, 5 test clips)."""
    cache = tmp_path_factory.mktemp("compare_cache")
    old = os.environ.get("SQRL_CACHE")
    os.environ["SQRL_CACHE"] = str(cache)
    root = tmp_path_factory.mktemp("compare_synth")
    from sqrl.data.synth import ensure_corpus

    ensure_corpus(root, 34, 0)
    yield root
    if old is None:
        os.environ.pop("SQRL_CACHE", None)
    else:
        os.environ["SQRL_CACHE"] = old


def _tiny(root: Path, rows: list[str], *extra: str) -> CompareConfig:
    return load_config(CompareConfig, SHIPPED, [
        f"corpus.root={root}", "corpus.num=34", f"rows=[{','.join(rows)}]", "seeds=[0, 1]",
        'sft_overrides=["model.options={window_s: 5}", lora.rank=8, train.max_steps=2, train.batch_size=2, '
        "data.limit=4, train.save_steps=1000, train.logging_steps=1]",
        "grpo_overrides=[train.steps=2, train.batch_size=1, rollout.group_size=2, rollout.max_new_tokens=24, "
        "data.limit=4, lora.rank=8, logging.progress=false, logging.tensorboard=false]",
        "eval.limit=5", "eval.batch_size=5", "eval.max_new_tokens=48", *extra])


def _check_run(out: Path, results: dict, rows: list[str]) -> None:
    from sqrl.dimensions import EVAL_DIMENSIONS

    assert list(results["rows"]) == rows and results["seeds"] == [0, 1] and results["eval_clips"] == 5
    assert json.loads((out / "results.json").read_text())["rows"].keys() == results["rows"].keys()
    for name, row in results["rows"].items():
        seeds = ["all"] if name == "untrained" else ["0", "1"]
        assert list(row["per_seed"]) == seeds, name
        for seed, m in row["per_seed"].items():
            assert set(EVAL_DIMENSIONS) | {"mean"} <= set(m["pcc"]) and "parse_rate" in m and "rouge_l" in m["long_form"]
            assert (out / m["eval"] / "metrics.json").exists() and (out / m["model"] / "sqrl_model.json").exists()
        s = row["summary"]
        assert {"pcc", "srcc", "mae", "parse_rate", "artifacts", "long_form"} <= set(s)
        assert s["pcc"]["mean"]["n"] + s["pcc"]["mean"]["undefined"] == len(seeds)
        assert set(s["parse_rate"]) == {"mean", "std", "min", "max", "n", "undefined"}
        if name.startswith("grpo"):
            rc = row["reward_curve"]
            assert rc["steps"] == [1, 2] and set(rc["curves"]["rewards/total/mean"]["per_seed"]) == {"0", "1"}
    enc = {name: row["encoder"] for name, row in results["rows"].items()}
    assert enc.get("calibration", "trainable") == "trainable" and enc.get("calibration_frozen", "frozen") == "frozen"
    # the seeds differ in training, so the same stage of two seeds holds different weights
    a, b = (out / f"seed{s}" / "calibration" / "adapter_model.safetensors" for s in (0, 1))
    assert a.read_bytes() != b.read_bytes()
    report = (out / "report.md").read_text()
    assert "## Table 1" in report and "## Table 3" in report
    for row in results["rows"].values():
        assert f"| {row['label']} |" in report
    for name in ("pcc_by_row", "scatter_best") + (("reward_curves",) if any(r.startswith("grpo") for r in rows) else ()):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG


def _fingerprint(out: Path) -> dict[str, float]:
    """mtimes of every trained model's files and every evaluation."""
    files = [*out.glob("seed*/*/sqrl_model.json"), *out.glob("seed*/*/*.safetensors"), *out.glob("seed*/eval/*/metrics.json"),
             *out.glob("untrained/*/*.json"), *out.glob("seed*/grpo_*/metrics.jsonl")]
    return {str(f): f.stat().st_mtime_ns for f in files}


def _check_resume(out: Path, cfg: CompareConfig, first: dict) -> None:
    before = _fingerprint(out)
    assert len(before) > 10
    again = run_compare(cfg, out)
    assert all(stage["reused"] for stage in again["stages"].values()), again["stages"]
    assert _fingerprint(out) == before  # nothing retrained or re-evaluated
    for name, row in again["rows"].items():
        assert row["summary"] == first["rows"][name]["summary"]


@pytest.mark.e2e
def test_compare_end_to_end_on_two_seeds_then_resumes_without_retraining(small_corpus, tmp_path):
    """Every row but the two LLM-judge GRPO rows (see the slow test below)."""
    rows = ["untrained", "calibration", "calibration_frozen", "sft_reasoning", "grpo_accsem"]
    cfg = _tiny(small_corpus, rows)
    out = tmp_path / "compare"
    results = run_compare(cfg, out)
    _check_run(out, results, rows)
    assert not any(stage["reused"] for stage in results["stages"].values())
    assert not (out / "seed0" / "grpo_unified").exists()  # rows not asked for are not trained
    _check_resume(out, cfg, results)


@pytest.mark.slow
def test_compare_every_row_including_the_llm_judge_rewards(small_corpus, tmp_path):
    """All seven rows; the SmolLM2 judge rows judge one dimension (dimension-wise) or one criterion (unified)."""
    rows = list(ROW_BY_NAME)
    cfg = _tiny(small_corpus, rows, 'variants.grpo_llmjudge.overrides=["rewards.entries=[{name: llm_judge_dimwise, '
                'dimensions: [overall], params: {judge: smollm2}}]"]')
    out = tmp_path / "compare"
    results = run_compare(cfg, out)
    _check_run(out, results, rows)
    metrics = [json.loads(line) for line in (out / "seed1" / "grpo_llmjudge" / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/llm_judge_dimwise/overall/mean" in r for r in metrics)
    _check_resume(out, cfg, results)


@pytest.mark.e2e
def test_compare_with_sft_seed_trains_the_sft_chain_once_then_resumes(small_corpus, tmp_path):
    """sft_seed: one calibration, frozen-encoder calibration, warm-up and merge under shared/; the GRPO row per seed."""
    import yaml

    rows = ["calibration_frozen", "sft_reasoning", "grpo_accsem"]
    cfg = _tiny(small_corpus, rows, "sft_seed=5")
    out = tmp_path / "compare"
    results = run_compare(cfg, out)
    assert results["sft_seed"] == 5 and list(results["rows"]) == rows
    assert not any(stage["reused"] for stage in results["stages"].values())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["plots", "seed0", "seed1", "shared"]
    assert sorted(p.name for p in (out / "shared").iterdir()) == [
        "calibration", "calibration_frozen", "eval", "merged", "warmup"]
    for seed in (0, 1):
        assert sorted(p.name for p in (out / f"seed{seed}").iterdir()) == ["eval", "grpo_accsem"]
        grpo_cfg = yaml.safe_load((out / f"seed{seed}" / "grpo_accsem" / "sqrl_config.yaml").read_text())
        assert grpo_cfg["model"]["init"] == str(out / "shared" / "merged") and grpo_cfg["train"]["seed"] == seed
    sft_cfg = yaml.safe_load((out / "shared" / "calibration" / "sqrl_config.yaml").read_text())
    assert sft_cfg["train"]["seed"] == 5
    for name in ("calibration_frozen", "sft_reasoning"):
        row = results["rows"][name]
        assert row["seed_independent"] and list(row["per_seed"]) == ["all"]
        assert row["per_seed"]["all"]["eval"] == f"shared/eval/{name}"
        assert row["summary"]["parse_rate"]["n"] == 1
    assert results["rows"]["calibration_frozen"]["encoder"] == "frozen"
    grpo = results["rows"]["grpo_accsem"]
    assert list(grpo["per_seed"]) == ["0", "1"] and grpo["summary"]["parse_rate"]["n"] == 2
    # the seeds differ in the GRPO stage only
    a, b = (out / f"seed{s}" / "grpo_accsem" / "adapter_model.safetensors" for s in (0, 1))
    assert a.read_bytes() != b.read_bytes()
    assert "Shared SFT rows" in (out / "report.md").read_text()
    before = {str(f): f.stat().st_mtime_ns for f in out.rglob("*") if f.suffix in (".json", ".safetensors", ".jsonl")
              and "plots" not in f.parts and f.name != "results.json"}
    again = run_compare(cfg, out)
    assert all(stage["reused"] for stage in again["stages"].values()), again["stages"]
    after = {str(f): f.stat().st_mtime_ns for f in out.rglob("*") if f.suffix in (".json", ".safetensors", ".jsonl")
             and "plots" not in f.parts and f.name != "results.json"}
    assert after == before
