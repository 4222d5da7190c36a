"""The checkpoint manifest (sqrl/integrity.py): written with a checkpoint, any later change refused by name.

The stages' own tests tamper with real checkpoints: tests/sft/test_sft.py and tests/grpo/test_driver.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sqrl.integrity import MANIFEST, IntegrityError, main, sha256_file, verify_manifest, write_manifest


def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "engine" / "global_step3").mkdir(parents=True)
    torch.save({"w": torch.arange(4.0)}, folder / "engine" / "global_step3" / "mp_rank_00_model_states.pt")
    (folder / "trainer_state.json").write_text('{"step": 3}')
    write_manifest(folder)
    return folder


def test_the_manifest_lists_every_file_with_its_sha256_and_verifies(tmp_path):
    folder = checkpoint(tmp_path)
    data = json.loads((folder / MANIFEST).read_text())
    assert sorted(data["files"]) == ["engine/global_step3/mp_rank_00_model_states.pt", "trainer_state.json"]
    assert data["files"]["trainer_state.json"] == sha256_file(folder / "trainer_state.json")
    assert verify_manifest(folder) == 2
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("tamper, named", [
    ("flip one byte", "mp_rank_00_model_states.pt"),
    ("plant a pickle", "mp_rank_00_model_states.pt"),
    ("add a file", "optim_states.pt"),
    ("remove a file", "trainer_state.json"),
    ("remove the manifest", MANIFEST),
    ("garble the manifest", MANIFEST),
    ("link a file", "trainer_state.json"),
])
def test_any_change_after_the_write_is_refused_naming_the_file(tmp_path, tamper, named, plant_pickle):
    folder = checkpoint(tmp_path)
    states = folder / "engine" / "global_step3" / "mp_rank_00_model_states.pt"
    marker = tmp_path / "ran"
    if tamper == "flip one byte":
        data = bytearray(states.read_bytes())
        data[len(data) // 2] ^= 1
        states.write_bytes(bytes(data))
    elif tamper == "plant a pickle":
        plant_pickle(states, marker)
    elif tamper == "add a file":
        torch.save({}, states.parent / "optim_states.pt")
    elif tamper == "remove a file":
        (folder / "trainer_state.json").unlink()
    elif tamper == "remove the manifest":
        (folder / MANIFEST).unlink()
    elif tamper == "garble the manifest":
        (folder / MANIFEST).write_text("[1, 2")
    elif tamper == "link a file":
        (tmp_path / "elsewhere.json").write_text('{"step": 3}')
        (folder / "trainer_state.json").unlink()
        os.symlink(tmp_path / "elsewhere.json", folder / "trainer_state.json")
    with pytest.raises(IntegrityError, match=named):
        verify_manifest(folder)
    assert not marker.exists()


def test_the_planted_pickle_really_runs_code_when_loaded_unchecked(tmp_path, plant_pickle):
    # what the checks above stand between: DeepSpeed's torch.load(weights_only=False)
    path, marker = tmp_path / "states.pt", tmp_path / "ran"
    plant_pickle(path, marker)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # our own loads: refused by torch itself
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_command_line_verifies_and_trusts(tmp_path, capsys):
    folder = checkpoint(tmp_path)
    assert main(["verify", str(folder)]) == 0
    (folder / MANIFEST).unlink()
    assert main(["verify", str(folder)]) == 1
    assert "sqrl.integrity trust" in capsys.readouterr().err
    assert main(["trust", str(folder)]) == 0 and verify_manifest(folder) == 2
