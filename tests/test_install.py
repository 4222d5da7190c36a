"""sqrl installed non-editable into a fresh venv runs from a folder that is not the repository.

The venv gets only the built wheel (``pip install --no-deps``); torch, transformers and the rest come from
this interpreter's site-packages through a ``.pth`` file (re-installing them would take minutes and need the
network). The run happens in an empty temporary folder with no ``PYTHONPATH``, so every config, rubric and
judge prompt set must come from the installed package data, and the custom reward from the folder named in
``rewards.python_path``, handed by the driver to its Ray reward workers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "sqrl", "sft", "grpo", "rewards", "judges", "recipes", "configs")

REWARD = '''
def brevity(completions, references, **_):
    """1 for an answer of at most 40 words, less for longer ones."""
    return [min(1.0, 40 / max(1, len(c.split()))) for c in completions]
'''


def _install(tmp: Path) -> Path:
    """A venv holding a wheel built from a copy of the sources; its python."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # this interpreter's packages, after the venv's own; a .pth file listed here is not processed, so the
    # editable install of the checkout (if any) does not reach the venv
    (site / "_sqrl_test_base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--ignore-installed", str(src)], check=True, env=_env())
    shutil.rmtree(src)  # nothing may come from the sources
    return python


def _env() -> dict[str, str]:
    """A clean environment: no PYTHONPATH, and none of the torch.distributed variables (RANK, MASTER_PORT, ...)
    that stages run earlier in this test process left behind (a stale MASTER_PORT is a port in use)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SQRL_CACHE", "RAY_AUTH_MODE", "DS_ACCELERATOR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    # DeepSpeed's CPU communication op is compiled per interpreter path; sharing the user's cache with the
    # checkout's venv made each rebuild it in turn (~80 s each, and the other's build waits on its lock)
    env["TORCH_EXTENSIONS_DIR"] = str(Path.home() / ".cache" / "sqrl-install-test" / "torch_extensions")
    return env


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_wheel_installed_elsewhere_runs_the_stages_with_shipped_configs_and_a_custom_reward(tmp_path):
    python = _install(tmp_path)
    sqrl = python.parent / "sqrl"
    work = tmp_path / "work"
    (work / "plugins").mkdir(parents=True)
    (work / "plugins" / "my_rewards.py").write_text(REWARD)

    # the code and data come from the venv, not from the repository
    where = json.loads(_run([str(python), "-c", (
        "import json, configs, recipes, sqrl\n"
        "from judges.prompts import resolve_config\n"
        "from sqrl.prompts import DEFAULT_RUBRIC, Rubric\n"
        "Rubric()\n"
        "print(json.dumps({'sqrl': sqrl.__file__, 'recipes': recipes.__file__, 'configs': configs.__file__,\n"
        "                  'rubric': str(DEFAULT_RUBRIC), 'judge': str(resolve_config('smollm2'))}))")], work))
    venv = str(python.parent.parent)
    assert all(path.startswith(venv) for path in where.values()), where
    assert "usage: sqrl" in _run([str(sqrl), "--help"], work) and "compare" in _run([str(python), "-m", "sqrl", "--help"], work)

    # a tiny corpus, two SFT steps from the shipped calibration config (its rubric is shipped too), a merge
    _run([str(sqrl), "data", "synth", "--out", "corpus", "--num", "12", "--workers", "1", "--no-pesq"], work)
    small = ["data.train=corpus/train.jsonl", "data.synth=null", "lora.rank=8"]
    _run([str(sqrl), "sft", "--config", "configs/tiny/calibration.yaml", "--out", "calibration", *small,
          "model.options={window_s: 5}",
          "train.max_steps=2", "train.batch_size=2", "data.limit=4", "train.deepspeed.enabled=false"], work)
    _run([str(sqrl), "merge", "calibration", "--out", "merged"], work)
    assert json.loads((work / "merged" / "sqrl_model.json").read_text())["kind"] == "full"

    # one GRPO step with the custom reward: its module is in plugins/, which only rewards.python_path names
    grpo = [str(sqrl), "grpo", "--config", "configs/tiny/grpo_accsem_dimwise.yaml", "--out", "grpo", *small,
            "model.init=merged", "model.bootstrap=null", "train.steps=1", "train.batch_size=1", "rollout.group_size=2",
            "rollout.max_new_tokens=16", "data.limit=2", "logging.progress=false", "logging.tensorboard=false",
            "cluster.num_cpus=2", "rewards.entries=[{name: accuracy}, {name: my_rewards.brevity}]"]
    missing = subprocess.run(grpo, cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "cannot import module 'my_rewards'" in missing.stderr  # checked before Ray
    _run([*grpo, "rewards.python_path=[plugins]"], work)
    logged = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert logged and 0 < logged[-1]["rewards/brevity/mean"] <= 1
    assert (work / "grpo" / "sqrl_model.json").exists()
