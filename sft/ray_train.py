"""Run an SFT stage on a Ray cluster: a Ray Train TorchTrainer whose workers run ``run_sft``.

Each worker gets a torch.distributed process group from Ray Train (gloo on CPU, NCCL on GPUs);
HF/DeepSpeed inside ``run_sft`` join it, so one code path serves 1 process, N GPUs and N nodes.
Rank 0 writes the model directory; ``out`` must be on storage every node sees (a shared file
system on a real cluster).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from sft.config import SFTStageConfig
from sqrl.config import from_dict, to_dict

log = logging.getLogger(__name__)


def _worker_loop(config: dict) -> None:
    # Runs inside each Ray Train worker; the config travels as plain data.
    from sft.train import run_sft
    from sqrl.runtime import configure_torch

    configure_torch()
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not config["use_gpu"] else "cuda")
    cfg = from_dict(SFTStageConfig, config["cfg"])
    run_sft(cfg, config["out"], resume=config["resume"], claim=False)  # checked once by run_sft_on_ray


def run_sft_on_ray(cfg: SFTStageConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train with ``cfg.ray.num_workers`` Ray Train workers; returns the model directory."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sqrl.rundir import prepare_out

    out = prepare_out(out, resume=resume, overwrite=overwrite).resolve()
    if not ray.is_initialized():
        local = cfg.ray.address is None and not os.environ.get("RAY_ADDRESS")
        # "local": a new cluster of our own; a bare ray.init() would join any `ray start` cluster it finds
        ray.init(address="local" if local else cfg.ray.address, include_dashboard=False, log_to_driver=True)
    # The synthetic corpus is built once here, not raced by every worker.
    if cfg.data.train is None:
        from sft.data import resolve_manifests

        train, test = resolve_manifests(cfg.data)
        cfg.data.train, cfg.data.eval, cfg.data.synth = str(train), str(test) if test else None, None
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": to_dict(cfg), "out": str(out), "resume": resume, "use_gpu": cfg.ray.use_gpu},
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if cfg.ray.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        run_config=RunConfig(name="sqrl-sft", storage_path=str(out.parent / ".ray_results")),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    log.info("Ray Train SFT finished: %s", out)
    return out
