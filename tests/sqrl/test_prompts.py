import pytest

from sqrl.dimensions import DIMENSIONS
from sqrl.prompts import DEFAULT_RUBRIC, Rubric
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

    data = yaml.safe_load(DEFAULT_RUBRIC.read_text())
    del data["dimensions"]["noise"]["criteria"][3]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="noise"):
        Rubric(bad)


def test_an_unknown_prompting_mode_is_rejected():
    with pytest.raises(ValueError, match="prompting"):
        Rubric().examples(_record(), "sideways")


def test_a_rubric_can_ask_for_artifacts_before_scores_on_top_of_a_base(tmp_path):
    (tmp_path / "first.yaml").write_text(
        "base: %s\nanswer_order: artifacts_first\ntemplates: {all_dimensions: 'Artifacts, then scores.'}\n"
        % DEFAULT_RUBRIC)
    rubric = Rubric(tmp_path / "first.yaml")
    assert rubric.artifacts_first and not Rubric().artifacts_first
    assert rubric.all_dimensions() == "Artifacts, then scores."
    assert rubric.long_form() == Rubric().long_form()  # the base's other templates stay
    for prompting in ("all_dimensions", "long_form", "per_dimension"):
        for first, plain in zip(rubric.examples(_record(), prompting), Rubric().examples(_record(), prompting)):
            assert parse(first.target) == parse(plain.target)
            if "Artifacts:" in first.target:
                assert first.target.startswith("Artifacts:") and plain.target.startswith("Scores:")


def test_an_unknown_answer_order_is_rejected(tmp_path):
    (tmp_path / "bad.yaml").write_text("base: %s\nanswer_order: sideways\n" % DEFAULT_RUBRIC)
    with pytest.raises(ValueError, match="answer_order"):
        Rubric(tmp_path / "bad.yaml")


def test_a_voice_line_rubric_asks_for_the_voice_and_writes_it_before_the_scores():
    rubric = Rubric("configs/rubrics/compact_voice.yaml")
    assert rubric.voice_line and rubric.artifacts_first
    record = Record(scores={"naturalness": 2, "noise": 4}, voice="strongly warbling", audio="a.wav")
    (example,) = rubric.examples(record, "all_dimensions")
    assert "the voice" in example.prompt
    lines = example.target.splitlines()
    assert lines.index("- Voice: strongly warbling") < lines.index("- Naturalness: 2/5")
    assert parse(example.target).voice == "strongly warbling"
    by_dim = {e.dimension: e for e in rubric.examples(record, "per_dimension")}
    assert "voice" in by_dim["naturalness"].prompt
    assert by_dim["naturalness"].target == "Artifacts:\n- Voice: strongly warbling\nScores:\n- Naturalness: 2/5"
    assert "Voice" not in by_dim["noise"].target and "voice" not in by_dim["noise"].prompt
    # the rubrics without the key write no voice line
    assert "Voice" not in Rubric("configs/rubrics/compact_artifacts_first.yaml").examples(
        record, "all_dimensions")[0].target


def test_voice_line_must_be_a_boolean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: %s\nvoice_line: 'yes'\n" % DEFAULT_RUBRIC)
    with pytest.raises(ValueError, match="voice_line must be true or false"):
        Rubric(bad)


def test_answer_format_mismatch_names_both_formats_and_the_rubric_to_set(tmp_path):
    from sqrl.prompts import answer_format_mismatch

    model = tmp_path / "model"
    model.mkdir()
    voice = Rubric("configs/rubrics/compact_voice.yaml")
    assert answer_format_mismatch(voice, model) is None  # a model that does not say is not checked
    (model / "sqrl_config.yaml").write_text("data: {rubric: configs/rubrics/compact.yaml}\n")
    problem = answer_format_mismatch(voice, model)
    assert "answer_order=artifacts_first, voice_line=True" in problem
    assert "answer_order=scores_first, voice_line=False" in problem
    assert problem.endswith("set data.rubric=configs/rubrics/compact.yaml")
    assert answer_format_mismatch(Rubric(), model) is None  # the full rubric writes the same format as compact
