"""Placement of the GRPO workers: the ``cluster:`` config -> Ray placement groups -> actor options.

Pure part (no Ray, unit-tested): ``plan_placement(cluster, counts)`` turns the config and the number
of workers per role into a ``PlacementPlan``: the pools (one placement group each: its bundles and
strategy) and, per role, which pool and bundle each worker goes into.

* ``placement: none``: no pools; every worker asks Ray for its own resources (the old behaviour).
* ``placement: colocate``: one ``shared`` pool; bundle k holds worker k of every shared role, so
  policy rank k and rollout worker k land on one node and, with ``gpus: 0.5`` each, on one GPU.
* ``placement: split``: one pool per role (``policy``, ``rollout``, ``reward``) with the role's own
  strategy: the policy STRICT_PACK on one node for ZeRO's collectives, the rollouts beside it, the
  reward/judge workers with their own GPUs.
* a role's ``pool: shared | own`` overrides the default (colocated policy and rollouts beside a judge
  pool of its own).

Ray part: ``create_placement(plan, timeout_s)`` creates the placement groups, waits until they are
placed (or fails, naming what was asked for and what the cluster has) and returns a ``Placement``
whose ``options(role, i)`` are the ``.options(...)`` of worker i of a role (its resources and
``PlacementGroupSchedulingStrategy``); ``remove()`` frees the groups.

Node loss: Ray reschedules the bundles of a lost node onto the nodes that remain (where the strategy
and free resources allow; never under STRICT_SPREAD with too few nodes) and restarts the actors in
them that have ``max_restarts``: the reward workers, whose batch the driver then retries. The policy
and rollout workers hold state (optimizer, adapter) and are not restarted; their recovery is
``--resume`` from the last checkpoint (docs/multinode.md).
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from grpo.config import ROLES, ClusterConfig, GRPOConfig

log = logging.getLogger(__name__)

SHARED = "shared"


@dataclass(frozen=True)
class Pool:
    """One placement group: its name in the plan (a role, or ``shared``), bundles and strategy."""

    name: str
    bundles: list[dict[str, float]]
    strategy: str


@dataclass(frozen=True)
class Slot:
    """Where one worker goes: a pool's bundle, or anywhere (``pool`` None, no placement group)."""

    pool: str | None = None
    bundle: int | None = None


@dataclass
class PlacementPlan:
    pools: list[Pool]
    slots: dict[str, list[Slot]]
    """Per role, one slot per worker."""
    demands: dict[str, dict[str, float]]
    """Per role, what one worker asks for (``CPU``, ``GPU``, custom resources; zeros left out)."""

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)


def worker_counts(cfg: GRPOConfig) -> dict[str, int]:
    """Workers per role, from the role sections (the one place the counts are configured)."""
    return {"policy": cfg.policy.num_workers, "rollout": cfg.rollout.num_workers, "reward": cfg.rewards.num_workers}


def worker_resources(cluster: ClusterConfig, role: str) -> dict[str, float]:
    """What one worker of ``role`` asks Ray for, in Ray's resource names, zeros left out."""
    pool = getattr(cluster, role)
    out = {"CPU": float(pool.cpus or 0), "GPU": float(pool.gpus or 0)}
    out.update({k: float(v) for k, v in pool.resources.items()})
    return {k: v for k, v in out.items() if v}


def _add(bundle: dict[str, float], demand: dict[str, float]) -> dict[str, float]:
    out = dict(bundle)
    for k, v in demand.items():
        out[k] = out.get(k, 0.0) + v
    return out


def plan_placement(cluster: ClusterConfig, counts: dict[str, int]) -> PlacementPlan:
    """The pools and every worker's slot for ``cluster`` and the worker ``counts`` per role."""
    demands = {role: worker_resources(cluster, role) for role in ROLES}
    slots: dict[str, list[Slot]] = {role: [Slot()] * counts[role] for role in ROLES}
    pools: list[Pool] = []
    if cluster.placement == "none":
        return PlacementPlan(pools, slots, demands)
    shared = [role for role in ROLES if cluster.pool_of(role) == "shared" and counts[role]]
    if shared:
        bundles: list[dict[str, float]] = [{} for _ in range(max(counts[r] for r in shared))]
        for role in shared:
            for k in range(counts[role]):
                bundles[k] = _add(bundles[k], demands[role])
                slots[role][k] = Slot(SHARED, k)
        empty = [k for k, b in enumerate(bundles) if not any(b.values())]
        if empty:
            raise ValueError(f"cluster: bundles {empty} of the shared pool ask for nothing (roles {', '.join(shared)} "
                             "need cpus, gpus or a custom resource per worker); Ray refuses empty bundles")
        pools.append(Pool(SHARED, bundles, cluster.strategy))
    for role in ROLES:
        if cluster.pool_of(role) != "own" or not counts[role]:
            continue
        strategy = getattr(cluster, role).strategy or cluster.strategy
        pools.append(Pool(role, [dict(demands[role]) for _ in range(counts[role])], strategy))
        slots[role] = [Slot(role, k) for k in range(counts[role])]
    return PlacementPlan(pools, slots, demands)


def _size(pool: Pool) -> tuple[float, float]:
    return (sum(b.get("GPU", 0.0) for b in pool.bundles), sum(b.get("CPU", 0.0) for b in pool.bundles))


def total_demand(plan: PlacementPlan) -> dict[str, float]:
    """Everything the plan's workers ask for together (what the cluster must have)."""
    out: dict[str, float] = {}
    for role, slots in plan.slots.items():
        for _ in slots:
            out = _add(out, plan.demands[role])
    return out


def actor_resources(demand: dict[str, float]) -> dict[str, Any]:
    """A demand as ``.options(num_cpus=, num_gpus=, resources=)`` (zeros explicit: an actor asks for
    nothing it was not given, not Ray's default CPU)."""
    custom = {k: v for k, v in demand.items() if k not in ("CPU", "GPU")}
    return {"num_cpus": demand.get("CPU", 0.0), "num_gpus": demand.get("GPU", 0.0), "resources": custom}


def describe(plan: PlacementPlan) -> str:
    """One line per pool, for logs and error messages."""
    if not plan.pools:
        return "no placement groups (placement: none)"
    lines = []
    for p in plan.pools:
        roles = [f"{r} x{sum(s.pool == p.name for s in ss)}" for r, ss in plan.slots.items()
                 if any(s.pool == p.name for s in ss)]
        same = all(b == p.bundles[0] for b in p.bundles)
        bundles = f"{len(p.bundles)} x {p.bundles[0]}" if same else str(p.bundles)
        lines.append(f"pool {p.name} ({', '.join(roles)}): {p.strategy} {bundles}")
    return "; ".join(lines)


# ------------------------------------------------------------------------------------------ Ray
@dataclass
class Placement:
    """The created placement groups and, per role, each worker's scheduling strategy (None: none)."""

    plan: PlacementPlan
    groups: dict[str, Any] = field(default_factory=dict)
    strategies: dict[str, list[Any]] = field(default_factory=dict)

    def options(self, role: str, index: int) -> dict[str, Any]:
        """``.options(...)`` of worker ``index`` of ``role``: its resources and its bundle."""
        out = actor_resources(self.plan.demands[role])
        strategy = self.strategies[role][index]
        if strategy is not None:
            out["scheduling_strategy"] = strategy
        return out

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception as exc:  # noqa: BLE001 - the cluster may be gone already
                log.debug("could not remove placement group: %s", exc)
        self.groups = {}


def create_placement(plan: PlacementPlan, timeout_s: float = 600.0, name: str = "sqrl") -> Placement:
    """Create the plan's placement groups, wait until all are placed, and return the scheduling
    strategy of every worker. Raises ``TimeoutError`` naming the demand and the cluster's resources."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    # Ray places pending groups one at a time in the order they were made: the biggest first, so a small
    # pool cannot take part of the node that a STRICT_PACK policy pool needs whole (first-fit decreasing).
    groups = {p.name: placement_group(p.bundles, strategy=p.strategy, name=f"{tag}-{p.name}")
              for p in sorted(plan.pools, key=_size, reverse=True)}
    placement = Placement(plan, groups)
    if groups:
        ready, _ = ray.wait([pg.ready() for pg in groups.values()], num_returns=len(groups), timeout=timeout_s)
        if len(ready) < len(groups):
            placement.remove()
            raise TimeoutError(
                f"placement groups not placed within {timeout_s:.0f} s: {describe(plan)}; the workers ask for "
                f"{total_demand(plan)} in all; the cluster has {ray.cluster_resources()} "
                f"({ray.available_resources()} free) on {sum(n['Alive'] for n in ray.nodes())} nodes")
    for role, slots in plan.slots.items():
        placement.strategies[role] = [
            None if s.pool is None
            else PlacementGroupSchedulingStrategy(groups[s.pool], placement_group_bundle_index=s.bundle)
            for s in slots]
    log.info("placement: %s", describe(plan))
    return placement


def _node_id(_actor: Any) -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def actor_nodes(actors: Sequence[Any], timeout_s: float | None = 60.0) -> list[str]:
    """The Ray node id each actor runs on (asked of the actor itself)."""
    import ray

    return ray.get([a.__ray_call__.remote(_node_id) for a in actors], timeout=timeout_s)
