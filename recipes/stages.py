"""The one stage runner every recipe uses: steps with one rule for "done" and one for "fresh".

A *step* is one unit of a recipe: train an SFT stage, merge an adapter, train a GRPO stage, evaluate a
model, build the untrained base. Every step writes one folder and knows from that folder alone whether it
has to run:

* a model step is **done** when its folder holds ``sqrl_model.json`` (stages write it last, so a folder
  without it is an interrupted run: the step runs again and continues from the checkpoints it left);
* an evaluation is **fresh** when its ``metrics.json`` is at least as new as the model's ``sqrl_model.json``
  (a model retrained since is evaluated again).

``run_steps`` runs a list of steps in order, skipping the done ones, and logs each with the time it took and
an estimate of what remains. By default the steps run in this process: ``make demo`` trains calibration,
warm-up, merge and GRPO one after the other, a failure surfaces as the stage's own traceback, and each step
saves the ~10 s a fresh interpreter spends importing torch and transformers. With ``isolate`` every step but
GRPO runs in a fresh process of its own instead (``run_isolated``): on the small pretrained backbone the
stages that followed an hour of calibration in the same process ran 30-50% slower than the same work in a fresh
one (the warm-up 4.9 s a step against 3.37 in its own process; the calibration's eval 2.65 s a clip against
1.70; `make small` 120.8 min against 112.2; the mechanism is not pinned down, docs/small.md). GRPO steps stay in
this process: their driver is light, and the policy and rollouts already run in Ray's worker processes. A step's process imports the code on disk when it starts: edit the tree while
an isolated run goes on and its later stages run the edited code.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from sqrl.config import load_config
from sqrl.models import META_FILE
from sqrl.runtime import release_memory

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- the two rules
def is_done(out: Path) -> bool:
    """A model folder is complete once its stage wrote ``sqrl_model.json`` (the last file it writes)."""
    return (Path(out) / META_FILE).exists()


def is_fresh(result: Path, model: Path) -> bool:
    """``result`` (e.g. an eval's metrics.json) exists and is not older than ``model``'s ``sqrl_model.json``.
    A model folder without the file (nothing to compare against) leaves an existing result fresh."""
    result, meta = Path(result), Path(model) / META_FILE
    return result.exists() and (not meta.exists() or result.stat().st_mtime >= meta.stat().st_mtime)


def corpus_overrides(corpus: Any, section: str = "data") -> list[str]:
    """The dotted overrides that point a stage config at the recipe's one synthetic corpus."""
    return [f"{section}.synth.root={corpus.root}", f"{section}.synth.num={corpus.num}",
            f"{section}.synth.seed={corpus.seed}"]


def count_lines(path: Path) -> int:
    """The records of a manifest (its non-blank lines)."""
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def sft_units(config: str, overrides: list[str], n_clips: int) -> int:
    """The optimizer steps of an SFT stage (its time estimate)."""
    from sft.config import SFTStageConfig

    cfg = load_config(SFTStageConfig, config, overrides)
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    n = min(n_clips, cfg.data.limit) if cfg.data.limit else n_clips
    n *= 7 if cfg.data.prompting == "per_dimension" else 1
    return math.ceil(n * cfg.train.epochs / (cfg.train.batch_size * cfg.train.grad_accum))


def grpo_kind(config: Any) -> str:
    """A GRPO stage's time-estimate kind: ``grpo_accsem`` when no reward calls a judge model, else ``grpo``."""
    names = {str(e.get("name", "")) for e in config.rewards.entries}
    return "grpo_accsem" if names <= {"accuracy", "semantic"} else "grpo"


def _stamp(out: Path, name: str, seconds: float) -> None:
    (out / "stage_time.json").write_text(json.dumps({"stage": name, "seconds": round(seconds, 1)}))


def stage_seconds(steps: Iterable["Step"]) -> dict[str, float | None]:
    """Each step's time from its ``stage_time.json`` (written when it finished, in whichever call ran it; a step
    interrupted and continued counts its last call only), None for one without."""
    out: dict[str, float | None] = {}
    for step in steps:
        file = step.out / "stage_time.json"
        out[step.name] = json.loads(file.read_text())["seconds"] if file.exists() else None
    return out


# ----------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One unit of work writing ``out``. ``kind`` keys its time estimate; ``units`` scales it (steps, clips);
    ``scale`` names the backbone's table of rates (``BACKBONE_RATES``; empty: the tiny defaults). The runner
    writes a step's time into ``out/stage_time.json`` once it ran (``timed``; ``stage_seconds`` reads it)."""

    timed: ClassVar[bool] = True
    isolatable: ClassVar[bool] = False
    """Whether ``run`` may run in a process of its own (the step pickles, and shares nothing with the runner)."""

    name: str
    out: Path
    kind: str = ""
    units: float = 0.0
    scale: str = ""

    def done(self) -> bool:
        return is_done(self.out)

    def run(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called after the step, whether it ran or was skipped (releases what a group of steps shares)."""


@dataclass
class SFTStep(Step):
    """Train an SFT stage from ``config`` with ``overrides`` (in order); an interrupted run continues from its
    last checkpoint."""

    isolatable: ClassVar[bool] = True

    config: str | Path = ""
    overrides: list[str] = field(default_factory=list)

    def load(self):
        from sft.config import SFTStageConfig

        return load_config(SFTStageConfig, self.config, self.overrides)

    def run(self) -> None:
        from sft.train import run_sft

        cfg = self.load()
        # a folder that is not done holds this step's interrupted run (run_sft refuses a non-empty folder
        # without resume, sqrl/rundir.py; with no checkpoint it starts from step 0)
        run_sft(cfg, self.out, resume=self.out.exists())


@dataclass
class MergeStep(Step):
    """``sqrl.models.merge_adapter`` of the adapter in ``adapter`` into a full model in ``out``."""

    isolatable: ClassVar[bool] = True

    adapter: Path = Path()

    def run(self) -> None:
        from sqrl.models import merge_adapter

        merge_adapter(self.adapter, self.out)


class RaySession:
    """One Ray runtime shared by several GRPO steps (the driver uses it instead of starting its own), opened
    when the first of them has to train: a new local cluster of ``num_cpus`` (None: Ray's count), or the one
    ``$RAY_ADDRESS`` names; never another user's cluster on this machine (a bare ``ray.init()`` joins one)."""

    def __init__(self) -> None:
        self._owned = False

    def open(self, num_cpus: int | None) -> None:
        import ray

        if ray.is_initialized():
            return
        if os.environ.get("RAY_ADDRESS"):
            ray.init(include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=True,
                     **({"num_cpus": num_cpus} if num_cpus else {}))
        self._owned = True

    def close(self) -> None:
        if self._owned:
            import ray

            self._owned = False
            ray.shutdown()


def same_model(a: str | Path, b: str | Path) -> bool:
    """Whether two model folders are the same model: the same path however spelled, or copies whose files
    (names, sizes and sha256) are equal, e.g. a compare run's ``shared/`` copied into a second folder so that
    another seed trains in parallel. A folder that is gone counts as different."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return True
    if not (a.is_dir() and b.is_dir()):
        return False
    from sqrl.integrity import sha256_file

    def files(folder: Path) -> dict[str, int]:
        return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    fa, fb = files(a), files(b)
    if fa != fb:
        return False
    same = all(sha256_file(a / name) == sha256_file(b / name) for name in sorted(fa))
    if same:
        log.info("%s and %s are copies of one model (every file's sha256 equal)", a, b)
    return same


@dataclass
class GRPOStep(Step):
    """Train a GRPO stage from ``config`` with ``overrides`` (``model.init`` among them); resumed when an
    earlier run left its folder. With ``ray``, the step opens that shared runtime before
    training and, when ``close_ray``, closes it once it is over (also when skipped)."""

    config: str | Path = ""
    overrides: list[str] = field(default_factory=list)
    ray: RaySession | None = None
    close_ray: bool = False

    def load(self):
        from grpo.config import GRPOConfig

        return load_config(GRPOConfig, self.config, self.overrides)

    def done(self) -> bool:
        """Complete, and trained from the model this step starts from: a finished run from another start model
        (e.g. a compare folder reused after ``sft_seed`` changed) is an error, never silently reused."""
        if not is_done(self.out):
            return False
        saved = self.out / "sqrl_config.yaml"
        if saved.exists():
            import yaml

            was = ((yaml.safe_load(saved.read_text()) or {}).get("model") or {}).get("init")
            planned = self.load().model.init
            if was and planned and not same_model(was, planned):
                raise ValueError(f"{self.out} is a finished GRPO run from {was}, but this plan starts it from "
                                 f"{planned}; rerun with --overwrite, or use another output folder")
        return True

    def run(self) -> None:
        from grpo.driver import run_grpo

        cfg = self.load()
        try:
            if self.ray is not None:
                self.ray.open(cfg.cluster.num_cpus)
            # a folder that is not done holds this step's interrupted run (the driver refuses a non-empty run
            # folder without resume, sqrl/rundir.py; with no checkpoint it starts from step 0)
            run_grpo(cfg, self.out, resume=self.out.exists())
        except BaseException:
            if self.ray is not None:
                self.ray.close()
            raise

    def finish(self) -> None:
        if self.ray is not None and self.close_ray:
            self.ray.close()


@dataclass
class EvalStep(Step):
    """``sqrl eval`` of ``model`` on ``manifest`` into ``out`` (done when its metrics are fresh)."""

    model: Path = Path()
    manifest: Path = Path()
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 200
    rubric: str | None = None
    temperature: float | None = None
    """Sample one answer per clip at this temperature (``seed``) instead of the greedy one."""
    seed: int = 0
    kind: str = "eval"
    isolatable: ClassVar[bool] = True

    def done(self) -> bool:
        return is_fresh(self.out / "metrics.json", self.model)

    def run(self) -> None:
        from sqrl.evaluate import evaluate

        # an interrupted evaluation continues from its journal; one of an older model starts over
        evaluate(str(self.model), str(self.manifest), self.out, batch_size=self.batch_size,
                 max_new_tokens=self.max_new_tokens, limit=self.limit, rubric=self.rubric, resume="if_same",
                 temperature=self.temperature, seed=self.seed)

    def metrics(self) -> dict[str, Any]:
        return json.loads((self.out / "metrics.json").read_text())


@dataclass
class RewardStep(Step):
    """A GRPO stage's own rewards (its ``config`` with ``overrides``) on the answers of ``evals``
    (``(label, sqrl eval folder)``, the first the baseline: the stage's start model) to the same held-out clips
    of ``manifest``, paired by clip, into ``out/reward.json`` (``grpo.agreement.heldout_reward``). Fresh when
    newer than every evaluation it reads and scored with the rewards the config names now."""

    config: str | Path = ""
    overrides: list[str] = field(default_factory=list)
    evals: list[tuple[str, Path]] = field(default_factory=list)
    manifest: Path = Path()
    kind: str = "reward"
    isolatable: ClassVar[bool] = True
    FILE: ClassVar[str] = "reward.json"

    def rewards(self):
        """The GRPO config's ``rewards`` section; refused when its rewards read the audio, which the eval
        folders do not carry."""
        from grpo.config import GRPOConfig

        rewards = load_config(GRPOConfig, self.config, self.overrides).rewards
        if rewards.pass_audio:
            raise ValueError(f"{self.name}: the GRPO rewards read the audio (rewards.pass_audio); scoring the "
                             "evaluations' answers with them is not supported (set eval.grpo_reward=false)")
        return rewards

    def done(self) -> bool:
        """Newer than every evaluation it reads, and scored with the rewards the config names now."""
        result = self.out / self.FILE
        metrics = [Path(folder) / "metrics.json" for _, folder in self.evals]
        if not (result.exists() and all(m.exists() and result.stat().st_mtime >= m.stat().st_mtime for m in metrics)):
            return False
        rewards = self.rewards()
        saved = self.result()
        return saved.get("entries") == json.loads(json.dumps(rewards.entries)) and \
            saved.get("aggregation") == rewards.aggregation

    def run(self) -> None:
        from grpo.agreement import heldout_reward
        from grpo.driver import reward_python_path
        from rewards.base import add_import_path

        rewards = self.rewards()
        add_import_path(reward_python_path(rewards.python_path))  # a reward named by a dotted path, as in GRPO
        result = heldout_reward(self.evals, rewards.entries, self.manifest, rewards.aggregation)
        result.update(entries=rewards.entries, aggregation=rewards.aggregation)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / self.FILE).write_text(json.dumps(result, indent=2))

    def result(self) -> dict[str, Any]:
        return json.loads((self.out / self.FILE).read_text())


@dataclass
class UntrainedStep(Step):
    """The untrained tiny backbone ``backbone`` (with TinySpec ``options``) as a full model directory."""

    backbone: str = "tiny-qwen2-audio"
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "build"
    isolatable: ClassVar[bool] = True
    timed: ClassVar[bool] = False  # a model folder that compare reads train times from: no training happened

    def run(self) -> None:
        from sqrl.models import untrained_init

        untrained_init(self.out, self.backbone, **dict(self.options))


# ---------------------------------------------------------------------------------------- runner
class StepFailed(RuntimeError):
    """A step run in a process of its own ended with an error (its traceback is in the log above)."""


def _step_main(step: Step, log_level: int, parent_pid: int | None = None) -> None:
    """The body of a step's own process: it ends with the runner (even one killed by ``kill -9``), takes the
    CLI's process-wide settings, and runs the step; SIGTERM stops it as Ctrl-C does (``finally`` blocks run).
    (``parent_pid`` None: a runner of an older sqrl, which spawned with two arguments; its parent is ours.)"""
    from sqrl.runtime import configure_logging, configure_torch, die_with_parent, sigterm_as_exit

    die_with_parent(parent_pid or os.getppid(), ignore_interrupt=False)
    configure_logging(log_level)
    configure_torch()
    with sigterm_as_exit():
        step.run()


def run_isolated(step: Step, grace_s: float = 30.0) -> None:
    """``step.run()`` in a fresh interpreter (multiprocessing's ``spawn``: no copy of this process's heap or
    threads), waited for here. Its log lines and progress bars go to this process's terminal; an error in it
    prints its traceback there and raises ``StepFailed`` here. It ends with this process: Ctrl-C reaches both
    (one process group) and this one waits ``grace_s`` for it to stop; SIGTERM here, or any other way out of the
    wait, stops it at once (SIGTERM); a ``kill -9`` of this process ends it too (``die_with_parent``)."""
    import multiprocessing

    from sqrl.runtime import sigterm_as_exit

    proc = multiprocessing.get_context("spawn").Process(
        target=_step_main, args=(step, logging.getLogger().getEffectiveLevel(), os.getpid()),
        name=f"sqrl {step.name}")
    proc.start()
    try:
        with sigterm_as_exit():
            proc.join()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):  # the child got the same Ctrl-C: let it stop by itself
            proc.join(grace_s)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        raise
    if proc.exitcode != 0:
        how = f"signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit code {proc.exitcode}"
        raise StepFailed(f"{step.name} failed in its own process ({how}); its traceback, if any, is above. "
                         f"Its folder {step.out} is kept: the same command continues it")


# (fixed seconds, seconds per unit) per kind of step, measured on 2 CPU cores: SFT per optimizer step
# (calibration ~4.6 min for 639 steps, warm-up ~2 min for 213), GRPO per step (accuracy + semantic ~3 s, the
# SmolLM2 judges 30-60 s), eval per clip (~1 min for 300). A kind not listed falls back to its stage type
# (sft, grpo); a run's own rate replaces the default once a step of the kind has run, and the defaults of the
# kinds not run yet are scaled by how much slower (or faster) this machine ran the ones it has (on an AVX2-only
# CPU the tiny calibration took 2.6 s a step against the 0.43 here, and every later estimate was 5-6x short).
DEFAULT_RATES: dict[str, tuple[float, float]] = {
    "calibration": (15.0, 0.43), "calibration_frozen": (15.0, 0.43), "sft_reasoning": (15.0, 0.56),
    "sft": (15.0, 0.5), "merge": (10.0, 0.0), "grpo_accsem": (30.0, 3.0), "grpo_unified": (55.0, 60.0),
    "grpo_llmjudge": (55.0, 45.0), "grpo": (55.0, 45.0), "eval": (10.0, 0.2), "build": (5.0, 0.0),
    "reward": (15.0, 0.02), "reward_judge": (30.0, 10.0),
}


# The same on the small pretrained backbone (configs/small, 2 threads of a 2-core EPYC, docs/small.md; `make small`
# with each stage in its own process): calibration 2.86 s a step, warm-up 3.37 (encoder frozen), GRPO accuracy +
# semantic 94 s a step, eval 1.7-2.3 s a clip (the long-form models write more), the reward step 6 s for 300 clips.
BACKBONE_RATES: dict[str, dict[str, tuple[float, float]]] = {
    "small": {"calibration": (30.0, 2.8), "calibration_frozen": (30.0, 2.2), "sft_reasoning": (30.0, 3.4),
              "sft": (30.0, 3.0), "merge": (20.0, 0.0), "grpo_accsem": (60.0, 94.0), "grpo": (60.0, 400.0),
              "eval": (30.0, 2.0), "reward": (20.0, 0.02), "reward_judge": (60.0, 10.0)},
}


def backbone_scale(backbone: str) -> str:
    """The ``BACKBONE_RATES`` table for a backbone name (``""``: the tiny defaults)."""
    return "small" if backbone.startswith("small-") else ""


def _fallback(step: Step) -> str:
    return {SFTStep: "sft", GRPOStep: "grpo", MergeStep: "merge", EvalStep: "eval",
            RewardStep: "reward"}.get(type(step), "build")


class Progress:
    """Runs steps in order and logs a line per step: elapsed time and an estimate of what remains."""

    min_seconds_for_speed = 30.0
    """A step shorter than this says too little about the machine's speed (start-up costs dominate)."""

    def __init__(self, steps: Iterable[Step], tag: str = "sqrl", isolate: bool = False):
        self.steps = list(steps)
        self.tag = tag
        self.isolate = isolate
        self.rates: dict[str, tuple[float, float]] = {}   # measured in this run, per kind
        self.ratios: list[float] = []                      # measured / default estimate, one per kind run
        self.t0 = time.perf_counter()
        self.record: dict[str, dict[str, Any]] = {}

    def speed_factor(self) -> float:
        """How much longer than the defaults this machine has taken so far (geometric mean; 1 before any)."""
        return math.exp(sum(map(math.log, self.ratios)) / len(self.ratios)) if self.ratios else 1.0

    def _rate(self, step: Step) -> tuple[float, float]:
        if step.kind in self.rates:
            return self.rates[step.kind]
        table = BACKBONE_RATES.get(step.scale, DEFAULT_RATES)
        fixed, per = table.get(step.kind) or table.get(_fallback(step)) or (10.0, 0.0)
        factor = self.speed_factor()
        return fixed * factor, per * factor

    def estimate(self, step: Step) -> float:
        fixed, per = self._rate(step)
        return fixed + per * step.units

    def remaining(self, start: int) -> float:
        return sum(self.estimate(s) for s in self.steps[start:] if not s.done())

    def release(self, step: Step) -> None:
        """Give back what the step freed: the next stage (or its Ray workers) needs the memory (a `make small`
        ran out of it in GRPO with ~7 GB that calibration and warm-up had freed still held by this process)."""
        freed = release_memory()
        if freed:
            log.info("[%s] %s: released %.1f GB of memory", self.tag, step.name, freed / 2**30)

    def run_all(self) -> dict[str, dict[str, Any]]:
        n, tag = len(self.steps), self.tag
        log.info("[%s] %d steps, about %.0f min of work left", tag, n, self.remaining(0) / 60)
        for i, step in enumerate(self.steps):
            reused = step.done()
            t = time.perf_counter()
            try:
                if reused:
                    log.info("[%s %d/%d] %s: %s is complete, skipping", tag, i + 1, n, step.name, step.out)
                else:
                    own = self.isolate and step.isolatable
                    log.info("[%s %d/%d] %s: starting%s (about %.1f min)", tag, i + 1, n, step.name,
                             " in its own process" if own else "", self.estimate(step) / 60)
                    run_isolated(step) if own else step.run()
                    if step.timed and step.out.is_dir():
                        _stamp(step.out, step.name, time.perf_counter() - t)
            finally:
                step.finish()
                if not reused:
                    self.release(step)
            seconds = time.perf_counter() - t
            if not reused:  # this run's own rate replaces the default for the kind
                if step.kind not in self.rates and step.units > 0 and seconds >= self.min_seconds_for_speed:
                    self.ratios.append(seconds / (self.estimate(step) / self.speed_factor()))
                fixed = min(self._rate(step)[0], seconds)
                per = (seconds - fixed) / step.units if step.units > 0 else 0.0
                self.rates[step.kind] = (fixed if step.units > 0 else seconds, per)
            self.record[step.name] = {"seconds": round(seconds, 1), "reused": reused}
            log.info("[%s %d/%d] %s %s in %.1f min | elapsed %.1f min | about %.0f min left", tag, i + 1, n,
                     step.name, "reused" if reused else "done", seconds / 60, (time.perf_counter() - self.t0) / 60,
                     self.remaining(i + 1) / 60)
        return self.record


def run_steps(steps: Iterable[Step], tag: str = "sqrl", isolate: bool = False) -> dict[str, dict[str, Any]]:
    """Run ``steps`` in order (skipping the done ones; with ``isolate`` each isolatable step in a process of its
    own); ``{name: {seconds, reused}}`` per step."""
    return Progress(steps, tag, isolate).run_all()

