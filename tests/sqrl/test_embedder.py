"""The shared sentence embedder: offline by path, once per process, each distinct text encoded once."""
import pickle

import numpy as np
import pytest

from sqrl import embedder


def test_the_model_loads_offline_from_the_packaged_folder_once_per_process():
    assert (embedder.model_path() / "model.safetensors").is_file()
    assert embedder.get_model() is embedder.get_model()


def test_embeddings_are_unit_norm_and_distinct_texts_are_encoded_once():
    embedder.clear_cache()
    texts = ["quiet hum (embedder test)", "loud clicks (embedder test)", "quiet hum (embedder test)"]
    vecs = embedder.embed(texts)
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs[0], vecs[2])
    assert embedder.stats()["encoded"] == 2
    embedder.embed(texts[:2])  # already cached: nothing new goes through the model
    assert embedder.stats() == {"encoded": 2, "requested": 5, "cached": 2}


def test_similarity_maps_cosine_to_zero_one():
    sims = embedder.similarity(["a steady hiss", "a steady hiss"], ["a steady hiss", "the cat sat on a mat"])
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= sims[1] < sims[0]
    assert embedder.similarity([], []) == []
    with pytest.raises(ValueError, match="equal lengths"):
        embedder.similarity(["a"], [])


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentence-transformer folder not found"):
        embedder.get_model(tmp_path / "nope")


def test_objects_holding_no_model_pickle_freely():
    from rewards.builtin import Semantic

    assert pickle.loads(pickle.dumps(Semantic())).kinds == Semantic().kinds
