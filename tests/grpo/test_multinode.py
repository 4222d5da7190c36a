"""Placement groups and the GRPO loop on a two-node Ray cluster simulated on one machine.

``ray.cluster_utils.Cluster`` starts a head node (1 CPU and a custom resource ``trainer``, which
pins the stateful roles) and a ``spare`` node (2 CPUs) as separate raylets. The last test runs the
tiny GRPO job with its reward workers spread over both nodes, removes the spare node while one of
them is in the middle of a batch, and checks that the run still ends: Ray reschedules the lost
bundle on the head, restarts the reward worker there, and the driver retries the batch.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

from grpo.config import ClusterConfig, GRPOConfig, PoolConfig
from grpo.driver import Driver
from grpo.tracking import read_metrics
from grpo.placement import actor_nodes, create_placement, plan_placement
from sqrl.config import from_dict

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_slurm_script_starts_a_two_node_cluster_and_runs_the_job(grpo_cache, tiny_init, corpus, tmp_path):
    """launch/slurm_grpo.sbatch for real on this machine: stand-ins only for srun (runs its command here)
    and scontrol (two node names); the head and the worker are two raylets, the reward pool is pinned to
    the last node by its custom resource. About 60 s on 2 cores."""
    import re
    import socket
    import stat
    import subprocess
    import sys
    import tempfile

    from sqrl.config import save_config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", 'while [[ $# -gt 0 && $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done; exec "$@"'),
                       ("scontrol", "printf 'node-a\\nnode-b\\n'")):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("", 0))
            ports.append(sock.getsockname()[1])
    ray_tmp = tempfile.mkdtemp(prefix="sqrl-ray-", dir="/tmp")  # short: Ray puts unix sockets there
    cfg = from_dict(GRPOConfig, {
        "model": {"init": str(tiny_init)}, "lora": {"rank": 8},
        "data": {"train": str(corpus / "train.jsonl"), "synth": None},
        "rollout": {"group_size": 2, "max_new_tokens": 12},
        "rewards": {"entries": [{"name": "tests.grpo.rewards_for_tests.text_stats"}]},
        "train": {"steps": 2, "batch_size": 2, "save_every": 0},
        "cluster": {"placement": "split", "policy": {"cpus": 0.4}, "rollout": {"cpus": 0.4},
                    "reward": {"cpus": 0.5, "resources": {"judge_node": 1}}},
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    })
    save_config(cfg, tmp_path / "grpo.yaml")
    venv = Path(sys.executable).parent.parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[a-b]",
               SLURM_SUBMIT_DIR=str(REPO), SQRL_VENV=str(venv), RAY_PORT=str(ports[0]),
               RAY_DASHBOARD_PORT=str(ports[1]), RAY_TEMP_DIR=ray_tmp, RAY_NUM_CPUS="1", RAY_NUM_GPUS="0",
               RAY_RESOURCES_LAST='{"judge_node": 1}', SQRL_WAIT_S="120", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(["bash", str(REPO / "launch" / "slurm_grpo.sbatch"), str(tmp_path / "grpo.yaml"),
                               str(tmp_path / "run")], env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    finally:
        _stop_processes_under(ray_tmp)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "ray cluster at" in out and ": 2 nodes" in out
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    nodes = re.search(r"worker nodes: \{'policy': Counter\(\{'(\w+)': 1\}\), 'rollout': Counter\(\{'(\w+)': 1\}\), "
                      r"'reward': Counter\(\{'(\w+)': 1\}\)", out)
    assert nodes, out[-4000:]
    assert nodes.group(3) not in (nodes.group(1), nodes.group(2))  # the reward pool went to the last node


def _stop_processes_under(ray_tmp: str, wait_s: float = 60) -> None:
    """Wait for the Ray processes of the session in ``ray_tmp`` to drain (SIGTERM from the script's
    trap); terminate, one by one, those still there. Only processes naming ``ray_tmp`` are touched."""
    import signal

    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and ray_tmp in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    deadline = time.time() + wait_s
    while ours() and time.time() < deadline:
        time.sleep(1)
    for pid in ours():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


@pytest.fixture(scope="module")
def two_nodes(grpo_cache, tiny_init, corpus):
    """(cluster, head node, spare node), the driver connected to the head; workers run from the repo."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    cwd = os.getcwd()
    os.chdir(REPO)  # workers import the test rewards by dotted path from the working directory
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"trainer": 1},
                                                            "include_dashboard": False})
    try:
        spare = cluster.add_node(num_cpus=2)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, cluster.head_node, spare
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.chdir(cwd)


def probes(placement, role: str, n: int) -> list:
    @ray.remote
    class Probe:
        pass

    return [Probe.options(**placement.options(role, i)).remote() for i in range(n)]


def test_strict_spread_puts_each_worker_of_a_pool_on_its_own_node(two_nodes):
    _, head, spare = two_nodes
    cl = ClusterConfig(placement="split", policy=PoolConfig(cpus=0.1), rollout=PoolConfig(cpus=0.1),
                         reward=PoolConfig(cpus=0.1, strategy="STRICT_SPREAD"))
    placement = create_placement(plan_placement(cl, {"policy": 1, "rollout": 1, "reward": 2}), timeout_s=30)
    try:
        nodes = actor_nodes(probes(placement, "reward", 2))
        assert sorted(nodes) == sorted([head.node_id, spare.node_id])
    finally:
        placement.remove()


def test_colocated_policy_and_rollout_workers_share_their_bundles_node(two_nodes):
    _, head, spare = two_nodes
    cl = ClusterConfig(placement="colocate", strategy="STRICT_SPREAD", policy=PoolConfig(cpus=0.1),
                         rollout=PoolConfig(cpus=0.1), reward=PoolConfig(cpus=0.1, pool="own"))
    plan = plan_placement(cl, {"policy": 2, "rollout": 2, "reward": 1})
    placement = create_placement(plan, timeout_s=30)
    try:
        policy, rollout = actor_nodes(probes(placement, "policy", 2)), actor_nodes(probes(placement, "rollout", 2))
        assert policy == rollout  # rank k and rollout worker k in bundle k
        assert sorted(policy) == sorted([head.node_id, spare.node_id])  # the bundles on distinct nodes
    finally:
        placement.remove()


def test_a_placement_the_cluster_cannot_hold_fails_and_names_the_demand(two_nodes):
    from ray.util.placement_group import placement_group_table

    cl = ClusterConfig(placement="split", policy=PoolConfig(gpus=1), rollout=PoolConfig(cpus=0.1),
                         reward=PoolConfig(cpus=0.1))
    before = {k for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
    with pytest.raises(TimeoutError, match=r"'GPU': 1\.0.*the cluster has"):
        create_placement(plan_placement(cl, {"policy": 1, "rollout": 1, "reward": 1}), timeout_s=2)
    time.sleep(0.5)
    assert {k for k, v in placement_group_table().items() if v["state"] != "REMOVED"} == before  # nothing left held


@pytest.mark.e2e
def test_a_run_spans_both_nodes_and_survives_losing_one_mid_step(two_nodes, tiny_init, corpus, tmp_path):
    cluster, head, spare = two_nodes
    where_log = tmp_path / "where.jsonl"
    held = Path(f"{where_log}.held")
    trainer = {"cpus": 0.25, "resources": {"trainer": 0.25}}  # the stateful roles stay on the head
    cfg = from_dict(GRPOConfig, {
        "model": {"init": str(tiny_init)},
        "lora": {"rank": 8},
        "data": {"train": str(corpus / "train.jsonl"), "synth": None},
        "rollout": {"group_size": 4, "max_new_tokens": 12},
        "policy": {"lr": 2e-3, "micro_batch_size": 8},
        "rewards": {"num_workers": 2, "entries": [
            {"name": "tests.grpo.rewards_for_tests.text_stats"},
            {"name": "tests.grpo.rewards_for_multinode.where", "weight": 0.0,
             "params": {"log": str(where_log), "hold_node": spare.node_id, "hold_call": 2}}]},
        "train": {"steps": 3, "batch_size": 2, "save_every": 0, "seed": 3},
        "cluster": {"placement": "split", "policy": trainer, "rollout": trainer,
                    "reward": {"cpus": 0.25, "strategy": "SPREAD"}},  # one reward worker per node
        "logging": {"progress": False, "tensorboard": False, "plot": False},
    })
    driver = Driver(cfg, tmp_path / "run")
    removed_at: list[float] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def remove_spare_when_held():
        try:
            while not held.exists():
                if done.wait(0.05):
                    return
            removed_at.append(time.time())
            cluster.remove_node(spare)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    watcher = threading.Thread(target=remove_spare_when_held, daemon=True)
    watcher.start()
    try:
        run_dir = driver.run()
    finally:
        done.set()
        watcher.join(timeout=60)
    assert not errors, errors

    # Placed across the nodes: policy and rollout on the head (custom resource), reward workers one per node.
    nodes = driver.worker_nodes
    assert nodes["policy"] == [head.node_id] and nodes["rollout"] == [head.node_id]
    assert sorted(nodes["reward"]) == sorted([head.node_id, spare.node_id])

    # The spare node went away while its reward worker held step 2's batch ...
    assert removed_at, "the reward worker on the spare node never reached its second call"
    assert json.loads(held.read_text())["node"] == spare.node_id
    calls = [json.loads(line) for line in where_log.read_text().splitlines()]
    before = [c for c in calls if c["t"] < removed_at[0]]
    after = [c for c in calls if c["t"] > removed_at[0]]
    assert {c["node"] for c in before} == {head.node_id, spare.node_id}
    # ... and every batch after that, the retried one included, was scored on the head, by a new process.
    assert after and {c["node"] for c in after} == {head.node_id}
    spare_pids = {c["pid"] for c in before if c["node"] == spare.node_id}
    head_pids_before = {c["pid"] for c in before if c["node"] == head.node_id}
    assert {c["pid"] for c in after} - head_pids_before - spare_pids, "no reward worker was restarted"

    # The run went on to its last step; the lost batch was counted and retried, not scored as errors.
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["reward_worker_restarts"] for r in rows] == [0, 1, 1]
    assert all(r["rewards/where/errors"] == 0 and r["rewards/text_stats/errors"] == 0 for r in rows)
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (run_dir / "adapter_model.safetensors").exists()  # the final policy was written
