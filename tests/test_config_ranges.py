"""Impossible numbers are refused when a config is built, for every stage, and the error names the key.

The table is derived from the configs themselves: every field declared with ``bounded`` gets a value
just outside its range (and NaN), so a field added later is covered by the same test."""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from grpo.config import GRPOConfig
from sft.config import SFTStageConfig, TrainSettings
from sqrl.compare import CompareConfig
from sqrl.config import ConfigError, Range, apply_overrides, from_dict, load_config
from sqrl.pipeline import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"sft": SFTStageConfig, "grpo": GRPOConfig, "pipeline": PipelineConfig, "compare": CompareConfig}


def _dataclass_of(tp):
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _ranged_fields(cls, prefix=""):
    """(dotted key, field type, Range) of every bounded field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if "range" in f.metadata:
            yield key, hints[f.name], f.metadata["range"]
        inner = _dataclass_of(hints[f.name])
        if inner is not None:
            yield from _ranged_fields(inner, key + ".")


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        inner = _dataclass_of(tp)
        if inner is not None:
            yield from _numeric_fields(inner, key + ".")
        elif typing.get_origin(tp) is dict:
            continue  # free-form mappings (cluster.*.resources: checked in ClusterSettings.__post_init__)
        elif {int, float} & {tp, *typing.get_args(tp), *[a for t in typing.get_args(tp) for a in typing.get_args(t)]}:
            yield key


def _impossible(tp, rng: Range) -> list:
    integer = int in (tp, *typing.get_args(tp)) or typing.get_args(tp) == (int,)
    values = []
    if rng.ge is not None:
        values.append(rng.ge - 1 if integer else rng.ge - 0.5)
    if rng.gt is not None:
        values.append(rng.gt)
    if rng.le is not None:
        values.append(rng.le + 1)
    if rng.lt is not None:
        values.append(rng.lt)
    values = [v for v in values if v not in rng.also]
    if not integer:
        values.append(math.nan)
    return values


def _cases():
    for root, cls in ROOTS.items():
        for key, tp, rng in _ranged_fields(cls):
            for value in _impossible(tp, rng):
                is_list = typing.get_origin(tp) is list
                yield pytest.param(root, key, [value] if is_list else value, id=f"{root}:{key}={value}")


def _build(cls, key, value):
    base = {"data": {"train": "x.jsonl"}} if cls in (SFTStageConfig, GRPOConfig) else {}
    data = apply_overrides(base, [f"{key}=0"])  # make the section, then put the raw value in
    node = data
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = value
    return from_dict(cls, data)


@pytest.mark.parametrize("root,key,value", list(_cases()))
def test_an_impossible_number_is_refused_with_its_dotted_key(root, key, value):
    with pytest.raises(ConfigError) as info:
        _build(ROOTS[root], key, value)
    assert str(info.value).startswith(f"{key}") or str(info.value).startswith(f"{key}[0]"), str(info.value)
    assert "must be" in str(info.value)


def test_every_numeric_field_of_every_stage_declares_its_range():
    # A new int/float field without ``bounded`` fails here: decide its range when you add it.
    for root, cls in ROOTS.items():
        ranged = {key for key, _, _ in _ranged_fields(cls)}
        missing = [key for key in _numeric_fields(cls) if key not in ranged]
        assert missing == [], f"{root}: numeric fields without a range: {missing}"


def test_the_reported_case_fails_before_training_and_names_both_keys():
    with pytest.raises(ConfigError, match=r"^train\.epochs must be > 0, got -1\.0$"):
        load_config(SFTStageConfig, REPO / "configs/tiny/calibration.yaml", ["train.epochs=-1", "train.max_steps=-5"])
    with pytest.raises(ConfigError, match=r"^train\.max_steps must be >= 1 or -1, got -5$"):
        load_config(SFTStageConfig, REPO / "configs/tiny/calibration.yaml", ["train.max_steps=-5"])
    with pytest.raises(ConfigError, match=r"^train\.max_steps must be >= 1 or -1, got 0$"):
        load_config(SFTStageConfig, REPO / "configs/tiny/calibration.yaml", ["train.max_steps=0"])
    assert load_config(SFTStageConfig, REPO / "configs/tiny/calibration.yaml", ["train.max_steps=-1"]).train.max_steps == -1


def test_sentinels_bounds_and_none_stay_allowed():
    cfg = load_config(GRPOConfig, None, ["algorithm.beta=0", "rollout.top_p=1", "train.save_every=0",
                                         "algorithm.epsilon_high=null", "data.limit=null", "policy.max_grad_norm=0"])
    assert cfg.algorithm.beta == 0 and cfg.rollout.top_p == 1 and cfg.data.limit is None


def test_a_config_built_in_python_checks_its_ranges_too():
    with pytest.raises(ValueError, match=r"^epochs must be > 0, got -1$"):
        TrainSettings(epochs=-1)
    with pytest.raises(ConfigError, match=r"^policy\.adam_betas\[1\] must be in \[0, 1\), got 1\.5$"):
        load_config(GRPOConfig, None, ["policy.adam_betas=[0.9, 1.5]"])
    with pytest.raises(ConfigError, match=r"must be a finite number"):
        load_config(GRPOConfig, None, ["policy.lr=.inf"])


def test_data_synth_judges_and_command_line_flags_check_their_numbers_too(capsys):
    from judges.base import RetryPolicy, build_judge
    from sqrl.cli import build_parser
    from sqrl.data.synth import SynthConfig

    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -3$"):
        SynthConfig(out="x", num=4, seed=-3)
    with pytest.raises(ValueError, match=r"^jitter must be in \[0, 1\], got 2$"):
        RetryPolicy(jitter=2)
    with pytest.raises(ValueError, match=r"^judge\.timeout_s must be > 0, got -1$"):
        build_judge("openai", base_url="http://127.0.0.1:9", model="m", timeout_s=-1)
    parser = build_parser()
    for argv, flag in [(["eval", "--model", "m", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
                       (["assess", "a.wav", "--max-new-tokens", "-1"], "--max-new-tokens"),
                       (["data", "synth", "--out", "o", "--num", "0"], "--num"),
                       (["data", "validate", "m.jsonl", "--max-seconds", "nan"], "--max-seconds")]:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert f"argument {flag}: must be" in capsys.readouterr().err, argv
