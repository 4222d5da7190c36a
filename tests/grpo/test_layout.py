"""The GRPO roles share only ``messages.py`` (what travels between them) and ``model_io.py``: no worker file
imports another, a rollout backend imports only the ``rollout_worker.py`` interface. Read from the imports."""
from __future__ import annotations

import ast
from pathlib import Path

GRPO = Path(__file__).resolve().parents[2] / "grpo"
WORKERS = {"policy_worker", "reward_worker", "rollout_worker", "rollout_hf", "rollout_vllm"}
BACKENDS = {"rollout_hf", "rollout_vllm"}


def grpo_imports(path: Path) -> set[str]:
    """The ``grpo`` modules a file imports, anywhere in it (a function-level import counts too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grpo."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "grpo":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("grpo."))
    return out


def test_no_worker_file_imports_another_but_a_backend_its_interface():
    for name in sorted(WORKERS):
        allowed = {"rollout_worker"} if name in BACKENDS else set()
        others = grpo_imports(GRPO / f"{name}.py") & (WORKERS - {name} - allowed)
        assert not others, f"grpo/{name}.py imports {sorted(others)}"


def test_messages_import_no_role():
    assert not grpo_imports(GRPO / "messages.py")


def test_the_reader_sees_through_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from grpo.rollout_hf import HFRolloutWorker\n    import grpo.policy_worker\n")
    assert grpo_imports(f) == {"rollout_hf", "policy_worker"}
