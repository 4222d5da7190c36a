"""The layers of the house, read from the imports of every module (module-level and inside functions).

    cli       recipes/cli.py: the ``sqrl`` command line, on top; nothing imports it
    recipes   recipes/: what composes stages (pipeline, compare, bootstrap, the stage runner)
    stages    sft/, grpo/: import the core, rewards and judges, never each other
    rewards   rewards/: the core, and judges (the LLM-judge rewards call a judge backend)
    judges    judges/: the core only
    core      sqrl/: nothing above it
    data      configs/: the shipped YAML, a package with no code; anyone may read it

One exception: ``sqrl/__main__.py`` (``python -m sqrl``) is an entry point, like the console script, and
imports the CLI lazily inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sqrl", "sft", "grpo", "rewards", "judges", "recipes", "configs")
ALLOWED = {
    "core": {"core", "data"},
    "judges": {"judges", "core", "data"},
    "rewards": {"rewards", "judges", "core", "data"},
    "sft": {"sft", "rewards", "judges", "core", "data"},
    "grpo": {"grpo", "rewards", "judges", "core", "data"},
    "recipes": {"recipes", "sft", "grpo", "rewards", "judges", "core", "data"},
    "cli": {"cli", "recipes", "sft", "grpo", "rewards", "judges", "core", "data"},
    "data": {"data"},
}
ENTRY_POINTS = {("sqrl/__main__.py", "recipes.cli")}


def layer(module: str) -> str | None:
    """The layer of a dotted module name of this project (None: not ours)."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if module == "recipes.cli":
        return "cli"
    return {"sqrl": "core", "configs": "data"}.get(top, top)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``: ``import``/``from`` statements anywhere in the file
    (relative ones resolved), ``importlib.import_module("...")`` with a literal name, and the module names
    listed in a tuple or list for a loop over ``import_module`` (e.g. the CLI's ``COMMAND_MODULES``): a literal
    naming an existing module of ours."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
        elif isinstance(node, (ast.Tuple, ast.List)):
            found += [(e.lineno, e.value) for e in node.elts if isinstance(e, ast.Constant)
                      and isinstance(e.value, str) and _is_our_module(e.value, root)]
    return found


def _is_our_module(name: str, root: Path) -> bool:
    parts = name.split(".")
    if parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return False
    base = root.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            own = layer(module_name(path, root))
            for line, module in imports(path, root):
                target = layer(module)
                if target is None or target in ALLOWED[own] or (rel, module) in ENTRY_POINTS:
                    continue
                out.append(f"{rel}:{line} ({own}) imports {module} ({target})")
    return out


def test_every_module_imports_only_its_own_layer_and_those_below():
    assert violations() == []


def test_the_check_reads_function_level_relative_and_importlib_imports(tmp_path):
    """The reader on a made-up tree that breaks each rule once (so the test above cannot pass by reading nothing)."""
    files = {
        "sqrl/__init__.py": "",
        "sqrl/late.py": "def f():\n    from grpo.driver import run_grpo\n",
        "sqrl/dynamic.py": "import importlib\nimportlib.import_module('recipes.compare')\n",
        "sqrl/ok.py": "from . import late\nimport configs\nNAMES = ('sqrl.late', 'grpo.nowhere')\n",
        "sqrl/cli.py": "COMMAND_MODULES = (\n    'sqrl.ok',\n    'grpo.config',\n)\n",
        "grpo/__init__.py": "",
        "grpo/config.py": "from sft.config import SFTStageConfig\n",
        "judges/base.py": "import rewards\n",
        "recipes/__init__.py": "",
        "recipes/compare.py": "from .cli import main\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "sqrl/cli.py:3 (core) imports grpo.config (grpo)",
        "sqrl/dynamic.py:2 (core) imports recipes.compare (recipes)",
        "sqrl/late.py:2 (core) imports grpo.driver (grpo)",
        "grpo/config.py:1 (grpo) imports sft.config (sft)",
        "judges/base.py:1 (judges) imports rewards (rewards)",
        "recipes/compare.py:1 (recipes) imports recipes.cli (cli)",
    ]


@pytest.mark.parametrize("module, expected", [("sqrl.models", "core"), ("recipes.cli", "cli"),
                                              ("recipes.stages", "recipes"), ("configs", "data"), ("torch", None)])
def test_layer_names(module, expected):
    assert layer(module) == expected
