"""Per-step metrics of a GRPO run: ``DIR/metrics.jsonl``, TensorBoard, a progress bar, the reward curve,
and the completions themselves with what each reward gave them (``DIR/samples.jsonl``, ``logging.samples_every``).

One JSON object per step (``step`` plus flat scalar keys: ``rewards/<name>/<dim>/mean`` from
``rewards.summarize``, ``loss``, ``kl``, ``clip_ratio/*``, ``zero_variance/*``, ``completion/*``,
``time/*``, ``tokens_per_s`` ...). On resume the rows after the checkpoint's step are dropped before
the run re-logs them, and TensorBoard purges its events after that step. The step's phases are timed
with ``Timer``; ``overhead_metrics`` sets them against the workers' own seconds.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from rewards import summarize

if TYPE_CHECKING:
    import torch

    from grpo.batch import ScoredGroups

from sqrl.fsutil import read_jsonl, truncate_jsonl

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"

PHASES = ("generate", "score", "update", "sync")
"""A step's phases; each is timed in the driver (``time/<phase>``, wall time around the Ray calls) and in
its workers (``time/<phase>_worker``, the slowest worker's own seconds per call, summed over the phase's calls)."""


class Timer:
    """Seconds per named phase of one step; a phase entered again (a resampling round) adds up."""

    def __init__(self):
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


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


def step_metrics(batch: ScoredGroups, flat: torch.Tensor, stats: Mapping[str, float], *, updated: bool,
                 seconds: Counter[str], worker_seconds: Counter[str], counters: Mapping[str, int], resampled: int,
                 epoch: int, skip_flat: bool) -> dict[str, Any]:
    """One step's row: the rewards (``rewards.summarize``), the update's ``stats``, zero-variance groups
    (``flat``: one flag per group), completion lengths, throughput, the run's counters and the timings
    (the driver's ``seconds`` per phase and the workers' own, see ``overhead_metrics``)."""
    completions = batch.completions()
    lengths = [len(c.token_ids) for c in completions]
    out: dict[str, Any] = dict(summarize(batch.scores))
    out.update(stats)
    out.update({
        "zero_variance/fraction": float(flat.float().mean()),
        "zero_variance/resampled": float(resampled),
        "zero_variance/skipped_groups": float(flat.sum()) if skip_flat else 0.0,
        "completion/mean_length": float(np.mean(lengths)),
        "completion/max_length": float(max(lengths)),
        "completion/truncated_fraction": float(np.mean([c.truncated for c in completions])),
        "update/skipped": 0.0 if updated else 1.0,
        "tokens_per_s/generate": sum(lengths) / max(seconds["generate"], 1e-9),
        "reward_worker_restarts": float(counters.get("reward_worker_restarts", 0)),
        "data/unreadable_clips": float(counters.get("unreadable_clips", 0)),
        "data/epoch": float(epoch),
    })
    if updated:
        out["tokens_per_s/update"] = stats["update/trained_tokens"] / max(seconds["update"], 1e-9)
    out.update({f"time/{k}": v for k, v in seconds.items()})
    out.update(overhead_metrics(seconds, worker_seconds))
    return out


def sample_rows(batch: ScoredGroups, advantages: torch.Tensor,
                digit_advantages: list[dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """One row per completion of the step: its clip, reference scores, text, whether it was cut, the total
    reward and each reward's value (``None``: skipped), the per-dimension components and the advantage of the
    total. Under ``algorithm.credit: scores`` (``digit_advantages``) the policy trained on per-token advantages
    instead: ``digit_advantages`` holds what each score digit got (the other tokens: grpo/batch.py)."""
    sb, G = batch.scores, batch.group_size
    rows = []
    for g, group in enumerate(batch.groups):
        for i, completion in enumerate(group.completions):
            k = g * G + i
            rows.append({
                "clip": group.record.id,
                "index": i,
                "reference": dict(group.record.scores or {}),
                "text": completion.text,
                "truncated": bool(completion.truncated),
                "reward": _clean(None if sb.total[k] is None else float(sb.total[k])),
                "rewards": {name: _clean(None if v[k] is None else float(v[k])) for name, v in sb.per_reward.items()},
                "components": {name: _clean(None if v[k] is None else float(v[k])) for name, v in sb.components.items()},
                "advantage": _clean(float(advantages[k])),
            })
            if digit_advantages is not None:
                rows[-1]["digit_advantages"] = {d: _clean(float(v)) for d, v in digit_advantages[k].items()}
    return rows


class RunLogger:
    """Writes each step's scalars to JSONL (always), TensorBoard and a tqdm bar (when enabled)."""

    def __init__(self, run_dir: str | Path, total_steps: int, *, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.samples_path = self.run_dir / SAMPLES_FILE
        truncate_jsonl(self.path, start_step)
        truncate_jsonl(self.samples_path, start_step)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="grpo", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{row[v]:.3g}" for k, v in (("reward", "rewards/total/mean"), ("kl", "kl"),
                                                                    ("s/step", "time/step")) if isinstance(row.get(v), float)})

    def log_samples(self, step: int, rows: list[Mapping[str, Any]]) -> None:
        """Append one step's completions (``sample_rows``) to ``samples.jsonl``, each row tagged with ``step``."""
        with open(self.samples_path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def _clean(value: Any) -> Any:
    # JSON has no NaN; a mean over nothing is left out upstream, a NaN here becomes null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` or ``samples.jsonl`` rows (``sqrl.fsutil.read_jsonl``)."""
    return read_jsonl(path)


def plot_reward_curve(metrics_path: str | Path, out_png: str | Path, smooth: int = 5) -> Path | None:
    """Total reward and each reward's mean per step (left), and each reward's components per dimension
    (right), with a moving average over ``smooth`` steps. None when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")))
    totals = [k for k in keys if k.count("/") == 2]  # rewards/<name>/mean and rewards/total/mean
    dims = [k for k in keys if k.count("/") == 3]  # rewards/<name>/<dim>/mean
    fig = Figure(figsize=(13 if dims else 7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if dims else 1, squeeze=False)[0]
    steps = np.array([r["step"] for r in rows])

    def draw(ax, series, title):
        for key in series:
            y = np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], dtype=float)
            label = key[len("rewards/"):-len("/mean")]
            smoothed = smooth > 1 and len(y) >= smooth
            style = {"color": "black"} if key == "rewards/total/mean" else {}
            line, = ax.plot(steps, y, lw=0.8, alpha=0.35 if smoothed else 1.0, **style)
            if smoothed:
                kernel = np.ones(smooth) / smooth
                ax.plot(steps[smooth - 1:], np.convolve(np.nan_to_num(y), kernel, mode="valid"),
                        color=line.get_color(), lw=1.8 if key == "rewards/total/mean" else 1.2, label=label)
            else:
                line.set_label(label)
        ax.set(title=title, xlabel="step", ylabel="mean reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)

    draw(axes[0], totals, "total and per-reward")
    if dims:
        draw(axes[1], dims, "components per dimension")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
