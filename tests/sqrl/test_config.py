from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sqrl.config import ConfigError, apply_overrides, from_dict, load_config


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError("steps must be >= 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_unknown_keys_are_rejected_with_their_dotted_path():
    with pytest.raises(ConfigError, match=r"inner\.lrr"):
        from_dict(Outer, {"inner": {"lrr": 1}})


def test_wrong_types_name_the_field():
    with pytest.raises(ConfigError, match=r"inner\.steps"):
        from_dict(Outer, {"inner": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"inner\.steps"):
        from_dict(Outer, {"inner": {"steps": True}})


def test_post_init_validation_surfaces_as_config_error():
    with pytest.raises(ConfigError, match="steps must be"):
        from_dict(Outer, {"inner": {"steps": -1}})


def test_dotted_overrides_parse_values_as_yaml():
    data = apply_overrides({"inner": {"lr": 1.0}}, ["inner.lr=1e-4", "inner.steps=5", "tags=[a, b]", "inner.name=x"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == pytest.approx(1e-4) and cfg.inner.steps == 5 and cfg.tags == ["a", "b"]
    assert cfg.inner.name == "x"
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["nonsense"])


def test_a_yaml_can_extend_a_base_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("inner: {lr: 0.5, steps: 3}\ntags: [x]\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\ninner: {steps: 7}\n")
    cfg = load_config(Outer, tmp_path / "top.yaml", ["inner.name=run"])
    assert (cfg.inner.lr, cfg.inner.steps, cfg.tags, cfg.inner.name) == (0.5, 7, ["x"], "run")


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
