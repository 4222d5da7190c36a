"""The one stage runner: its rule for "done", its rule for "fresh", and skipping on a rerun."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.stages import EvalStep, GRPOStep, Progress, UntrainedStep, is_done, is_fresh, run_steps
from sqrl.models import META_FILE


def _touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.utime(path, (mtime, mtime))


def test_a_model_folder_is_done_only_once_its_stage_wrote_the_model_file(tmp_path):
    out = tmp_path / "calibration"
    assert not is_done(out)
    (out / "checkpoints").mkdir(parents=True)  # an interrupted stage: checkpoints, no sqrl_model.json
    assert not is_done(out)
    _touch(out / META_FILE, 1000)
    assert is_done(out)


def test_a_finished_grpo_run_from_another_start_model_is_an_error_not_reused(tmp_path):
    """The GRPO stage's folder is the same with and without compare's sft_seed; only its start model differs."""
    run = tmp_path / "seed0" / "grpo_accsem"
    step = GRPOStep("seed0/grpo_accsem", run, config="configs/tiny/grpo_accsem_dimwise.yaml",
                    overrides=[f"model.init={tmp_path / 'shared' / 'merged'}", "model.bootstrap=null"])
    assert not step.done()  # nothing there yet
    run.mkdir(parents=True)
    (run / "sqrl_config.yaml").write_text(f"model:\n  init: {tmp_path / 'seed0' / 'merged'}\n")
    assert not step.done()  # interrupted: resumed, not judged
    (run / META_FILE).write_text("{}")
    with pytest.raises(ValueError, match="finished GRPO run from .*seed0/merged.*--overwrite"):
        step.done()
    (run / "sqrl_config.yaml").write_text(f"model:\n  init: {tmp_path / 'shared' / '..' / 'shared' / 'merged'}\n")
    assert step.done()  # the same start model, however spelled


def test_a_finished_grpo_run_from_a_byte_identical_copy_of_the_start_model_is_reused(tmp_path):
    """A second seed trained in another folder that holds a copy of ``shared/`` joins the first folder."""
    planned, copy = tmp_path / "shared" / "merged", tmp_path / "copy" / "shared" / "merged"
    for folder in (planned, copy):
        (folder / "sub").mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights" * 100)
        (folder / "sub" / "config.json").write_text("{}")
    run = tmp_path / "seed1" / "grpo_accsem"
    run.mkdir(parents=True)
    (run / "sqrl_config.yaml").write_text(f"model:\n  init: {copy}\n")
    (run / META_FILE).write_text("{}")
    step = GRPOStep("seed1/grpo_accsem", run, config="configs/tiny/grpo_accsem_dimwise.yaml",
                    overrides=[f"model.init={planned}", "model.bootstrap=null"])
    assert step.done()
    (copy / "model.safetensors").write_bytes(b"weightz" * 100)  # same size, other bytes
    with pytest.raises(ValueError, match="finished GRPO run from"):
        step.done()
    (copy / "model.safetensors").write_bytes(b"weights" * 100)
    (copy / "extra.bin").write_bytes(b"x")  # one more file
    with pytest.raises(ValueError, match="finished GRPO run from"):
        step.done()
    (copy / "extra.bin").unlink()
    shutil.rmtree(copy)  # the recorded start model is gone: not the same
    with pytest.raises(ValueError, match="finished GRPO run from"):
        step.done()


def test_an_evaluation_is_fresh_while_it_is_not_older_than_its_model(tmp_path):
    model, metrics = tmp_path / "model", tmp_path / "eval" / "metrics.json"
    assert not is_fresh(metrics, model)
    _touch(metrics, 2000)
    assert is_fresh(metrics, model)  # nothing to compare against: the result stands
    _touch(model / META_FILE, 1000)
    assert is_fresh(metrics, model)
    _touch(model / META_FILE, 3000)  # the model was retrained since
    assert not is_fresh(metrics, model)
    _touch(metrics, 3000)
    assert is_fresh(metrics, model)


def test_the_runner_builds_evaluates_then_skips_both_and_reevaluates_a_retrained_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SQRL_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "untrained"
    evaluated = []

    class CountingEval(EvalStep):
        def run(self) -> None:  # the evaluation itself is sqrl eval's business (tests/sqrl/test_evaluate.py)
            evaluated.append(self.name)
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "metrics.json").write_text(json.dumps({"n": len(evaluated)}))

    steps = [UntrainedStep("build", model, options={"window_s": 5}),
             CountingEval("eval", tmp_path / "eval", model=model, manifest=tmp_path / "test.jsonl")]
    first = run_steps(steps)
    assert [r["reused"] for r in first.values()] == [False, False] and is_done(model)
    assert json.loads((model / META_FILE).read_text())["kind"] == "full"
    second = run_steps(steps)
    assert [r["reused"] for r in second.values()] == [True, True] and evaluated == ["eval"]
    meta = model / META_FILE
    os.utime(meta, (meta.stat().st_mtime + 10, meta.stat().st_mtime + 10))  # "retrained"
    third = run_steps(steps)
    assert [r["reused"] for r in third.values()] == [True, False] and steps[1].metrics() == {"n": 2}


def test_the_estimate_uses_the_kind_then_the_stage_type_and_then_what_this_run_measured(tmp_path):
    from recipes.stages import GRPOStep, SFTStep

    progress = Progress([SFTStep("a", tmp_path / "a", kind="calibration", units=100),
                         SFTStep("b", tmp_path / "b", kind="my_new_row", units=100),
                         GRPOStep("c", tmp_path / "c", kind="grpo_other", units=10)])
    # calibration: 15 s + 0.43 s/step; an unknown SFT kind: the SFT default 15 + 0.5/step; GRPO: 55 + 45/step
    assert [progress.estimate(s) for s in progress.steps] == [pytest.approx(58.0), 65.0, 505.0]
    assert progress.remaining(0) == pytest.approx(58.0 + 65.0 + 505.0)


def test_kinds_not_run_yet_are_estimated_at_the_speed_this_machine_showed(tmp_path, monkeypatch):
    """A machine 4x slower than the defaults: after the first step, the next kind's estimate is 4x too."""
    import recipes.stages as stages
    from recipes.stages import GRPOStep, SFTStep

    clock = [0.0]
    monkeypatch.setattr(stages.time, "perf_counter", lambda: clock[0])

    def timed(base):
        """``base`` whose run takes ``seconds`` on the fake clock."""

        @dataclass
        class Timed(base):
            seconds: float = 0.0

            def done(self) -> bool:
                return False

            def run(self) -> None:
                clock[0] += self.seconds

        return Timed

    Timed, TimedGRPO = timed(SFTStep), timed(GRPOStep)
    calib = Timed("calib", tmp_path / "a", kind="calibration", units=100, seconds=4 * 58.0)   # default 58 s
    tiny = Timed("tiny", tmp_path / "t", kind="sft_reasoning", units=0, seconds=5.0)        # says nothing
    grpo = TimedGRPO("grpo", tmp_path / "g", kind="grpo_llmjudge", units=10, seconds=1.0)
    progress = Progress([calib, tiny, grpo])
    assert progress.estimate(grpo) == pytest.approx(505.0) and progress.speed_factor() == 1.0
    progress.run_all()
    assert progress.speed_factor() == pytest.approx(4.0)          # the 0-unit step was not counted
    assert progress.estimate(calib) == pytest.approx(4 * 58.0)    # measured kinds keep their own rate
    fresh = SFTStep("warm", tmp_path / "w", kind="sft_reasoning", units=100)
    assert progress.estimate(fresh) == pytest.approx(5.0 + 0.0)   # its own (0-unit) measurement
    other = GRPOStep("other", tmp_path / "o", kind="grpo_unified", units=20)
    assert progress.estimate(other) == pytest.approx(4 * (55.0 + 60.0 * 20))


def test_the_pipeline_sizes_each_step_so_that_its_estimate_scales(tmp_path):
    """Without sizes every step was estimated at its fixed start-up cost: `make small` said "about 2 min of work
    left" before a 37-min calibration."""
    from recipes.pipeline import PipelineConfig, stage_steps
    from sqrl.config import load_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("{}\n" * 1700 + "\n")
    (corpus / "test.jsonl").write_text("{}\n" * 300)
    cfg = load_config(PipelineConfig, "configs/small/pipeline.yaml", ["eval.limit=100"])
    steps, _ = stage_steps(cfg, tmp_path / "run", corpus / "test.jsonl")
    sizes = {s.name: (s.kind, s.units) for s in steps}
    # 2 epochs of 1,700 clips in batches of 4; the warm-up's 150 steps; 20 GRPO steps with no judge; 100 clips
    assert sizes == {"calibration": ("calibration", 850), "warmup": ("sft_reasoning", 150), "merge": ("merge", 0),
                     "grpo": ("grpo_accsem", 20), "eval/calibration": ("eval", 100), "eval/warmup": ("eval", 100),
                     "eval/grpo": ("eval", 100), "reward/grpo": ("reward", 100)}
    # the small backbone's own rates: calibration 850 x 2.6 s, ..., 100-clip evals: about 1.5 h
    assert 75 * 60 < Progress(steps).remaining(0) < 120 * 60
    assert [s.scale for s in steps] == ["small"] * 8
    tiny, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml", []), tmp_path / "t",
                          corpus / "test.jsonl")
    assert {s.scale for s in tiny} == {""}


@pytest.mark.parametrize("calibration, warmup, refused", [("trainable", "frozen", False), ("trainable", "lora", True),
                                                            ("frozen", "trainable", True), ("lora", "lora", False)])
def test_the_pipeline_refuses_a_warmup_that_cannot_continue_the_calibration_before_it_runs(tmp_path, calibration,
                                                                                            warmup, refused):
    from recipes.pipeline import PipelineConfig, stage_steps
    from sqrl.config import load_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train", "test"):
        (corpus / f"{name}.jsonl").write_text("{}\n" * 8)
    cfg = load_config(PipelineConfig, "configs/small/pipeline.yaml",
                      [f"calibration.overrides=[lora.encoder_mode={calibration}]",
                       f"warmup.overrides=[lora.encoder_mode={warmup}]"])
    if refused:
        with pytest.raises(ValueError, match=f"warmup: lora.encoder_mode={warmup}, but .* encoder_mode={calibration}"):
            stage_steps(cfg, tmp_path / "run", corpus / "test.jsonl")
    else:
        steps, _ = stage_steps(cfg, tmp_path / "run", corpus / "test.jsonl")
        assert [s.load().lora.encoder_mode for s in steps[:2]] == [calibration, warmup]
    assert not (tmp_path / "run").exists()  # nothing was started


def test_the_runner_gives_back_the_memory_a_step_freed(tmp_path, caplog):
    import logging
    import sys

    import torch

    from recipes.stages import Step

    if not sys.platform.startswith("linux"):
        pytest.skip("trims glibc's heap")
    kept = []

    @dataclass
    class Fragmenting(Step):
        def done(self) -> bool:
            return False

        def run(self) -> None:  # leaves ~300 MB of freed, fragmented heap behind, as a Trainer does
            blocks = [torch.ones(4096) for _ in range(20_000)]
            kept.extend(blocks[::100])

    with caplog.at_level(logging.INFO, logger="recipes.stages"):
        run_steps([Fragmenting("frag", tmp_path / "f", units=1)])
    released = [r.getMessage() for r in caplog.records if "released" in r.getMessage()]
    assert len(released) == 1 and float(released[0].split("released ")[1].split(" GB")[0]) >= 0.2


def test_the_pipeline_report_sums_the_stages_times_across_calls(tmp_path):
    """`make small` ran out of memory in GRPO and a second call finished it; its report said 77.5 min, the
    second call alone. The report now sums the stages' own times, whichever call finished each (a stage
    interrupted and continued counts its last call only)."""
    from recipes.pipeline import time_lines
    from recipes.stages import _stamp, stage_seconds

    steps = [UntrainedStep(name, tmp_path / name) for name in ("calibration", "warmup", "grpo")]
    for step, seconds in zip(steps[:2], (2232.0, 630.0)):
        step.out.mkdir()
        _stamp(step.out, step.name, seconds)
    times = stage_seconds(steps)
    assert times == {"calibration": 2232.0, "warmup": 630.0, "grpo": None}
    lines = time_lines({"seconds": 60.0, "stage_seconds": times})
    assert lines[0] == "Total time: 47.7 min over the stages (this call: 1.0 min; no time recorded for grpo)."
    assert "| calibration | 37.2 |" in lines and "| warmup | 10.5 |" in lines
    assert time_lines({"seconds": 90.0}) == ["Total time: 1.5 min."]  # a results.json from before the stamps


def test_an_isolated_step_runs_in_a_process_of_its_own_and_its_failure_stops_the_run(tmp_path, monkeypatch, capfd):
    """`isolate` (the small pipeline's setting): each SFT, merge and eval stage in a fresh interpreter, since
    stages that followed the calibration in one process ran 30-50% slower. The proof that the step ran
    elsewhere: this process's `untrained_init` is broken, the child's is not."""
    import sqrl.models
    from recipes.stages import StepFailed

    def broken(*args, **kwargs):
        raise AssertionError("ran in the runner's own process")

    monkeypatch.setattr(sqrl.models, "untrained_init", broken)
    good = UntrainedStep("build", tmp_path / "good", options={"window_s": 5})
    with pytest.raises(AssertionError, match="runner's own process"):
        run_steps([good])  # not isolated: this process
    record = run_steps([good], isolate=True)
    assert is_done(good.out) and not record["build"]["reused"]
    assert run_steps([good], isolate=True)["build"]["reused"]  # done: not started again

    bad = UntrainedStep("calibration", tmp_path / "bad", backbone="no-such-backbone")
    capfd.readouterr()
    with pytest.raises(StepFailed, match=r"calibration failed in its own process \(exit code 1\)"):
        run_steps([bad, UntrainedStep("after", tmp_path / "after")], isolate=True)
    assert "no-such-backbone" in capfd.readouterr().err  # the child's traceback reached this terminal
    assert not (tmp_path / "after").exists()  # the run stopped at the failure


def test_grpo_steps_stay_in_the_runners_process_when_isolating():
    """Their driver shares the pipeline's Ray session; the policy already runs in Ray's workers."""
    from recipes.stages import MergeStep, SFTStep

    from recipes.stages import RewardStep

    assert GRPOStep.isolatable is False
    assert all(cls.isolatable for cls in (SFTStep, MergeStep, EvalStep, UntrainedStep, RewardStep))


SLOW_STEP = """
import os, time
from dataclasses import dataclass
from recipes.stages import Step

@dataclass
class Slow(Step):
    isolatable = True

    def done(self):
        return False

    def run(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "pid").write_text(str(os.getpid()))
        time.sleep(120)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stages_own_process_ends_with_the_runner_however_it_is_stopped(tmp_path, how):
    """`kill` of the pipeline must not leave its calibration training on into the folder the next call resumes."""
    import signal
    import subprocess
    import sys

    (tmp_path / "slowstep.py").write_text(SLOW_STEP)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from slowstep import Slow; "
              "from recipes.stages import run_steps; run_steps([Slow('slow', Path(sys.argv[1]) / 'out')], isolate=True)")
    runner = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "out" / "pid"
    deadline = time.time() + 120
    while not pid_file.exists() and time.time() < deadline and runner.poll() is None:
        time.sleep(0.2)
    assert pid_file.exists(), runner.stderr.read() if runner.poll() is not None else "no child after 120 s"
    child = int(pid_file.read_text())
    assert child != runner.pid
    runner.send_signal(getattr(signal, how))
    code = runner.wait(60)
    assert code == (-9 if how == "SIGKILL" else 143)

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie has ended

    deadline = time.time() + 30
    while alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(child)


def _eval_folder(folder: Path, answers: dict[str, dict[str, int]], refs: dict[str, dict[str, int]]) -> Path:
    from sqrl.response import render
    from sqrl.schema import Record

    folder.mkdir(parents=True)
    rows = [{"id": c, "text": render(Record(id=c, audio="", scores=s)),
             "reference": Record(id=c, audio="", scores=refs[c]).to_dict()} for c, s in answers.items()]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text("{}")
    return folder


def test_the_pipeline_scores_grpos_own_reward_on_held_out_clips_start_against_end(tmp_path):
    """GRPO's training reward moves with the four clips of each step (5.88 -> 6.24, standard error ~0.52 in a
    `make small`); the same held-out clips before and after GRPO, paired, take that noise out."""
    from recipes.pipeline import PipelineConfig, reward_lines, stage_steps
    from recipes.stages import RewardStep
    from sqrl.config import load_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("{}\n" * 40)
    (corpus / "test.jsonl").write_text("{}\n" * 3)
    steps, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml", []), tmp_path / "run",
                           corpus / "test.jsonl")
    reward = steps[-1]
    assert isinstance(reward, RewardStep) and reward.kind == "reward"
    assert [label for label, _ in reward.evals] == ["start (warmup)", "grpo"]
    # a judge's rewards (seconds an answer on a CPU) are scored only when asked
    judged = ["grpo.config=configs/tiny/grpo_llmjudge_dimwise.yaml"]
    for extra, scored in (([], False), (["eval.grpo_reward=true"], True)):
        steps, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml", judged + extra),
                               tmp_path / "run", corpus / "test.jsonl")
        assert isinstance(steps[-1], RewardStep) is scored

    refs = {"c0": {"noise": 1, "overall": 2}, "c1": {"noise": 3, "overall": 3}, "c2": {"noise": 5, "overall": 4}}
    start = _eval_folder(tmp_path / "run" / "eval" / "warmup", {c: {"noise": 2, "overall": 1} for c in refs}, refs)
    _eval_folder(tmp_path / "run" / "eval" / "grpo", {**refs, "c2": {"noise": 5, "overall": 1}}, refs)
    reward.overrides = [o for o in reward.overrides if not o.startswith("data.")]
    reward.manifest = None  # the references the eval folders carry: no artifacts on either side
    assert not reward.done()
    run_steps([reward])
    result = reward.result()
    acc, total = result["by_model"]["accuracy"], result["by_model"]["total"]
    # the tiny config's accuracy: exact matches over every dimension present; start 0, GRPO 2, 2, 1
    assert acc["start (warmup)"]["mean"] == 0.0 and acc["grpo"]["diff"] == pytest.approx(5 / 3)
    # semantic: no artifact named on either side scores 1 per kind for both models; the total is their sum
    semantic = result["by_model"]["semantic"]
    assert semantic["grpo"]["diff"] == 0.0 and total["grpo"]["diff"] == pytest.approx(5 / 3)
    assert total["grpo"]["mean"] == pytest.approx(5 / 3 + semantic["grpo"]["mean"])
    assert reward.done() and run_steps([reward])["reward/grpo"]["reused"]
    reward.overrides.append("rewards.entries=[{name: accuracy}]")  # other rewards named now: scored again
    assert not reward.done()
    reward.overrides.pop()
    os.utime(start / "metrics.json", (time.time() + 5, time.time() + 5))  # the start model evaluated again
    assert not reward.done()
    text = "\n".join(reward_lines(result))
    assert "same 3 held-out clips" in text and "| accuracy | grpo | 3 | 1.667 | +1.667" in text

    # without a warm-up, GRPO starts from the calibration; rewards that read the audio are refused before it runs
    steps, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml", ["warmup.enabled=false"]),
                           tmp_path / "run", corpus / "test.jsonl")
    assert steps[-1].evals[0] == ("start (calibration)", tmp_path / "run" / "eval" / "calibration")
    with pytest.raises(ValueError, match="read the audio"):
        stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml",
                                ["eval.grpo_reward=true", "grpo.overrides=[rewards.pass_audio=true]"]),
                    tmp_path / "run", corpus / "test.jsonl")



def test_the_pipeline_also_scores_grpos_reward_on_sampled_answers_when_asked(tmp_path):
    """GRPO maximises its reward over its own samples; greedy answers measure what a user gets. With
    ``eval.sampled_reward`` the pipeline evaluates the start and the GRPO model once more, sampling at the GRPO
    config's temperature, and scores those answers too; they never enter the PCC table."""
    from recipes.pipeline import PipelineConfig, results_table, reward_lines, stage_steps
    from recipes.stages import EvalStep, RewardStep
    from sqrl.config import load_config

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("{}\n" * 40)
    (corpus / "test.jsonl").write_text("{}\n" * 3)
    run = tmp_path / "run"
    plain, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml", []), run, corpus / "test.jsonl")
    steps, _ = stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml",
                                       ["eval.sampled_reward=true", "grpo.overrides=[rollout.temperature=0.6]"]),
                           run, corpus / "test.jsonl")
    assert [s.name for s in steps[len(plain):]] == ["eval/warmup_sampled", "eval/grpo_sampled", "reward/grpo_sampled"]
    sampled = [s for s in steps if isinstance(s, EvalStep) and s.temperature is not None]
    assert [(s.model, s.temperature, s.seed) for s in sampled] == [(run / "warmup", 0.6, 0), (run / "grpo", 0.6, 0)]
    assert all(s.temperature is None for s in plain if isinstance(s, EvalStep))
    reward = steps[-1]
    assert isinstance(reward, RewardStep) and reward.evals == [("start (warmup)", run / "eval" / "warmup_sampled"),
                                                               ("grpo", run / "eval" / "grpo_sampled")]
    with pytest.raises(ValueError, match="eval.grpo_reward"):
        stage_steps(load_config(PipelineConfig, "configs/tiny/pipeline.yaml",
                                ["eval.sampled_reward=true", "eval.grpo_reward=false"]), run, corpus / "test.jsonl")

    refs = {"c0": {"noise": 1}, "c1": {"noise": 3}, "c2": {"noise": 5}}
    for name, answers in (("calibration", refs), ("warmup", {c: {"noise": 2} for c in refs}), ("grpo", refs),
                          ("warmup_sampled", {c: {"noise": 4} for c in refs}), ("grpo_sampled", {**refs, "c2": {"noise": 1}})):
        _eval_folder(run / "eval" / name, answers, refs)
    for step in steps:
        if isinstance(step, RewardStep):
            step.overrides = [o for o in step.overrides if not o.startswith("data.")]
            step.manifest = None
    run_steps([s for s in steps if isinstance(s, RewardStep)])
    table = results_table(steps)
    assert sorted(table["stages"]) == ["calibration", "grpo", "warmup"]  # no sampled evaluation among the stages
    assert table["grpo_heldout_reward"]["by_model"]["accuracy"]["grpo"]["diff"] == pytest.approx(1.0)
    assert table["grpo_heldout_reward_sampled"]["by_model"]["accuracy"]["grpo"]["diff"] == pytest.approx(2 / 3)
    text = "\n".join(reward_lines(table["grpo_heldout_reward"], table["grpo_heldout_reward_sampled"]))
    assert "greedy answers to the same 3 held-out clips" in text and "sampled as GRPO's rollouts sample (3 clips)" in text
    assert "| accuracy | grpo | 3 | 0.667 | +0.667" in text