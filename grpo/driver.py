"""The single-controller GRPO loop on Ray (paper section 3.2).

One process (this driver) holds the data cursor and calls the workers. Each role is its own file with a
builder from the config: ``rollout_worker.py`` (backends ``rollout_hf.py``, ``rollout_vllm.py``) samples G
completions per clip, ``reward_worker.py`` scores them, ``algorithm.py`` turns rewards into advantages,
``policy_worker.py`` updates the policy in a DeepSpeed ZeRO engine, and the new adapter (and trained
encoder) goes back to the rollout workers. What travels between the roles is in ``messages.py``; the
clips come from ``sampling.py``, the step's batch type from ``batch.py``, the metrics go to ``tracking.py``.
A step reads as ``Driver.step``::

    clips = data.take(B); groups = generate(clips); batch = score(groups); [resample flat groups]
    adv = compute_advantages(batch); stats = update(train_samples(batch, adv)); sync_weights()
    log(); maybe_checkpoint()

Worker calls are plain ``ray.get([w.method.remote(x) for w, x in ...])`` over lists; audio travels as
paths and weights as one object ref shared by every rollout worker.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import torch

from grpo import checkpoint
from grpo.algorithm import flat_groups, group_advantages
from grpo.batch import Group, ScoredGroups, score_credit, train_samples
from grpo.config import GRPOConfig
from grpo.messages import ClipRequest, Completion, TrainSample
from grpo.placement import actor_nodes, create_placement, plan_placement, worker_counts
from grpo.policy_worker import build_policy_workers, plan_update, update_stats
from grpo.reward_watch import RewardWatch
from grpo.reward_worker import build_reward_workers, get_with_retry, split_groups
from grpo.rollout_worker import build_rollout_workers, build_sampling, sampling_seed
from grpo.sampling import ClipStream, training_records
from grpo.tracking import RunLogger, Timer, plot_reward_curve, sample_rows, step_metrics
from grpo.worker_env import collect_secrets, secret_names, worker_env
from rewards import RewardSet
from rewards.base import add_import_path, entry_weights
from sqrl.config import save_config
from sqrl.models import META_FILE, ModelMeta, read_meta, write_meta
from sqrl.prompts import Rubric, answer_format_mismatch
from sqrl.rundir import prepare_out
from sqrl.schema import Record

log = logging.getLogger(__name__)


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
        """generate -> score -> [resample flat groups] -> advantages -> update -> sync; then log and checkpoint."""
        algo, timer = self.cfg.algorithm, Timer()
        self._step_resampled, self._worker = 0, Counter()
        with timer("step"):
            clips = self.data.take(self.cfg.train.batch_size)
            with timer("generate"):
                groups = self.generate(clips, step)
            with timer("score"):
                batch = self.score(groups)
            self.reward_watch.observe(batch.scores, step)  # a reward failing every call stops the run
            if algo.zero_variance == "resample":
                batch = self.resample_flat_groups(batch, step, timer)
            adv, flat = self.compute_advantages(batch)
            token_adv, digit_adv = self.token_credit(batch) if algo.credit == "scores" else (None, None)
            samples = train_samples(batch.groups, adv, flat, skip_flat=algo.zero_variance == "skip",
                                    mask_truncated=algo.mask_truncated, token_adv=token_adv)
            with timer("update"):
                stats = self.update(samples)
            updated = bool(stats)
            with timer("sync"):
                self.sync_weights(step, updated=updated)
            if self.cfg.train.check_sync_every and step % self.cfg.train.check_sync_every == 0:
                with timer("check_sync"):
                    stats["sync/max_abs_logprob_diff"] = self.check_sync(batch.groups[0].completions[:2])
        metrics = step_metrics(batch, flat, stats, updated=updated, seconds=timer.seconds, worker_seconds=self._worker,
                               counters=self.counters, resampled=self._step_resampled, epoch=self.data.epoch,
                               skip_flat=algo.zero_variance == "skip")
        self.logger.log(step, metrics)
        every = self.cfg.logging.samples_every
        if every and step % every == 0:
            self.logger.log_samples(step, sample_rows(batch, adv, digit_adv))
        self.maybe_checkpoint(step)
        return metrics

    # ---------------------------------------------------------------- roles
    def generate(self, clips: Sequence[Record], step: int, attempt: int = 0) -> list[Group]:
        """G completions for each clip, the clips split over the rollout workers; unreadable clips dropped."""
        parts = split_groups(len(clips), len(self.rollout))
        results = self.ray.get([w.generate.remote([ClipRequest(r.id, r.audio, self.prompt) for r in clips[p.start:p.stop]],
                                                  self.G, self.sampling, sampling_seed(self.cfg.train.seed, step, attempt, i))
                                for i, (w, p) in enumerate(zip(self.rollout, parts))])
        self._worker["generate"] += max(r.seconds for r in results)
        groups = []
        for res, part in zip(results, parts):  # by position: a batch may hold a clip twice (an epoch boundary)
            completions = iter(res.completions)
            for record in clips[part.start:part.stop]:
                if record.id in res.failed:
                    self.counters["unreadable_clips"] += 1
                    log.warning("clip %s dropped from step %d: %s", record.id, step, res.failed[record.id])
                    continue
                groups.append(Group(record, [next(completions) for _ in range(self.G)]))
        if not groups:
            raise RuntimeError(f"step {step}: no clip of the batch could be read")
        return groups

    def score(self, groups: Sequence[Group]) -> ScoredGroups:
        """Rewards for every completion; whole groups per reward worker; a dead worker's part is retried."""
        parts = [[groups[i] for i in p] for p in split_groups(len(groups), len(self.reward))]

        def call(worker: int, part: list[Group]):
            cs = [c for g in part for c in g.completions]
            refs = [g.record for g in part for _ in g.completions]
            return lambda: self.reward[worker].score.remote([c.text for c in cs], refs, [c.prompt for c in cs],
                                                          [c.audio for c in cs])

        results = get_with_retry([call(i, p) for i, p in enumerate(parts)], self.cfg.rewards, self.counters, ray=self.ray)
        self._worker["score"] += max(r.seconds for r in results)  # a retried call: its last attempt only
        batch = ScoredGroups.concat([ScoredGroups(p, r) for p, r in zip(parts, results)])
        self.counters["reward_errors"] += sum(batch.scores.errors.values())
        return batch

    def resample_flat_groups(self, batch: ScoredGroups, step: int, timer: Timer) -> ScoredGroups:
        """Replace groups whose rewards are all equal with fresh clips, up to ``max_resample`` rounds."""
        singles = [batch.slice(i, i + 1) for i in range(len(batch))]
        for attempt in range(1, self.cfg.algorithm.max_resample + 1):
            flat = [i for i, f in enumerate(flat_groups(batch.totals(), self.G).tolist()) if f]
            if not flat:
                break
            with timer("generate"):
                fresh_groups = self.generate(self.data.take(len(flat)), step, attempt)
            with timer("score"):
                fresh = self.score(fresh_groups)
            for j, i in enumerate(flat[:len(fresh)]):
                singles[i] = fresh.slice(j, j + 1)
            self.counters["resampled_groups"] += len(fresh)
            self._step_resampled += len(fresh)
            batch = ScoredGroups.concat(singles)
        return batch

    def compute_advantages(self, batch: ScoredGroups) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantage per completion, flat-group flag per group)."""
        totals = batch.totals()
        return group_advantages(totals, self.G, self.cfg.algorithm.scale_rewards), flat_groups(totals, self.G)

    def token_credit(self, batch: ScoredGroups) -> tuple[list[list[float]], list[dict[str, float]]]:
        """Per-token advantages under ``algorithm.credit: scores`` (``grpo.batch.score_credit``), each completion's
        score digits located in its tokens (``sqrl.scoretokens.score_positions``); and, for the samples log, the
        advantage each digit got."""
        from sqrl.scoretokens import score_positions

        positions = [score_positions(self.tokenizer, c.token_ids) for g in batch.groups for c in g.completions]
        rows = score_credit(batch, self.reward_weights, positions, self.cfg.algorithm.scale_rewards)
        return rows, [{d: row[k] for d, k in pos.items() if k < len(row)} for row, pos in zip(rows, positions)]

    def update(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One policy update (per ``num_iterations``) over the samples, data parallel; {} if none."""
        shards, norm = plan_update(samples, len(self.policy), self.cfg.policy.micro_batch_size)
        if norm is None:
            self.counters["skipped_updates"] += 1
            return {}
        parts = self.ray.get([w.update.remote(shard, norm) for w, shard in zip(self.policy, shards)])
        self._worker["update"] += max(p["seconds"] for p in parts)
        return update_stats(parts, norm, self.cfg.algorithm.num_iterations)

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

    # ---------------------------------------------------------------- checkpoints
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
        cfg = self.cfg
        self.python_path = reward_python_path(cfg.rewards.python_path)
        add_import_path(self.python_path)
        RewardSet.from_config(cfg.rewards.entries, cfg.rewards.aggregation)  # config errors before any worker starts
        self._check_run_dir()
        self.init = start_model(cfg.model.init)
        self.backbone = read_meta(self.init).backbone
        self.data = ClipStream(training_records(cfg.data), cfg.train.seed, cfg.data.balance)
        self.prompt = self._prompt()
        self.sampling = build_sampling(cfg)
        if cfg.algorithm.credit == "scores":
            self._setup_score_credit()
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

    def _setup_score_credit(self) -> None:
        """The reward weights and the tokenizer that ``token_credit`` needs; refused without a score reward."""
        from transformers import AutoTokenizer

        self.reward_weights = entry_weights(self.cfg.rewards.entries)
        if not any(w and digits for w, digits in self.reward_weights.values()):
            raise ValueError("algorithm.credit: scores credits each score digit with its own dimension's score "
                             "rewards, and rewards.entries has none with a weight (e.g. {name: accuracy}); use "
                             "algorithm.credit: sequence")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.init))

    def _check_run_dir(self) -> None:
        """A non-empty run_dir only with --resume, or --overwrite (which removes it first): sqrl/rundir.py."""
        prepare_out(self.run_dir, resume=self.resume, overwrite=self.overwrite, create=False)

    def _prompt(self) -> str:
        rubric = Rubric(self.cfg.data.rubric)
        check_answer_format(rubric, self.init)
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
        self.placement = create_placement(plan_placement(cl, worker_counts(cfg)), cl.placement_timeout_s)
        place = self.placement.options
        self.policy = build_policy_workers(cfg, str(self.init), self.backbone, place, env["policy"])
        self.rollout = build_rollout_workers(cfg, str(self.init), self.backbone, place, env["rollout"])
        self.reward = build_reward_workers(cfg, place, env["reward"], secrets=collect_secrets(secret_vars),
                                           python_path=self.python_path)
        master = ray.get(self.policy[0].rendezvous.remote())
        info = ray.get([w.setup.remote(*master) for w in self.policy] + [r.version.remote() for r in self.rollout]
                       + [r.pid.remote() for r in self.reward])[0]
        self.worker_info = info
        log.info("policy: %s; %d policy, %d rollout (%s), %d reward workers", info, len(self.policy), len(self.rollout),
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


def reward_python_path(folders: Sequence[str]) -> list[str]:
    """``rewards.python_path`` as absolute folders, then the driver's working folder (where users keep the
    module of a custom reward, as they would run it with ``python -m``)."""
    out = [str(Path(f).expanduser().resolve()) for f in folders]
    return list(dict.fromkeys([*out, os.getcwd()]))


def check_answer_format(rubric: Rubric, init: Path) -> None:
    """Refuse a GRPO rubric whose answer format differs from the one the start model was trained to write
    (``answer_order``, ``voice_line``): the policy would be asked for one format, sample another, and the
    group advantages would train the format before anything else."""
    problem = answer_format_mismatch(rubric, init)
    if problem:
        raise ValueError(f"model.init: {problem}")


def start_model(init: str) -> Path:
    """``model.init`` resolved, checked to be a full (merged) sqrl model directory."""
    path = Path(init).expanduser().resolve()
    if not (path / META_FILE).exists():
        raise FileNotFoundError(f"model.init {path} is not an sqrl model directory; run the calibration and "
                                "warm-up SFT stages and `sqrl merge`, or set model.bootstrap and start with "
                                "`sqrl grpo`, which builds it (tiny configs)")
    if read_meta(path).kind != "full":
        raise ValueError(f"model.init {path} is an adapter; GRPO starts from a merged model: "
                         f"run `sqrl merge {path} --out MERGED` and set model.init=MERGED")
    return path


def run_grpo(cfg: GRPOConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train the GRPO stage into ``out`` (see ``Driver``)."""
    return Driver(cfg, out, resume=resume, overwrite=overwrite).run()
