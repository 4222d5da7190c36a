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
    if path.name.startswith("pipeline"):
        return "pipeline"
    if path.name.startswith("compare"):
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
        from recipes.pipeline import PipelineConfig

        cfg = load_config(PipelineConfig, path)
        for stage in (cfg.calibration, cfg.warmup, cfg.grpo):
            assert (CONFIGS.parent / stage.config).exists()
    elif kind == "compare":
        from grpo.config import GRPOConfig
        from recipes.compare import CompareConfig
        from recipes.compare_plan import Plan

        cfg = load_config(CompareConfig, path)
        plan = Plan(cfg, Path("runs/compare"))
        for name, variant in cfg.variants.items():  # every variant's stage config loads with its overrides
            if variant.stage == "grpo":
                load_config(GRPOConfig, variant.config, plan.grpo_overrides(name, 0))
            else:
                plan.sft_config(name, 0)
    elif kind == "grpo":
        from grpo.config import GRPOConfig

        load_config(GRPOConfig, path)
    else:
        from sft.config import SFTStageConfig

        load_config(SFTStageConfig, path)
