"""The Ray Train path: the same SFT code on 2 Ray workers joined by a gloo process group."""
import json

import pytest

from sft.config import SFTStageConfig
from sft.ray_train import run_sft_on_ray
from sqrl.config import load_config
from sqrl.models import read_meta

from .conftest import tiny_overrides
from .test_sft import CONFIG


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.e2e
def test_sft_runs_on_two_ray_train_workers(tiny_manifest, tmp_path, ray_cluster):
    cfg = load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{
        "train.max_steps": 2, "ray.num_workers": 2, "train.batch_size": 2}))
    out = run_sft_on_ray(cfg, tmp_path / "model")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["world_size"] == 2 for r in rows)
    assert max(r["step"] for r in rows) == 2
    assert read_meta(out).kind == "adapter"
    assert (out / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_zero3_on_two_ray_train_workers_merges_like_zero2(tiny_manifest, tmp_path, ray_cluster):
    import torch

    from sqrl.models import load_model, merge_adapter, probe_logits

    logits = {}
    for stage in (2, 3):
        cfg = load_config(SFTStageConfig, CONFIG, tiny_overrides(tiny_manifest, **{
            "train.max_steps": 2, "ray.num_workers": 2, "train.batch_size": 2,
            "train.deepspeed.stage": stage}))
        out = run_sft_on_ray(cfg, tmp_path / f"z{stage}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(r["world_size"] == 2 for r in rows)
        merge_adapter(out, tmp_path / f"z{stage}-merged")
        model, processor, backbone = load_model(tmp_path / f"z{stage}-merged")
        logits[stage] = probe_logits(model, processor, backbone)
    assert float(torch.abs(logits[2] - logits[3]).max()) < 1e-3
