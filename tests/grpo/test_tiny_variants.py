"""Heavier checks (``-m slow``): each tiny GRPO config runs, and the tiny calibrated model bootstraps."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from grpo.config import BootstrapConfig, GRPOConfig, ModelConfig
from grpo.tracking import read_metrics
from sqrl.config import load_config

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

COMPONENTS = {
    "accsem_dimwise": ("rewards/accuracy/overall/mean", "rewards/semantic/noise/mean"),
    "llmjudge_dimwise": ("rewards/llm_judge_dimwise/noise/mean", "rewards/llm_judge_dimwise/overall/mean"),
    "unified": ("rewards/llm_judge_unified/accuracy/mean",),
}


@pytest.mark.parametrize("variant", sorted(COMPONENTS))
def test_each_tiny_variant_runs_two_steps_and_logs_its_components(variant, tiny_init, corpus, tmp_path):
    from grpo.driver import run_grpo

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg = load_config(GRPOConfig, REPO / "configs" / "tiny" / f"grpo_{variant}.yaml", [
        f"model.init={tiny_init}", "model.bootstrap=null", f"data.train={corpus / 'train.jsonl'}", "data.synth=null",
        "train.steps=2", "train.batch_size=2", "train.check_sync_every=1", "rollout.max_new_tokens=24",
        "logging.progress=false"])
    rows = read_metrics(run_grpo(cfg, tmp_path / "run") / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in COMPONENTS[variant]:
        assert all(key in r for r in rows), key
    assert all(r["rewards/total/skipped"] == 0 for r in rows)  # the judge answered every request
    assert all(r["sync/max_abs_logprob_diff"] < 1e-4 for r in rows)


def test_bootstrap_builds_the_merged_calibration_model(tiny_init, corpus, tmp_path):
    from recipes.bootstrap import ensure_init
    from sqrl.models import load_model, read_meta

    small = [f"model.path={tiny_init}", f"data.train={corpus / 'train.jsonl'}", "data.synth=null", "data.limit=4",
             "train.max_steps=2", "train.batch_size=2", "train.save_steps=1000"]
    settings = ModelConfig(init=str(tmp_path / "calibrated"), bootstrap=BootstrapConfig(overrides=small))
    path = ensure_init(settings)
    meta = read_meta(path)
    assert (meta.kind, meta.stage) == ("full", "merge")
    assert read_meta(tmp_path / "calibrated.parts" / "warmup").stage == "warmup"
    load_model(path)
    assert ensure_init(settings) == path  # built once, then reused
