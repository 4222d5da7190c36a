"""The GRPO loop end to end on one Ray cluster (shared by this module): logs, restarts, sync, resume.

Every run starts from an untrained tiny model, so the test rewards (tests/grpo/rewards_for_tests.py)
give the groups something to rank.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grpo.config import GRPOConfig
from grpo.driver import Driver
from grpo.tracking import read_metrics
from sqrl.config import apply_overrides, from_dict, save_config
from tests.grpo.crash import kill_after_checkpoint

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]
TEST_REWARDS = "tests.grpo.rewards_for_tests"
G = 4


@pytest.fixture(scope="module")
def cluster(grpo_cache, tiny_init, corpus):
    """One local Ray cluster for the module; workers inherit SQRL_CACHE and run from the repository."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    cwd = os.getcwd()
    os.chdir(REPO)  # workers import the test rewards by dotted path from the working directory
    info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield info.address_info["address"]
    ray.shutdown()
    os.chdir(cwd)


def make_config(tiny_init, corpus, *overrides: str) -> GRPOConfig:
    base = {
        "model": {"init": str(tiny_init)},
        "lora": {"rank": 8},
        "data": {"train": str(corpus / "train.jsonl"), "synth": None},
        "rollout": {"group_size": G, "max_new_tokens": 12},
        "policy": {"lr": 2e-3, "micro_batch_size": 8},
        "train": {"steps": 3, "batch_size": 2, "save_every": 2, "seed": 3},
        "logging": {"progress": False},
    }
    return from_dict(GRPOConfig, apply_overrides(base, list(overrides)))


@pytest.fixture(scope="module")
def main_run(cluster, tiny_init, corpus, tmp_path_factory):
    """3 steps; the training reward is flat on chosen clips and `zero_variance: skip`; a weight-0 reward
    kills its worker on the first batch; the rollout/policy log-probs are compared after every sync."""
    tmp = tmp_path_factory.mktemp("main_run")
    entries = (f"[{{name: {TEST_REWARDS}.text_stats, params: {{flat_every: 2}}}}, {{name: accuracy, weight: 0}}, "
               f"{{name: {TEST_REWARDS}.crash_once, weight: 0, params: {{marker: '{tmp / 'crashed'}'}}}}]")
    cfg = make_config(tiny_init, corpus, f"rewards.entries={entries}", "algorithm.zero_variance=skip",
                      "train.check_sync_every=1")
    run_dir = Driver(cfg, tmp / "run").run()
    return run_dir, read_metrics(run_dir / "metrics.jsonl"), tmp


def test_every_reward_component_per_dimension_is_logged(main_run):
    _, rows, _ = main_run
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("rewards/text_stats/vowels/mean", "rewards/text_stats/spaces/mean", "rewards/accuracy/noise/mean",
                    "rewards/accuracy/overall/mean", "rewards/total/mean", "zero_variance/fraction",
                    "completion/mean_length", "time/generate", "time/score", "time/update", "time/sync",
                    "tokens_per_s/generate", "update/skipped"):
            assert key in row, key
    for row in rows:  # the workers' own seconds fit inside the driver's phases; the rest is overhead
        work = 0.0
        for phase in ("generate", "score", "update", "sync"):
            assert 0 <= row[f"time/{phase}_worker"] <= row[f"time/{phase}"] + 1e-3, phase
            work += row[f"time/{phase}_worker"]
        assert row["time/generate_worker"] > 0 and row["time/score_worker"] > 0
        loop = row["time/step"] - row["time/check_sync"]  # the sync check (every step here) is left out
        assert row["time/overhead"] == pytest.approx(loop - work)
        assert 0 <= row["time/overhead_fraction"] <= 1
        assert row["time/overhead_fraction"] == pytest.approx(row["time/overhead"] / loop)
    updated = [r for r in rows if not r["update/skipped"]]
    assert updated
    for row in updated:  # a step whose groups were all flat (and skipped) has no update to report
        for key in ("loss", "kl", "clip_ratio/region_mean", "grad_norm", "tokens_per_s/update"):
            assert key in row, key


def test_every_completion_is_logged_with_its_rewards_and_advantage(main_run):
    run_dir, rows, _ = main_run
    samples = read_metrics(run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [step for step in (1, 2, 3) for _ in range(2 * G)]
    for step, row in zip((1, 2, 3), rows):
        mine = [s for s in samples if s["step"] == step]
        # the logged totals are the step's rewards, and each group's advantages are centred on its mean
        assert sum(s["reward"] for s in mine) / len(mine) == pytest.approx(row["rewards/total/mean"])
        for clip in {s["clip"] for s in mine}:
            group = [s for s in mine if s["clip"] == clip]
            assert sorted(s["index"] for s in group) == list(range(G))
            assert sum(s["advantage"] for s in group) == pytest.approx(0.0, abs=1e-5)
        for s in mine:
            assert s["text"] and set(s["reference"]) >= {"noise", "overall"}
            assert set(s["rewards"]) == {"text_stats", "accuracy", "crash_once"}
            assert {"accuracy/noise", "text_stats/vowels"} <= set(s["components"])
            assert s["reward"] == pytest.approx(s["rewards"]["text_stats"])  # the weight-0 rewards add nothing


def test_a_killed_reward_worker_is_restarted_and_its_batch_retried(main_run):
    _, rows, tmp = main_run
    assert (tmp / "crashed").exists()
    assert rows[-1]["reward_worker_restarts"] == 1
    assert all(r["rewards/crash_once/errors"] == 0 for r in rows)  # the retried batch was scored


def test_rollout_logprobs_equal_the_policys_after_every_sync(main_run):
    _, rows, _ = main_run
    assert all(r["sync/max_abs_logprob_diff"] < 1e-4 for r in rows)
    assert max(r.get("kl", 0) for r in rows) > 0  # the policy moved away from the reference


def test_flat_groups_are_counted_and_skipped_groups_leave_the_loss(main_run):
    _, rows, _ = main_run
    assert any(0 < r["zero_variance/fraction"] < 1 for r in rows)
    for r in rows:
        kept_groups = round(2 * (1 - r["zero_variance/fraction"]))
        assert r["zero_variance/skipped_groups"] == 2 - kept_groups
        assert r.get("update/trained_sequences", 0) == G * kept_groups


def test_the_run_directory_holds_the_policy_checkpoints_and_the_reward_curve(main_run, tiny_init):
    import yaml

    from sqrl.models import load_model, read_meta

    run_dir, _, _ = main_run
    assert (run_dir / "plots" / "reward_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert any((run_dir / "tensorboard").iterdir())
    meta = read_meta(run_dir)
    assert (meta.kind, meta.stage, Path(meta.base)) == ("adapter", "grpo", tiny_init.resolve())
    from peft import PeftModel

    model, _, _ = load_model(run_dir)  # what `sqrl eval --model DIR` loads
    assert isinstance(model, PeftModel)
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)  # trained, not fresh
    saved = yaml.safe_load((run_dir / "sqrl_config.yaml").read_text())
    assert saved["data"]["prompting"] == "long_form"  # `sqrl eval` prompts the policy as it was trained


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch caps its threads at the core count")
def test_cluster_torch_threads_sets_the_workers_thread_count(cluster, tiny_init, corpus, tmp_path, monkeypatch):
    """Ray gives an actor without CPUs one OpenMP thread unless the driver's environment says otherwise; on
    2 cores that halved the small GRPO step in `sqrl pipeline` (docs/small.md). The driver's environment says 1
    here, so 2 can only come from the config."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    driver = Driver(make_config(tiny_init, corpus, "cluster.torch_threads=2"), tmp_path / "run")
    try:
        driver.start()
        assert driver.worker_info["threads"] == 2
    finally:
        driver.close()


def test_an_existing_run_is_not_overwritten_without_resume(main_run, tiny_init, corpus):
    run_dir, _, _ = main_run
    with pytest.raises(FileExistsError, match="--resume"):
        Driver(make_config(tiny_init, corpus), run_dir).start()


def test_a_reward_that_always_raises_stops_the_run_naming_its_error(cluster, tiny_init, corpus, tmp_path):
    from grpo.reward_watch import RewardFailedError

    cfg = make_config(tiny_init, corpus, "train.steps=6", "rewards.max_failed_steps=2", "logging.tensorboard=false",
                      f"rewards.entries=[{{name: {TEST_REWARDS}.always_fails}}, {{name: accuracy, weight: 0}}]")
    with pytest.raises(RewardFailedError, match=r"reward 'always_fails' failed on the whole batch in 2 consecutive "
                                                r"steps \(1-2; rewards.max_failed_steps=2\): TypeError: unsupported"):
        Driver(cfg, tmp_path / "run").run()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]  # step 2 stopped before its update and its log line
    assert rows[0]["rewards/always_fails/errors"] == 2 * G and rows[0]["rewards/total/skipped"] == 2 * G
    from sqrl.models import META_FILE

    assert not (tmp_path / "run" / META_FILE).exists()  # no "trained" policy is written


def test_overwrite_removes_the_old_run_first_and_excludes_resume(main_run, tiny_init, corpus, tmp_path):
    import shutil

    run_dir, _, _ = main_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with pytest.raises(ValueError, match="one of them"):
        Driver(make_config(tiny_init, corpus), copy, resume=True, overwrite=True).start()
    Driver(make_config(tiny_init, corpus), copy, overwrite=True)._check_run_dir()
    assert not copy.exists() and list(tmp_path.iterdir()) == []


def test_each_checkpoint_is_written_with_a_manifest_of_its_files(main_run):
    from sqrl.integrity import MANIFEST, verify_manifest

    run_dir, _, _ = main_run
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        listed = json.loads((ckpt / MANIFEST).read_text())["files"]
        assert any(name.endswith("mp_rank_00_model_states.pt") for name in listed)
        assert "trainer_state.json" in listed and "rng.safetensors" in listed
        assert verify_manifest(ckpt) == len(listed)


@pytest.mark.parametrize("tamper", ["plant a pickle", "flip one byte"])
def test_resume_refuses_a_tampered_checkpoint_before_any_worker_loads_it(main_run, tiny_init, corpus, tmp_path,
                                                                         tamper, plant_pickle):
    import shutil

    from grpo.checkpoint import latest
    from sqrl.integrity import IntegrityError

    run_dir, _, _ = main_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (states,) = latest(copy).glob("policy/engine/*/mp_rank_00_model_states.pt")
    marker = tmp_path / "ran"
    if tamper == "plant a pickle":
        plant_pickle(states, marker)
    else:
        data = bytearray(states.read_bytes())
        data[len(data) // 2] ^= 1
        states.write_bytes(bytes(data))
    driver = Driver(make_config(tiny_init, corpus), copy, resume=True)
    try:
        with pytest.raises(IntegrityError, match=str(states)):
            driver.start()
        assert driver.policy == [] and not marker.exists()
    finally:
        driver.close()


@pytest.mark.e2e
def test_resume_after_kill_9_reproduces_the_uninterrupted_run(cluster, tiny_init, corpus, tmp_path):
    steps = 4
    cfg = make_config(tiny_init, corpus, f"train.steps={steps}", "train.save_every=1", "train.keep_checkpoints=10",
                      "algorithm.zero_variance=resample", "algorithm.max_resample=1", "logging.tensorboard=false",
                      f"rewards.entries=[{{name: {TEST_REWARDS}.text_stats, params: {{flat_every: 2}}}}]")
    reference = read_metrics(Driver(cfg, tmp_path / "reference").run() / "metrics.jsonl")
    assert any(r["zero_variance/resampled"] > 0 for r in reference)  # resampling (and its data draws) is exercised

    config = tmp_path / "grpo.yaml"
    save_config(cfg, config)
    killed = tmp_path / "killed"
    kill_after_checkpoint(config, killed, cluster, step=2, timeout_s=240)
    from grpo.checkpoint import latest

    resumed_from = int(latest(killed).name.split("-")[1])
    logged_before_kill = len(read_metrics(killed / "metrics.jsonl"))
    print(f"killed after step {logged_before_kill} was logged; resuming from checkpoint {resumed_from}")
    assert resumed_from < steps, "the kill came too late to test anything"
    Driver(cfg, killed, resume=True).run()
    resumed = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    texts = [(s["step"], s["text"]) for s in read_metrics(killed / "samples.jsonl")]
    assert texts == [(s["step"], s["text"]) for s in read_metrics(tmp_path / "reference" / "samples.jsonl")]
    for ref, got in zip(reference[resumed_from:], resumed[resumed_from:]):
        assert got["completion/mean_length"] == ref["completion/mean_length"]
        for key in ("rewards/total/mean", "loss", "kl", "grad_norm", "zero_variance/resampled"):
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), (got["step"], key)


def test_score_credit_trains_each_digit_on_its_own_dimension(cluster, tiny_init, corpus, tmp_path, monkeypatch):
    """`algorithm.credit: scores`: the policy receives one advantage per token, the accuracy components' on the
    score digits and the other rewards' everywhere else; without a score reward it is refused before any worker."""
    import grpo.driver as driver_module

    seen = []
    original = driver_module.train_samples

    def spy(*args, **kwargs):
        samples = original(*args, **kwargs)
        seen.append(samples)
        return samples

    monkeypatch.setattr(driver_module, "train_samples", spy)
    entries = f"[{{name: accuracy}}, {{name: {TEST_REWARDS}.text_stats}}]"
    cfg = make_config(tiny_init, corpus, f"rewards.entries={entries}", "algorithm.credit=scores", "train.steps=1")
    Driver(cfg, tmp_path / "run").run()
    samples = seen[0]
    assert samples and all(len(s.token_advantages) == len(s.token_ids) for s in samples)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["update/trained_sequences"] == len(samples)
    logged = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(isinstance(row["digit_advantages"], dict) for row in logged)
    with pytest.raises(ValueError, match="credit: scores"):
        Driver(make_config(tiny_init, corpus, f"rewards.entries=[{{name: {TEST_REWARDS}.text_stats}}]",
                           "algorithm.credit=scores"), tmp_path / "refused").run()


def test_the_loop_raises_a_reward_the_policy_can_learn(cluster, tiny_init, corpus, tmp_path):
    """The whole loop (rollouts, rewards, advantages, update, sync) climbs. On the untrained model the share of
    vowels and spaces is a function of the token the policy can only learn among tokens it samples often; at 0.3
    its samples keep to a few dozen tokens a position, and the last steps' reward must beat the first step's (measured:
    0.415, then 0.489 from step 3 on, when the groups have converged on one answer)."""
    entries = f"[{{name: {TEST_REWARDS}.text_stats}}]"
    cfg = make_config(tiny_init, corpus, f"rewards.entries={entries}", "train.steps=6", "train.save_every=0",
                      "algorithm.beta=0.0", "rollout.temperature=0.3")
    rows = read_metrics(Driver(cfg, tmp_path / "run").run() / "metrics.jsonl")
    curve = [r["rewards/total/mean"] for r in rows]
    print("reward by step", [round(x, 3) for x in curve])
    assert sum(curve[-3:]) / 3 > curve[0] + 0.03, curve
