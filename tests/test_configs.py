"""Every YAML under configs/ loads into its dataclass (unknown keys and bad values are errors)."""
from pathlib import Path

import pytest
import yaml

from sqrl.config import load_config, read_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _kind(path: Path) -> str:
    if path.parent.name == "rubrics":
        return "rubric"
    if path.parent.name == "judges":
        return "judge"
    if path.parent.name == "examples":
        return "rewards"
    if path.name == "pipeline.yaml":
        return "pipeline"
    if path.name == "compare.yaml":
        return "compare"
    if path.name.startswith("grpo"):
        return "grpo"
    return "sft"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads(path: Path):
    kind = _kind(path)
    if kind == "rubric":
        from sqrl.prompts import Rubric

        Rubric(path)
    elif kind == "judge":
        assert isinstance(yaml.safe_load(path.read_text()), dict)  # tests/judges load them in depth
    elif kind == "rewards":
        from rewards import RewardSet

        RewardSet.from_config(**read_yaml(path)["rewards"])
    elif kind == "pipeline":
        from sqrl.pipeline import PipelineConfig

        cfg = load_config(PipelineConfig, path)
        for stage in (cfg.calibration, cfg.warmup, cfg.grpo):
            assert (CONFIGS.parent / stage.config).exists()
    elif kind == "compare":
        from grpo.config import GRPOConfig
        from sft.config import SFTStageConfig
        from sqrl.compare import GRPO_STAGES, SFT_STAGES, CompareConfig

        cfg = load_config(CompareConfig, path)
        for name in SFT_STAGES:
            stage = getattr(cfg, name)
            load_config(SFTStageConfig, CONFIGS.parent / stage.config, [*cfg.sft_overrides, *stage.overrides])
        for name in GRPO_STAGES:
            stage = getattr(cfg, name)
            load_config(GRPOConfig, CONFIGS.parent / stage.config, [*cfg.grpo_overrides, *stage.overrides])
    elif kind == "grpo":
        from grpo.config import GRPOConfig

        load_config(GRPOConfig, path)
    else:
        from sft.config import SFTStageConfig

        load_config(SFTStageConfig, path)
