import pytest

from sqrl.dimensions import DIMENSIONS
from sqrl.prompts import Rubric
from sqrl.response import parse
from sqrl.schema import Artifact, Record


def _record():
    return Record(
        scores=dict(zip(DIMENSIONS, [5, 4, 2, 5, 3, 4, 3])),
        artifacts=[Artifact("noise", 0.0, 1.5, "steady hiss")],
        description="Noisy but clear.",
        audio="a.wav",
    )


def test_per_dimension_prompts_carry_every_score_criterion():
    rubric = Rubric()
    prompt = rubric.per_dimension("noise")
    for score in range(1, 6):
        assert f"{score}: " in prompt
    assert "Noise: <score>/5" in prompt and "time interval" in prompt


def test_per_dimension_examples_target_one_dimension_and_its_artifacts():
    examples = Rubric().examples(_record(), "per_dimension")
    assert [e.dimension for e in examples] == list(DIMENSIONS)
    noise = next(e for e in examples if e.dimension == "noise")
    parsed = parse(noise.target)
    assert parsed.scores["noise"] == 2 and [a.kind for a in parsed.artifacts] == ["noise"]
    speed = next(e for e in examples if e.dimension == "speed")
    assert "Artifacts" not in speed.target


def test_long_form_targets_include_the_description_and_all_dimensions_do_not():
    rubric = Rubric()
    (short,) = rubric.examples(_record(), "all_dimensions")
    (long,) = rubric.examples(_record(), "long_form")
    assert parse(short.target).description is None
    assert parse(long.target).description == "Noisy but clear."
    assert parse(long.target).scores == _record().scores


def test_a_rubric_missing_a_score_criterion_is_rejected(tmp_path):
    import yaml

    from sqrl.prompts import DEFAULT_RUBRIC

    data = yaml.safe_load(DEFAULT_RUBRIC.read_text())
    del data["dimensions"]["noise"]["criteria"][3]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="noise"):
        Rubric(bad)


def test_an_unknown_prompting_mode_is_rejected():
    with pytest.raises(ValueError, match="prompting"):
        Rubric().examples(_record(), "sideways")
