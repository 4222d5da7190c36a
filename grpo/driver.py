"""The single-controller GRPO loop on Ray (paper section 3.2).

One process (this driver) holds the data cursor and calls the workers; each role is its own file:
``rollout_worker.py`` samples G completions per clip, ``reward_worker.py`` scores them,
``algorithm.py`` turns rewards into advantages, ``policy_worker.py`` updates the policy in a
DeepSpeed ZeRO engine, and the new adapter (and trained encoder) goes back to the rollout workers.
A step reads as ``Driver.step``::

    batch = data.take(B); rollouts = generate(batch); scores = score(rollouts)
    [resample flat groups]; adv = compute_advantages(scores); stats = update(rollouts, adv)
    sync_weights(); log(); maybe_checkpoint()

Worker calls are plain ``ray.get([w.method.remote(x) for w, x in ...])`` over lists; audio travels as
paths and weights as one object ref shared by every rollout worker.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from grpo import checkpoint
from grpo.algorithm import LossSettings, flat_groups, group_advantages
from grpo.batch import ClipRequest, Completion, TrainSample
from grpo.config import GRPOConfig
from grpo.logging import RunLogger, plot_reward_curve
from grpo.placement import actor_nodes, create_placement, plan_placement, worker_counts
from grpo.policy_worker import PolicyWorker, plan_update
from grpo.reward_watch import RewardWatch
from grpo.reward_worker import RewardWorker, merge_scored, split_groups
from grpo.rollout_worker import SamplingParams, rollout_worker_class
from grpo.worker_env import collect_secrets, secret_names, worker_env
from rewards import RewardSet, ScoredBatch, summarize
from sqrl.config import save_config
from sqrl.models import ModelMeta, read_meta, write_meta
from sqrl.prompts import Rubric
from sqrl.rundir import prepare_out
from sqrl.schema import Record, read_manifest

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- data
BALANCES = ("none", "labels")


def label_balance_weights(records: Sequence[Record], cap: float = 10.0, rounds: int = 30) -> np.ndarray:
    """Sampling probabilities that flatten every dimension's label distribution at once.

    Raking (iterative proportional fitting): for each dimension in turn, scale the weights of the clips
    with each label so the labels share the mass equally; repeat ``rounds`` times. No clip may weigh
    more than ``cap`` times the uniform weight, which keeps the effective number of clips large: the
    dimensions are correlated (a noisy clip is also a low-MOS clip), and uncapped raking on the tiny
    corpus put all the mass on 24 clips. With cap 10 it keeps ~275 of 1,700 effective clips and the largest class of
    noise falls from 60% to 41% (overall's from 26% to 21%). Clips without a label for a dimension
    are left alone in that dimension's round.
    """
    n = len(records)
    w = np.full(n, 1.0 / n)
    dims = sorted({d for r in records for d, v in (r.scores or {}).items() if v is not None})
    labels = {d: np.array([(r.scores or {}).get(d) for r in records], dtype=object) for d in dims}
    for _ in range(rounds):
        for d in dims:
            lab = labels[d]
            present = [v for v in set(lab.tolist()) if v is not None]
            known = lab != None  # noqa: E711 (elementwise on an object array)
            share = w[known].sum() / len(present)
            for v in present:
                m = lab == v
                w[m] *= share / w[m].sum()
            w = _capped(w / w.sum(), cap / n)
    return w


def _capped(w: np.ndarray, limit: float) -> np.ndarray:
    """``w`` (summing to 1) with no entry above ``limit``: the excess goes to the others in proportion."""
    w = w.copy()
    if limit * len(w) <= 1:
        return np.full(len(w), 1.0 / len(w))
    while (w > limit + 1e-15).any():
        over = w >= limit
        w[over] = limit
        free = 1.0 - limit * over.sum()
        w[~over] *= free / w[~over].sum()
    return w


class ClipStream:
    """Clips in a fresh seeded order per epoch; its state is (epoch, position).

    ``balance="none"``: a permutation (every clip once per epoch). ``balance="labels"``: an epoch of
    ``len(records)`` draws with replacement under ``label_balance_weights``, so rare scores come up
    about as often as common ones. On a
    corpus where 60% of clips are "no noise" (5/5), exact-match rewards otherwise pay a policy that
    always answers 5, and GRPO collapses onto it (tiny accsem run: noise/distortion/naturalness
    predictions became constant, mean PCC 0.37 -> 0.27).
    """

    def __init__(self, records: Sequence[Record], seed: int, balance: str = "none"):
        if not records:
            raise ValueError("no training clips")
        if balance not in BALANCES:
            raise ValueError(f"data.balance must be one of {', '.join(BALANCES)}, not {balance!r}")
        self.records, self.seed, self.balance = list(records), seed, balance
        self.weights = label_balance_weights(self.records) if balance == "labels" else None
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            return rng.permutation(len(self.records))
        return rng.choice(len(self.records), size=len(self.records), replace=True, p=self.weights)

    def take(self, k: int) -> list[Record]:
        out = []
        for _ in range(k):
            if self.pos == len(self.records):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.records[self._order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


@dataclass
class Group:
    """One clip and its G completions."""

    record: Record
    completions: list[Completion]


def sampling_seed(seed: int, step: int, attempt: int, worker: int) -> int:
    """The rollout seed of one call: a function of the run seed and the call, never of history."""
    return int(np.random.SeedSequence([seed, step, attempt, worker]).generate_state(1)[0])


PHASES = ("generate", "score", "update", "sync")
"""A step's phases; each is timed in the driver (``time/<phase>``, wall time around the Ray calls) and in
its workers (``time/<phase>_worker``, the slowest worker's own seconds per call, summed over the phase's calls)."""


class Timer:
    def __init__(self):
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- driver
class Driver:
    """Runs ``cfg`` into ``run_dir``: metrics.jsonl, tensorboard/, checkpoints/, plots/ and, at the end,
    the policy as an sqrl model directory (an adapter over ``model.init``) that ``sqrl eval`` loads."""

    def __init__(self, cfg: GRPOConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False):
        self.cfg, self.run_dir, self.resume, self.overwrite = cfg, Path(run_dir), resume, overwrite
        self.G = cfg.rollout.group_size
        self.step_done = 0
        self.counters: Counter[str] = Counter()
        self.reward_watch = RewardWatch(cfg.rewards.max_failed_steps)
        self._owns_ray = False
        self.policy: list[Any] = []
        self.rollout: list[Any] = []
        self.reward: list[Any] = []

    # ---------------------------------------------------------------- the loop
    def run(self) -> Path:
        """Train ``train.steps`` steps (from the last checkpoint with ``resume``); returns ``run_dir``."""
        self.start()
        try:
            for step in range(self.step_done + 1, self.cfg.train.steps + 1):
                self.step(step)
            self.finish()
        finally:
            self.close()
        return self.run_dir

    def step(self, step: int) -> dict[str, Any]:
        timer = Timer()
        self._step_resampled, self._worker = 0, Counter()
        with timer("step"):
            batch = self.data.take(self.cfg.train.batch_size)
            with timer("generate"):
                groups = self.generate(batch, step)
            with timer("score"):
                scores = self.score(groups)
            self.reward_watch.observe(scores, step)  # a reward failing every call stops the run
            if self.cfg.algorithm.zero_variance == "resample":
                groups, scores = self.resample_flat_groups(groups, scores, step, timer)
            adv, flat = self.compute_advantages(scores)
            samples = self.select_samples(groups, adv, flat)
            with timer("update"):
                stats = self.update(samples)
            updated = bool(stats)
            with timer("sync"):
                self.sync_weights(step, updated=updated)
            if self.cfg.train.check_sync_every and step % self.cfg.train.check_sync_every == 0:
                with timer("check_sync"):
                    stats["sync/max_abs_logprob_diff"] = self.check_sync(groups[0].completions[:2])
        metrics = self.metrics(groups, scores, flat, stats, updated, timer)
        self.logger.log(step, metrics)
        self.maybe_checkpoint(step)
        return metrics

    # ---------------------------------------------------------------- roles
    def generate(self, batch: Sequence[Record], step: int, attempt: int = 0) -> list[Group]:
        """G completions for each clip, the clips split over the rollout workers; unreadable clips dropped."""
        prompt = self.prompt
        parts = split_groups(len(batch), len(self.rollout))
        results = self.ray.get([w.generate.remote([ClipRequest(r.id, r.audio, prompt) for r in batch[p.start:p.stop]],
                                                  self.G, self.sampling, sampling_seed(self.cfg.train.seed, step, attempt, i))
                                for i, (w, p) in enumerate(zip(self.rollout, parts))])
        self._worker["generate"] += max(r.seconds for r in results)
        groups = []
        for res, part in zip(results, parts):  # by position: a batch may hold a clip twice (an epoch boundary)
            completions = iter(res.completions)
            for record in batch[part.start:part.stop]:
                if record.id in res.failed:
                    self.counters["unreadable_clips"] += 1
                    log.warning("clip %s dropped from step %d: %s", record.id, step, res.failed[record.id])
                    continue
                groups.append(Group(record, [next(completions) for _ in range(self.G)]))
        if not groups:
            raise RuntimeError(f"step {step}: no clip of the batch could be read")
        return groups

    def score(self, groups: Sequence[Group]) -> ScoredBatch:
        """Rewards for every completion; whole groups per reward worker; a dead worker's part is retried."""
        parts = split_groups(len(groups), len(self.reward))

        def call(worker: int, part: range):
            gs = [groups[i] for i in part]
            cs = [c for g in gs for c in g.completions]
            refs = [g.record for g in gs for _ in g.completions]
            return lambda: self.reward[worker].score.remote([c.text for c in cs], refs, [c.prompt for c in cs],
                                                          [c.audio for c in cs])

        results = self.get_with_retry([call(i, p) for i, p in enumerate(parts)])
        self._worker["score"] += max(r.seconds for r in results)  # a retried call: its last attempt only
        merged = merge_scored(results)
        self.counters["reward_errors"] += sum(merged.errors.values())
        return merged

    def get_with_retry(self, calls: Sequence[Any]) -> list[Any]:
        """``ray.get`` of every call; a call whose reward worker died (Ray restarts it) is sent again,
        up to ``rewards.max_retries`` times each, and counted in ``reward_worker_restarts``.

        One death counts once: after a failure, a resent call that finds the worker still restarting
        (``ActorUnavailableError``) is sent again after a back-off (0.5 s doubling to 5 s) without counting a
        new restart or using a retry, for up to ``rewards.restart_wait_s`` seconds. A further
        ``ActorDiedError`` (the restarted worker died too) counts as another restart."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        refs = [c() for c in calls]
        results: list[Any] = [None] * len(calls)
        tries = [0] * len(calls)
        waiting_since: list[float | None] = [None] * len(calls)  # set while a call waits for its worker
        resent = [0] * len(calls)  # resends to a worker still restarting, for the back-off
        pending = list(range(len(calls)))
        while pending:
            self.ray.wait([refs[i] for i in pending], num_returns=len(pending))
            resend, wait_then_resend, backoff = [], [], 0.0
            for i in pending:
                try:
                    results[i] = self.ray.get(refs[i])
                except RayActorError as exc:
                    now = time.monotonic()
                    if waiting_since[i] is not None and isinstance(exc, ActorUnavailableError):
                        waited = now - waiting_since[i]
                        if waited > self.cfg.rewards.restart_wait_s:
                            raise RuntimeError(f"reward worker {i} was unavailable for {waited:.0f} s after dying "
                                               f"(rewards.restart_wait_s={self.cfg.rewards.restart_wait_s})") from exc
                        backoff = max(backoff, min(0.5 * 2 ** resent[i], 5.0))
                        resent[i] += 1
                        log.info("reward worker %d is still restarting (%.1f s); resending its batch", i, waited)
                        wait_then_resend.append(i)
                    else:
                        tries[i] += 1
                        self.counters["reward_worker_restarts"] += 1
                        if tries[i] > self.cfg.rewards.max_retries:
                            raise RuntimeError(f"reward worker {i} died {tries[i]} times on one batch (or Ray "
                                               f"gave up restarting it: rewards.max_restarts)") from exc
                        log.warning("reward worker %d died (%s); retrying its batch (%d/%d)", i,
                                    type(exc).__name__, tries[i], self.cfg.rewards.max_retries)
                        waiting_since[i], resent[i] = now, 0
                        resend.append(i)
            for i in resend:  # a death: sent again at once (Ray holds it until the worker is up, or refuses)
                refs[i] = calls[i]()
            if backoff:
                time.sleep(backoff)
            for i in wait_then_resend:
                refs[i] = calls[i]()
            pending = resend + wait_then_resend
        return results

    def resample_flat_groups(self, groups: list[Group], scores: ScoredBatch, step: int,
                             timer: Timer) -> tuple[list[Group], ScoredBatch]:
        """Replace groups whose rewards are all equal with fresh clips, up to ``max_resample`` rounds."""
        slices = [slice_scored(scores, i * self.G, (i + 1) * self.G) for i in range(len(groups))]
        for attempt in range(1, self.cfg.algorithm.max_resample + 1):
            flat = [i for i, f in enumerate(flat_groups(_totals(scores), self.G).tolist()) if f]
            if not flat:
                break
            with timer("generate"):
                fresh = self.generate(self.data.take(len(flat)), step, attempt)
            with timer("score"):
                fresh_scores = self.score(fresh)
            for j, (i, g) in enumerate(zip(flat, fresh)):
                groups[i], slices[i] = g, slice_scored(fresh_scores, j * self.G, (j + 1) * self.G)
            self.counters["resampled_groups"] += len(fresh)
            self._step_resampled += len(fresh)
            scores = merge_scored(slices)
        return groups, scores

    def compute_advantages(self, scores: ScoredBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantage per completion, flat-group flag per group)."""
        totals = _totals(scores)
        return group_advantages(totals, self.G, self.cfg.algorithm.scale_rewards), flat_groups(totals, self.G)

    def select_samples(self, groups: Sequence[Group], adv: torch.Tensor, flat: torch.Tensor) -> list[TrainSample]:
        """The completions the policy trains on: ``skip`` drops flat groups, ``mask_truncated`` cut-off answers."""
        algo = self.cfg.algorithm
        samples = []
        for gi, g in enumerate(groups):
            if algo.zero_variance == "skip" and bool(flat[gi]):
                continue
            for ci, c in enumerate(g.completions):
                if algo.mask_truncated and c.truncated:
                    continue
                samples.append(TrainSample(c.audio, c.prompt, c.token_ids, float(adv[gi * self.G + ci])))
        return samples

    def update(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One policy update (per ``num_iterations``) over the samples, data parallel; {} if none."""
        shards, norm = plan_update(samples, len(self.policy), self.cfg.policy.micro_batch_size)
        if norm is None:
            self.counters["skipped_updates"] += 1
            return {}
        parts = self.ray.get([w.update.remote(shard, norm) for w, shard in zip(self.policy, shards)])
        self._worker["update"] += max(p["seconds"] for p in parts)
        sums = {k: sum(p[k] for p in parts) for k in parts[0]}
        tokens = max(sums.pop("tokens"), 1.0)
        iters = self.cfg.algorithm.num_iterations
        stats = {"loss": sums["loss"] / len(parts), "grad_norm": parts[0]["grad_norm"],
                 "update/trained_sequences": float(norm.num_sequences), "update/trained_tokens": float(norm.num_tokens),
                 "time/update_prepare": max(p["prepare_s"] for p in parts)}
        for key in ("clip_low", "clip_high", "clip_region"):
            stats[f"clip_ratio/{key[5:]}_mean"] = sums[key] / tokens
        if "kl" in sums:
            stats["kl"] = sums["kl"] / tokens
        stats["update/iterations"] = float(iters)
        return stats

    def sync_weights(self, version: int, updated: bool = True) -> None:
        """The policy's adapter (and trained encoder) to every rollout worker, as one shared object ref."""
        if not updated:
            return
        refs = [w.weights.remote(version) for w in self.policy]
        loads = self.ray.get([r.timed_load_weights.remote(refs[0]) for r in self.rollout] + refs[1:])
        self._worker["sync"] += max(loads[:len(self.rollout)])  # rank 0 building the update, then the load

    def check_sync(self, completions: Sequence[Completion]) -> float:
        """Max |log-prob difference| between rollout worker 0 and the policy on given completions."""
        a, *_ = self.ray.get([self.rollout[0].logprobs.remote(list(completions))])
        b = self.ray.get([w.logprobs.remote(list(completions)) for w in self.policy])[0]
        return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))

    # ---------------------------------------------------------------- logging and checkpoints
    def metrics(self, groups: Sequence[Group], scores: ScoredBatch, flat: torch.Tensor, stats: dict[str, float],
                updated: bool, timer: Timer) -> dict[str, Any]:
        lengths = [len(c.token_ids) for g in groups for c in g.completions]
        t = timer.seconds
        out: dict[str, Any] = dict(summarize(scores))
        out.update(stats)
        out.update({
            "zero_variance/fraction": float(flat.float().mean()),
            "zero_variance/resampled": float(self._step_resampled),
            "zero_variance/skipped_groups": float(flat.sum()) if self.cfg.algorithm.zero_variance == "skip" else 0.0,
            "completion/mean_length": float(np.mean(lengths)),
            "completion/max_length": float(max(lengths)),
            "completion/truncated_fraction": float(np.mean([c.truncated for g in groups for c in g.completions])),
            "update/skipped": 0.0 if updated else 1.0,
            "tokens_per_s/generate": sum(lengths) / max(t["generate"], 1e-9),
            "reward_worker_restarts": float(self.counters["reward_worker_restarts"]),
            "data/unreadable_clips": float(self.counters["unreadable_clips"]),
            "data/epoch": float(self.data.epoch),
        })
        if updated:
            out["tokens_per_s/update"] = stats["update/trained_tokens"] / max(t["update"], 1e-9)
        out.update({f"time/{k}": v for k, v in t.items()})
        out.update(overhead_metrics(t, self._worker))
        return out

    def maybe_checkpoint(self, step: int) -> None:
        every = self.cfg.train.save_every
        if not ((every and step % every == 0) or step == self.cfg.train.steps):
            return
        tmp = checkpoint.begin(self.run_dir, step)
        self.ray.get([w.save.remote(str(tmp / "policy")) for w in self.policy])
        checkpoint.commit(tmp, step, {"data": self.data.state(), "counters": dict(self.counters),
                                      "seed": self.cfg.train.seed, "init": str(self.init)})
        checkpoint.prune(self.run_dir, self.cfg.train.keep_checkpoints)

    # ---------------------------------------------------------------- start and finish
    def start(self) -> None:
        from grpo.bootstrap import ensure_init

        cfg = self.cfg
        RewardSet.from_config(cfg.rewards.entries, cfg.rewards.aggregation)  # config errors before any worker starts
        self._check_run_dir()
        self.init = ensure_init(cfg.model)
        self.backbone = read_meta(self.init).backbone
        self.data = ClipStream(self._records(), cfg.train.seed, cfg.data.balance)
        self.prompt = self._prompt()
        self.sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.top_k,
                                       cfg.rollout.max_new_tokens, cfg.rollout.return_logprobs)
        self._step_resampled, self._worker = 0, Counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoint.latest(self.run_dir) if self.resume else None
        if ckpt is not None:
            checkpoint.verify(ckpt)  # before any worker could unpickle it
        save_config(cfg, self.run_dir / "sqrl_config.yaml")
        self._start_workers()
        if self.resume and ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from step 0", self.run_dir)
        if ckpt is not None:
            self._restore(ckpt)
        checkpoint.prune(self.run_dir, cfg.train.keep_checkpoints)
        self.sync_weights(self.step_done)  # the rollout workers start from the policy's (fresh or restored) weights
        self.logger = RunLogger(self.run_dir, cfg.train.steps, start_step=self.step_done,
                                tensorboard=cfg.logging.tensorboard, progress=cfg.logging.progress)

    def _check_run_dir(self) -> None:
        """A non-empty run_dir only with --resume, or --overwrite (which removes it first): sqrl/rundir.py."""
        prepare_out(self.run_dir, resume=self.resume, overwrite=self.overwrite, create=False)

    def _records(self) -> list[Record]:
        data = self.cfg.data
        if data.train:
            manifest = Path(data.train)
        else:
            from sqrl.data.synth import ensure_corpus

            manifest = ensure_corpus(data.synth.root, data.synth.num, data.synth.seed) / "train.jsonl"
        records = read_manifest(manifest)
        return records[:data.limit] if data.limit else records

    def _prompt(self) -> str:
        rubric = Rubric(self.cfg.data.rubric)
        if self.cfg.data.prompting == "per_dimension":
            raise ValueError("GRPO needs one prompt per clip: data.prompting long_form or all_dimensions")
        return rubric.long_form() if self.cfg.data.prompting == "long_form" else rubric.all_dimensions()

    def _start_workers(self) -> None:
        import ray

        self.ray = ray
        cfg, cl = self.cfg, self.cfg.cluster
        if not ray.is_initialized():
            local = cl.address is None and not os.environ.get("RAY_ADDRESS")
            # "local": a new cluster of our own; a bare ray.init() would join any `ray start` cluster it finds
            ray.init(address="local" if local else cl.address, include_dashboard=False, log_to_driver=True,
                     **({"num_cpus": cl.num_cpus} if local and cl.num_cpus else {}))
            self._owns_ray = True
        # Only allow-listed, non-secret variables go into runtime_env (Ray logs it); secrets reach the
        # reward workers as constructor arguments (grpo/worker_env.py).
        secret_vars = secret_names(cfg.rewards.entries, cfg.rewards.secret_env)
        env = {role: {"env_vars": worker_env(role, torch_threads=cl.torch_threads, exclude=secret_vars)}
               for role in ("policy", "rollout", "reward")}
        lora = cfg.lora
        W = cfg.policy.num_workers
        loss = LossSettings(cfg.algorithm.loss_type, cfg.algorithm.beta, cfg.algorithm.epsilon,
                            cfg.algorithm.epsilon_high if cfg.algorithm.epsilon_high is not None else cfg.algorithm.epsilon,
                            cfg.rollout.max_new_tokens)
        plan = plan_placement(cl, worker_counts(cfg))
        self.placement = create_placement(plan, cl.placement_timeout_s)
        place = self.placement.options
        policy_cls = ray.remote(PolicyWorker)
        self.policy = [policy_cls.options(runtime_env=env["policy"], **place("policy", r)).remote(
            str(self.init), self.backbone, lora_rank=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            encoder_mode=lora.encoder_mode, dtype=cfg.model.dtype, loss=loss, lr=cfg.policy.lr,
            weight_decay=cfg.policy.weight_decay, adam_betas=cfg.policy.adam_betas,
            max_grad_norm=cfg.policy.max_grad_norm, zero_stage=cfg.policy.zero_stage,
            offload_optimizer=cfg.policy.offload_optimizer, gradient_checkpointing=cfg.model.gradient_checkpointing,
            num_iterations=cfg.algorithm.num_iterations, max_seconds=cfg.data.max_seconds, seed=cfg.train.seed,
            rank=r, world_size=W) for r in range(W)]
        rollout_cls = ray.remote(rollout_worker_class(cfg.rollout.backend))
        self.rollout = [rollout_cls.options(runtime_env=env["rollout"], **place("rollout", i)).remote(
            str(self.init), self.backbone, lora.rank, lora.alpha, lora.encoder_mode, dtype=cfg.model.dtype,
            max_seconds=cfg.data.max_seconds, **cfg.rollout.options) for i in range(cfg.rollout.num_workers)]
        # Reward workers hold no state: Ray restarts a dead one (on another node if its node is gone; its
        # placement-group bundle is rescheduled there) and ``get_with_retry`` sends its batch again.
        reward_cls = ray.remote(RewardWorker)
        self.reward = [reward_cls.options(runtime_env=env["reward"], max_restarts=cfg.rewards.max_restarts,
                                          max_task_retries=0, **place("reward", i)).remote(
            cfg.rewards.entries, cfg.rewards.aggregation, cfg.rewards.pass_audio, cfg.data.max_seconds,
            secrets=collect_secrets(secret_vars)) for i in range(cfg.rewards.num_workers)]
        master = ray.get(self.policy[0].rendezvous.remote())
        info = ray.get([w.setup.remote(*master) for w in self.policy] + [r.version.remote() for r in self.rollout]
                       + [r.pid.remote() for r in self.reward])[0]
        log.info("policy: %s; %d policy, %d rollout (%s), %d reward workers", info, W, len(self.rollout),
                 cfg.rollout.backend, len(self.reward))
        self.worker_nodes = {role: actor_nodes(actors) for role, actors in
                             (("policy", self.policy), ("rollout", self.rollout), ("reward", self.reward))}
        log.info("worker nodes: %s", {role: Counter(n[:8] for n in nodes) for role, nodes in self.worker_nodes.items()})

    def _restore(self, ckpt: Path) -> None:
        state = checkpoint.load_state(ckpt)
        if state.get("seed") != self.cfg.train.seed:
            log.warning("resuming with train.seed %s; the checkpoint was written with %s", self.cfg.train.seed, state.get("seed"))
        self.ray.get([w.load.remote(str(ckpt / "policy")) for w in self.policy])
        self.data.load_state(state["data"])
        self.counters.update(state.get("counters", {}))
        self.step_done = int(state["step"])
        log.info("resumed from %s (step %d)", ckpt, self.step_done)

    def finish(self) -> None:
        """Write the final policy into ``run_dir`` (adapter over ``model.init``) and the reward curve."""
        tmp = self.run_dir / ".policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.ray.get([w.save_adapter.remote(str(tmp)) for w in self.policy])
        for item in tmp.iterdir():
            os.replace(item, self.run_dir / item.name)
        tmp.rmdir()
        write_meta(self.run_dir, ModelMeta(backbone=self.backbone, kind="adapter", base=str(self.init), stage="grpo"))
        if self.cfg.logging.plot:
            plot_reward_curve(self.logger.path, self.run_dir / "plots" / "reward_curve.png")
        log.info("policy written to %s", self.run_dir)

    def close(self) -> None:
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        for actor in self.policy + self.rollout + self.reward:
            self.ray.kill(actor)
        self.policy, self.rollout, self.reward = [], [], []
        if getattr(self, "placement", None) is not None:
            self.placement.remove()
            self.placement = None
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False


def overhead_metrics(seconds: Counter[str], worker: Counter[str]) -> dict[str, float]:
    """``time/<phase>_worker`` and the step's orchestration overhead from the driver's timer ``seconds``
    and the workers' own ``worker`` seconds per phase.

    The phases run one after another (score waits for generate, and so on), so the workers' compute on the
    step's critical path is the sum of the phases' worker seconds; ``time/overhead`` is the rest of the
    step: Ray calls, (de)serialisation, waiting for a busy core, a dead reward worker's lost attempt, and the
    driver's own work between the calls (advantages, sample selection, merging scores). The sync check
    (``train.check_sync_every``) is a diagnostic and is left out of both. ``time/overhead_fraction`` is
    overhead over that step time."""
    out = {f"time/{p}_worker": float(worker[p]) for p in PHASES}
    step = seconds["step"] - seconds["check_sync"]
    overhead = step - sum(worker[p] for p in PHASES)
    out["time/overhead"] = overhead
    out["time/overhead_fraction"] = overhead / step if step > 0 else 0.0
    return out


def _totals(scores: ScoredBatch) -> torch.Tensor:
    return torch.tensor([float("nan") if t is None else float(t) for t in scores.total])


def slice_scored(sb: ScoredBatch, start: int, stop: int) -> ScoredBatch:
    """The rows ``start:stop`` of a scored batch. Its ``skipped`` counts every ``None`` of a reward
    there, errors included (``errors`` is per batch and cannot be split; the driver counts them)."""
    per_reward = {k: v[start:stop] for k, v in sb.per_reward.items()}
    total = sb.total[start:stop]
    return ScoredBatch(total=total, per_reward=per_reward,
                       components={k: v[start:stop] for k, v in sb.components.items()},
                       skipped={k: sum(x is None for x in v) for k, v in per_reward.items()},
                       errors={k: 0 for k in per_reward}, total_skipped=sum(t is None for t in total))


def run_grpo(cfg: GRPOConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the GRPO stage into ``out`` (see ``Driver``)."""
    return Driver(cfg, out, resume=resume, overwrite=overwrite).run()
