"""The ``cluster:`` section and the pure placement plan (no Ray): bundles, strategies, slots, checks.

Placement on a real (two-node, one-machine) Ray cluster is tested in tests/grpo/test_multinode.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from grpo.config import ClusterSettings, GRPOConfig, PoolSettings
from grpo.placement import Slot, actor_resources, plan_placement, total_demand, worker_counts
from sqrl.config import ConfigError, from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
COUNTS = {"policy": 2, "rollout": 1, "reward": 3}


def test_placement_none_is_the_old_behaviour_from_the_flat_fields():
    cl = ClusterSettings(policy_gpus=1, rollout_cpus=2)
    plan = plan_placement(cl, COUNTS)
    assert plan.pools == []
    assert plan.slots == {"policy": [Slot()] * 2, "rollout": [Slot()], "reward": [Slot()] * 3}
    assert plan.demands == {"policy": {"GPU": 1.0}, "rollout": {"CPU": 2.0}, "reward": {}}
    assert actor_resources(plan.demands["reward"]) == {"num_cpus": 0.0, "num_gpus": 0.0, "resources": {}}


def test_split_gives_each_role_its_own_group_with_its_own_strategy():
    cl = ClusterSettings(placement="split", strategy="spread",
                         policy=PoolSettings(cpus=8, gpus=1, strategy="STRICT_PACK"),
                         rollout=PoolSettings(cpus=4, gpus=1),
                         reward=PoolSettings(cpus=2, gpus=0.5, resources={"judge_node": 0.1}))
    plan = plan_placement(cl, COUNTS)
    assert [(p.name, p.strategy, len(p.bundles)) for p in plan.pools] == [
        ("policy", "STRICT_PACK", 2), ("rollout", "SPREAD", 1), ("reward", "SPREAD", 3)]
    assert plan.pool("reward").bundles[0] == {"CPU": 2.0, "GPU": 0.5, "judge_node": 0.1}
    assert plan.slots["reward"] == [Slot("reward", 0), Slot("reward", 1), Slot("reward", 2)]
    assert actor_resources(plan.demands["reward"]) == {"num_cpus": 2.0, "num_gpus": 0.5,
                                                       "resources": {"judge_node": 0.1}}
    assert total_demand(plan) == {"CPU": 26.0, "GPU": 4.5, "judge_node": pytest.approx(0.3)}


def test_colocate_puts_worker_k_of_every_role_into_bundle_k():
    cl = ClusterSettings(placement="colocate", policy=PoolSettings(cpus=1, gpus=0.5),
                         rollout=PoolSettings(cpus=1, gpus=0.5), reward=PoolSettings(cpus=1))
    plan = plan_placement(cl, COUNTS)
    (shared,) = plan.pools
    assert (shared.name, shared.strategy) == ("shared", "PACK")
    assert shared.bundles == [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 0.5}, {"CPU": 1.0}]
    assert plan.slots["policy"] == [Slot("shared", 0), Slot("shared", 1)]
    assert plan.slots["rollout"] == [Slot("shared", 0)]
    assert plan.slots["reward"] == [Slot("shared", k) for k in range(3)]


def test_a_role_may_leave_the_shared_pool_for_its_own():
    cl = ClusterSettings(placement="colocate", policy=PoolSettings(gpus=0.5), rollout=PoolSettings(gpus=0.5),
                         reward=PoolSettings(cpus=4, gpus=1, pool="own", strategy="STRICT_PACK"))
    plan = plan_placement(cl, COUNTS)
    assert [(p.name, p.strategy) for p in plan.pools] == [("shared", "PACK"), ("reward", "STRICT_PACK")]
    assert plan.pool("shared").bundles == [{"GPU": 1.0}, {"GPU": 0.5}]
    assert plan.pool("reward").bundles == [{"CPU": 4.0, "GPU": 1.0}] * 3


def test_a_shared_pool_tolerates_a_role_that_asks_for_nothing_but_not_an_empty_bundle():
    cl = ClusterSettings(placement="colocate", policy=PoolSettings(gpus=1))
    plan = plan_placement(cl, {"policy": 2, "rollout": 1, "reward": 1})
    assert plan.pool("shared").bundles == [{"GPU": 1.0}, {"GPU": 1.0}]  # rollout and reward ride along in bundle 0
    with pytest.raises(ValueError, match=r"bundles \[2\] of the shared pool ask for nothing"):
        plan_placement(cl, {"policy": 2, "rollout": 1, "reward": 3})


@pytest.mark.parametrize("cluster, error", [
    ({"placement": "spread"}, "cluster.placement must be one of"),
    ({"strategy": "BEST"}, "cluster.strategy must be one of"),
    ({"placement": "split", "policy": {"cpus": 1, "strategy": "ANY"}}, "cluster.policy.strategy must be one of"),
    ({"placement": "split", "policy": {"pool": "mine"}}, "cluster.policy.pool must be one of"),
    ({"placement": "split", "policy": {"cpus": 1}, "rollout": {"cpus": 1}}, "cluster.reward: a worker in its own"),
    ({"placement": "colocate", "policy": {"cpus": 1, "strategy": "PACK"}}, "applies to an own pool"),
    ({"policy_cpus": 2, "policy": {"cpus": 4}}, "disagree"),
    ({"reward": {"gpus": -1}}, r"cluster\.reward\.gpus must be >= 0, got -1"),
    ({"reward": {"resources": {"judge_node": "x"}}}, "numbers >= 0"),
    ({"placement_timeout_s": 0}, "placement_timeout_s"),
])
def test_bad_cluster_sections_are_config_errors(cluster, error):
    with pytest.raises(ConfigError, match=error):
        from_dict(GRPOConfig, {"cluster": cluster})


def test_the_cluster_section_round_trips_through_a_saved_config(tmp_path):
    from sqrl.config import save_config

    cfg = from_dict(GRPOConfig, {"cluster": {"placement": "split", "policy_gpus": 1, "rollout": {"cpus": 2},
                                             "reward": {"cpus": 1, "strategy": "strict_spread"}}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(GRPOConfig, tmp_path / "c.yaml")
    assert again.cluster == cfg.cluster
    assert (again.cluster.policy.gpus, again.cluster.reward.strategy) == (1.0, "STRICT_SPREAD")


def _fits(plan, nodes: int, gpus_per_node: int) -> bool:
    """First fit of the plan's pools, biggest first (the order grpo.placement creates them), on identical
    GPU nodes; STRICT_PACK pools must fit one node. Only GPUs are counted."""
    free = [float(gpus_per_node)] * nodes
    for pool in sorted(plan.pools, key=lambda p: -sum(b.get("GPU", 0) for b in p.bundles)):
        need = [b.get("GPU", 0.0) for b in pool.bundles]
        if pool.strategy == "STRICT_PACK":
            node = next((i for i, f in enumerate(free) if f >= sum(need)), None)
            if node is None:
                return False
            free[node] -= sum(need)
            continue
        for g in need:
            node = next((i for i, f in enumerate(free) if f >= g), None)
            if node is None:
                return False
            free[node] -= g
    return True


@pytest.mark.parametrize("name", ["grpo_accsem_dimwise", "grpo_llmjudge_dimwise", "grpo_unified"])
def test_the_paper_configs_place_af3_on_two_nodes_of_eight_gpus(name):
    cfg = load_config(GRPOConfig, CONFIGS / "paper" / f"{name}.yaml")
    table2 = (cfg.rollout.group_size, cfg.train.batch_size, cfg.policy.lr, cfg.train.steps)
    assert table2 == (4, 4, 5e-6, 200)
    plan = plan_placement(cfg.cluster, worker_counts(cfg))
    assert cfg.cluster.placement == "split" and plan.pool("policy").strategy == "STRICT_PACK"
    assert plan.pool("policy").bundles == [{"CPU": 8.0, "GPU": 1.0}] * 8  # ZeRO-3 over one node
    judge = name != "grpo_accsem_dimwise"
    assert total_demand(plan)["GPU"] == (16 if judge else 12)
    assert plan.demands["reward"].get("GPU", 0) == (1.0 if judge else 0)
    if judge:
        assert all(e["params"]["judge"] == "qwen3_vllm_pool" for e in cfg.rewards.entries)
        assert cfg.rewards.num_workers == 4  # one judge engine per GPU of the pool
    assert _fits(plan, nodes=2, gpus_per_node=8)
    assert not _fits(plan, nodes=1, gpus_per_node=8)
