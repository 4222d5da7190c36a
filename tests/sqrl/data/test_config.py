"""The data and model sections the stages share: checked once, extended per stage, cheap to import."""
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.config import GRPOConfig, GRPODataConfig
from sft.config import SFTDataConfig, SFTStageConfig
from sqrl.config import ConfigError, load_config
from sqrl.data.config import CorpusConfig, DataConfig

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("cls", [SFTStageConfig, GRPOConfig])
@pytest.mark.parametrize("override, message", [
    ("data.prompting=essay", "data.prompting must be one of per_dimension"),
    ("data.synth=null", "data.train or data.synth must be set"),
    ("model.dtype=float64", "model.dtype must be one of auto, float32, bfloat16, float16, not 'float64'"),
    ("lora.encoder_mode=half", "lora.encoder_mode must be one of trainable, frozen, lora"),
    ("lora.rank=0", "lora.rank must be >= 1"),
])
def test_both_stages_reject_the_same_bad_shared_fields_with_the_same_message(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, [override])


def test_each_stage_keeps_its_own_defaults_and_fields_on_the_shared_section():
    sft, grpo = SFTStageConfig(), GRPOConfig()
    assert isinstance(sft.data, DataConfig) and isinstance(grpo.data, DataConfig)
    assert (sft.data.prompting, grpo.data.prompting) == ("all_dimensions", "long_form")
    assert (sft.lora.dropout, grpo.lora.dropout) == (0.05, 0.0)  # GRPO: deterministic log-probs
    # a YAML lora section without dropout keeps the stage's default
    assert load_config(GRPOConfig, None, ["lora.rank=8"]).lora.dropout == 0.0
    assert not hasattr(grpo.data, "eval")
    # data.balance is a shared field: both stages take it, with the same default and the same check
    assert (sft.data.balance, grpo.data.balance) == ("none", "none")
    for cls in (SFTStageConfig, GRPOConfig):
        assert load_config(cls, None, ["data.balance=labels"]).data.balance == "labels"
        with pytest.raises(ConfigError, match="data.balance must be"):
            load_config(cls, None, ["data.balance=rare"])


def test_manifests_come_from_the_config_without_building_a_corpus_when_paths_are_given(tmp_path):
    cfg = SFTDataConfig(train=str(tmp_path / "t.jsonl"), eval=str(tmp_path / "e.jsonl"))
    assert cfg.manifests() == (tmp_path / "t.jsonl", tmp_path / "e.jsonl")
    assert SFTDataConfig(train="a.jsonl").manifests() == (Path("a.jsonl"), None)
    assert GRPODataConfig(train="a.jsonl").train_manifest() == Path("a.jsonl")
    assert not list(tmp_path.iterdir())


def test_a_synthetic_data_section_points_at_the_cached_corpus(tmp_path):
    folder = CorpusConfig(root=str(tmp_path), num=8, seed=3).folder()  # built once, then reused
    train, test = SFTDataConfig(synth=CorpusConfig(root=str(tmp_path), num=8, seed=3)).manifests()
    assert (train, test) == (folder / "train.jsonl", folder / "test.jsonl")
    assert train.is_file() and test.is_file()
    assert GRPODataConfig(synth=CorpusConfig(root=str(tmp_path), num=8, seed=3)).train_manifest() == train


def test_the_stage_configs_load_without_torch_or_transformers():
    code = ("import sys, sft.config, sqrl.data.config, sqrl.backbones.config; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
