"""One-pass dimension-wise judging: verdict-line parsing, the cached line-by-line reading against a plain
forward pass, the reward on top, and its cost against the per-dimension judge (real SmolLM2)."""
import pytest

from judges.base import Judge
from judges.prompts import PromptSpec
from judges.verdicts import Verdict, expected_verdict
from judges.onepass import LinesRequest, check_scale, parse_lines, score_lines
from rewards.llm_judge import LLMJudgeDimwise
from sqrl.schema import Artifact, Record

SPEC = PromptSpec(
    system="Grade each dimension of the answer against the reference from 0 (wrong) to 9 (identical). "
           "Reply with one line per dimension: {dimensions}.",
    user="Reference: {reference}\n{answer_block}\nGrade {dimensions}, one line each.",
    answer_block="{open}\n{answer}\n{close}",
    scale=(0, 9),
)
LABELS = ("Noise", "Distortion", "Overall quality")
REF = "Noise: 2/5, hiss 0.0-1.7 s. Distortion: 5/5. Overall quality: 3/5."


def lines_request(answer):
    return LinesRequest(SPEC.request(answer, reference=REF, dimensions=", ".join(LABELS)), LABELS)


def test_verdict_lines_are_parsed_by_label_from_untidy_text():
    text = "Noise: 7\n- **Distortion**: 3/9\n  overall quality :8 \nNoise: 6"
    got = parse_lines(text, LABELS, (0, 9))
    assert [v.score for v in got] == [6.0, 3.0, 8.0]  # the last Noise line wins; case and markup ignored
    missing = parse_lines("Noise: 4\nOverall quality: 12", LABELS, (0, 9))
    assert missing[0].score == 4.0
    assert missing[1].score is None and missing[1].error.startswith("unparseable: no 'Distortion:'")
    assert missing[2].score is None and missing[2].error.startswith("out of range")


def test_only_single_digit_scales_are_accepted():
    check_scale((0, 9))
    check_scale((1, 5))
    with pytest.raises(ValueError, match="within 0-9"):
        check_scale((0, 10))


def test_other_backends_are_refused_with_advice():
    class Remote(Judge):
        def _judge(self, requests):
            return [Verdict(5.0) for _ in requests]

    with pytest.raises(TypeError, match="transformers backend"):
        score_lines(Remote(), [lines_request("Noise: 2/5")])
    with pytest.raises(ValueError, match="onepass needs a transformers judge"):
        LLMJudgeDimwise(judge={"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"}, onepass=True)


def test_each_line_read_on_the_cache_equals_a_plain_pass_over_the_written_reply(smollm2):
    import torch

    judge = smollm2(mode="logit", batch_size=3)  # one padded batch on the shared prefix
    answers = ["Noise: 2/5, a steady hiss from 0 to 1.7 s. Distortion: 5/5. Overall quality: 3/5.",
               "Noise: 5/5. Distortion: 1/5.", "all fine"]
    rows = score_lines(judge, [lines_request(a) for a in answers])
    assert judge.stats.as_dict()["scored"] == 9
    digits = [judge._tok(str(k), add_special_tokens=False)["input_ids"][0] for k in range(10)]
    for answer, row in zip(answers, rows):
        request = lines_request(answer).request
        for label, verdict in zip(LABELS, row):
            assert verdict.text.endswith(f"{label}: ")  # the greedy reply up to this line
            ids = judge.prompt_ids(request, verdict.text)
            with torch.inference_mode():
                logits = judge._model(input_ids=torch.tensor([ids])).logits[0, -1]
            probs = torch.softmax(logits.float(), -1)[digits].tolist()
            plain = expected_verdict(dict(enumerate(probs)), 0.0)
            assert verdict.score == pytest.approx(plain.score, abs=2e-3) and verdict.mass == pytest.approx(plain.mass, abs=2e-3)


def test_generate_mode_writes_and_parses_every_line(smollm2):
    rows = score_lines(smollm2(mode="generate", batch_size=2), [lines_request("Noise: 2/5"), lines_request("Noise: 5/5")])
    for row in rows:
        assert len(row) == 3
        for v in row:
            assert v.text.startswith("Noise: ")
            assert (v.score is not None and 0 <= v.score <= 9) or v.error  # a failure says why


REFERENCE = Record(scores={"noise": 2, "distortion": 5, "continuity": 4, "overall": 3},
                   artifacts=[Artifact("noise", 0.0, 1.7, "a steady hiss")])
GOOD = ("Scores:\n- Noise: 2/5\n- Distortion: 5/5\n- Continuity: 4/5\n- Overall quality: 3/5\n"
        "Artifacts:\n- Noise [0.0-1.7 s]: a steady hiss")
WRONG = "Scores:\n- Noise: 5/5\n- Distortion: 1/5\n- Continuity: 1/5\n- Overall quality: 5/5"
DIMS = ["noise", "distortion", "continuity", "overall"]


def test_the_onepass_reward_sums_its_lines_and_costs_well_under_one_call_per_dimension(smollm2):
    onepass_judge, dimwise_judge = smollm2(mode="logit"), smollm2(mode="logit")
    completions = [GOOD, WRONG, GOOD.replace("Continuity: 4/5", "Continuity: 3/5"), "prose only"]
    out = LLMJudgeDimwise(judge=onepass_judge, dimensions=DIMS, onepass=True)(completions, [REFERENCE] * 4)
    for i in range(4):
        comps = [out.components[d][i] for d in DIMS]
        assert all(0.0 <= c <= 1.0 for c in comps)
        assert out.values[i] == pytest.approx(sum(comps))
    LLMJudgeDimwise(judge=dimwise_judge, dimensions=DIMS)(completions, [REFERENCE] * 4)
    one, per = onepass_judge.stats.as_dict(), dimwise_judge.stats.as_dict()
    assert one["unique"] == 4 and per["unique"] > 4 * 2
    assert one["tokens/computed"] < 0.6 * per["tokens/computed"]


def test_a_failed_line_fails_the_sample_and_is_counted(smollm2):
    reward = LLMJudgeDimwise(judge=smollm2(mode="logit", min_score_mass=1.01), dimensions=DIMS, onepass=True)
    out = reward([GOOD], [REFERENCE])
    assert out.values == [None] and all(out.components[d] == [None] for d in DIMS)
    assert reward.stats["samples_failed"] == 1 and reward.stats["judge_failures"] == 4
    assert reward.model.stats.as_dict()["failed/low score mass"] == 4
