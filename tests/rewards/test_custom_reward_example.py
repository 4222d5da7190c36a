"""The documented custom-reward example runs as written and gives hand-worked totals."""
import sys
from pathlib import Path

import pytest

from rewards.base import RewardSet, get

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    yield
    sys.modules.pop("examples.my_rewards", None)


def test_dotted_paths_to_a_project_module_resolve_from_the_working_directory(in_repo_root):
    # the `sqrl` console script does not put the working directory on sys.path; lookup retries with it
    fn = get("examples.my_rewards.brevity", {"max_words": 2})
    assert fn.keywords == {"max_words": 2}
    RewardSet.from_config([{"name": "examples.my_rewards.consistency"}])


def test_the_example_config_scores_the_demo_batch_with_hand_worked_totals(in_repo_root, capsys):
    get("examples.my_rewards.brevity")
    report = sys.modules["examples.my_rewards"].main("configs/examples/custom_reward.yaml")
    assert report["rewards"] == ["accuracy", "semantic", "brevity", "consistency", "format"]
    # the reference answer itself: accuracy 7 dims, semantic 3 kinds, brevity 1 (3 words),
    # consistency 1 - |3 - mean(4, 2, 4, 4)| / 4 = 0.875; weights 1, 1, 0.5, 0.5; format has weight 0
    assert report["total"][0] == pytest.approx(7 + 3 + 0.5 * 1 + 0.5 * 0.875, abs=1e-4)
    assert report["total"][1] < report["total"][0]
    assert '"rewards/brevity/mean"' in capsys.readouterr().out
