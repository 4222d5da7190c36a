"""``sqrl agreement``: does a reward rank a GRPO group's completions the way another reward does?

GRPO learns only from how a reward orders the G completions of one clip (the advantages are normalised
within the group), so a judge reward is as useful as its within-group ranking. This reads the completions
a run logged (``DIR/samples.jsonl``, ``logging.samples_every``), optionally scores them again with other
rewards (``--score``, e.g. the exact accuracy, or a judge the run did not train with), and reports per
reward:

* ``mean``, the mean within-group ``std`` and the share of ``flat`` groups (every member equal: no signal);
* ``spearman``: the mean within-group Spearman correlation with each other reward, over the groups where
  both vary (``n_groups``);
* ``truncated_minus_complete``: the mean reward of cut-off completions minus that of complete ones.

    sqrl agreement runs/x --score '{name: accuracy}' --out runs/x/agreement.json

``--score`` entries are reward config entries (YAML flow mappings, as in ``rewards.entries``); a reward that
needs a clip's artifacts or description (``semantic``, the judges on fields) looks the clips up by id in
the run's training manifest (``--manifest`` to name another).

**Models instead of completions** (``--evals``): the greedy answers of several models to the same held-out
clips (each an ``sqrl eval`` folder), one group per clip, one member per model. Scored with ``--score``, the
report adds each model's mean reward and its paired difference from the first model, clip by clip, with the
standard error of that mean difference. A GRPO run's training reward moves with the clips of each step (a few
clips a step); the same clips before and after training take that noise out. The answers are greedy unless the
evaluations sampled them (``sqrl eval --temperature``): sampled at the rollouts' temperature, they measure
what GRPO maximises (its reward in expectation over its own samples), where greedy ones measure what a user gets:

    sqrl agreement --evals start=runs/c/shared/eval/sft_reasoning --evals grpo=runs/c/seed0/eval/grpo_llmjudge \
        --score '{name: llm_judge_dimwise, ...}' --manifest data/synth/<corpus>/test.jsonl --limit 40
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from grpo.tracking import SAMPLES_FILE, read_metrics
from sqrl.evaldiff import answered_by_all, parse_evals

log = logging.getLogger(__name__)


def groups_of(samples: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Row indices per (step, clip, occurrence): a batch can hold one clip twice, each with its own group."""
    out: dict[tuple, list[int]] = defaultdict(list)
    seen: dict[tuple, int] = defaultdict(int)
    for i, s in enumerate(samples):
        if s["index"] == 0:
            seen[(s["step"], s["clip"])] += 1
        out[(s["step"], s["clip"], seen[(s["step"], s["clip"])])].append(i)
    return list(out.values())


def samples_from_evals(evals: Sequence[tuple[str, str | Path]], limit: int | None = None) -> list[dict[str, Any]]:
    """Samples (``samples.jsonl``'s fields) from ``sqrl eval`` folders (or their ``predictions.jsonl``): one group
    per clip that every model answered, the models in the given order as its members (``source``: the label).
    The first ``limit`` such clips in the first model's order."""
    clips, answers = answered_by_all(evals)
    if not clips:
        raise ValueError("--evals: no clip is answered by every model")
    samples = []
    for clip in clips[:limit]:
        for i, ((label, _), by_id) in enumerate(zip(evals, answers)):
            row = by_id[clip]
            samples.append({"step": 0, "clip": clip, "index": i, "source": label, "text": row.get("text") or "",
                            "reference": (row.get("reference") or {}).get("scores", {}), "truncated": False,
                            "rewards": {}, "components": {}})
    return samples


def by_source(samples: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per model (``source``) and reward: the mean, and the paired difference from the first model over the
    clips where both have a value, with its standard error (std of the per-clip differences / sqrt(n))."""
    sources = list(dict.fromkeys(s["source"] for s in samples))
    value = {(s["clip"], s["source"]): s["rewards"] for s in samples}
    clips = list(dict.fromkeys(s["clip"] for s in samples))
    out: dict[str, Any] = {}
    for name in names:
        rows = {}
        for src in sources:
            vals = [value[(c, src)].get(name) for c in clips]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            pairs = [(value[(c, src)].get(name), value[(c, sources[0])].get(name)) for c in clips]
            diffs = [a - b for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
            rows[src] = {
                "mean": float(np.mean(vals)) if vals else None, "n": len(vals),
                "diff": float(np.mean(diffs)) if diffs and src != sources[0] else None,
                "diff_se": float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 and src != sources[0] else None,
            }
        out[name] = rows
    return out


def heldout_reward(evals: Sequence[tuple[str, str | Path]], entries: Sequence[Any], manifest: str | Path | None,
                   aggregation: str = "sum", limit: int | None = None) -> dict[str, Any]:
    """A GRPO stage's own rewards (``entries``, as in ``rewards.entries``) on the answers (greedy, or sampled:
    ``sqrl eval --temperature``) of several models to the same held-out clips, e.g. its start model and itself: ``by_model`` holds each model's mean per reward, and
    the paired difference from the first model with its standard error (``by_source``). With ``aggregation="sum"``
    a ``total`` row is the total the stage trained on, formed as ``rewards.base.combine`` forms it (weight-0
    rewards left out; a reward without a value for any answer to a clip left out of that clip's totals);
    ``normalize_then_sum`` standardises over each batch, so it has no per-answer total. The training curve moves
    with the few clips of each step; this does not."""
    from rewards import RewardSet, combine

    weights = {e.name: e.weight for e in RewardSet.from_config(entries, aggregation).entries}
    samples = samples_from_evals(evals, limit)
    rescore(samples, entries, manifest)
    names = list(weights)
    if aggregation == "sum":
        per_reward = {n: [s["rewards"].get(n) for s in samples] for n in weights}
        # one clip's answers are one group here, as one clip's completions are in GRPO
        for s, total in zip(samples, combine(per_reward, weights, [s["clip"] for s in samples])):
            s["rewards"]["total"] = None if total is None else float(total)
        names.append("total")
    return {"clips": len({s["clip"] for s in samples}), "models": [label for label, _ in evals],
            "by_model": by_source(samples, names)}


def source_table(per_source: dict[str, Any]) -> str:
    lines = ["| reward | model | clips | mean | paired difference from the first ± s.e. |", "|---|---|---|---|---|"]
    for name, rows in per_source.items():
        for src, r in rows.items():
            mean = "-" if r["mean"] is None else f"{r['mean']:.3f}"
            diff = "-" if r["diff"] is None else f"{r['diff']:+.3f} ± {r['diff_se'] or 0:.3f}"
            lines.append(f"| {name} | {src} | {r['n']} | {mean} | {diff} |")
    return "\n".join(lines)


def rescore(samples: list[dict[str, Any]], entries: Sequence[dict], manifest: str | Path | None) -> None:
    """Add each entry's values to every sample's ``rewards`` (and its components), in place."""
    from rewards import RewardSet
    from sqrl.schema import Record, read_manifest

    by_id = {r.id: r for r in read_manifest(manifest)} if manifest else {}
    refs, missing = [], set()
    for s in samples:
        rec = by_id.get(s["clip"])
        if rec is None:
            missing.add(s["clip"])
            rec = Record(id=s["clip"], audio="", scores=s["reference"])
        refs.append(rec)
    if missing:
        log.warning("%d clips not in %s: their references carry the logged scores only (no artifacts or description, "
                    "so a reward that reads those sees none)", len(missing), manifest or "any manifest")
    from tqdm.auto import tqdm

    rs = RewardSet.from_config([{**e, "weight": 0.0} for e in entries])
    # a group at a time (a judge shares the clip's prefix across its members), with progress: a CPU judge
    # takes seconds a completion
    for idx in tqdm(groups_of(samples), desc="rescore", unit="group"):
        scored = rs.score([samples[i]["text"] for i in idx], [refs[i] for i in idx])
        for name, values in scored.per_reward.items():
            for i, v in zip(idx, values):
                samples[i]["rewards"][name] = None if v is None else float(v)
        for name, values in scored.components.items():
            for i, v in zip(idx, values):
                samples[i].setdefault("components", {})[name] = None if v is None else float(v)


def add_component_rows(samples: list[dict[str, Any]], prefix: str) -> list[str]:
    """Each component named ``prefix/...`` as a reward row of its own, and ``prefix/mean``, the mean of those
    present (e.g. ``llm_judge_unified/analysis``: the unified judge's own per-dimension lines); the new names."""
    keys = sorted({k for s in samples for k in s.get("components", {}) if k.startswith(prefix + "/")})
    if not keys:
        raise ValueError(f"no component starts with {prefix + '/'!r}")
    for s in samples:
        vals = [s["components"].get(k) for k in keys]
        for k, v in zip(keys, vals):
            s["rewards"][k] = v
        present = [v for v in vals if v is not None]
        s["rewards"][f"{prefix}/mean"] = float(np.mean(present)) if present else None
    return keys + [f"{prefix}/mean"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two equally long lists (ties averaged); None when either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(samples: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """The report described in the module docstring, for the rewards ``names`` (default: every one logged)."""
    names = list(names or dict.fromkeys(k for s in samples for k in s["rewards"]))
    groups = groups_of(samples)

    def values(idx: list[int], name: str) -> list[float] | None:
        vals = [samples[i]["rewards"].get(name) for i in idx]
        return None if any(v is None or not math.isfinite(v) for v in vals) else [float(v) for v in vals]

    out: dict[str, Any] = {"n_samples": len(samples), "n_groups": len(groups), "rewards": {}}
    for name in names:
        per_group = [v for v in (values(g, name) for g in groups) if v is not None]
        flat_vals = [x for v in per_group for x in v]
        trunc = [samples[i]["rewards"][name] for g in groups for i in g
                 if samples[i]["truncated"] and samples[i]["rewards"].get(name) is not None]
        done = [samples[i]["rewards"][name] for g in groups for i in g
                if not samples[i]["truncated"] and samples[i]["rewards"].get(name) is not None]
        row: dict[str, Any] = {
            "mean": float(np.mean(flat_vals)) if flat_vals else None,
            "group_std": float(np.mean([np.std(v) for v in per_group])) if per_group else None,
            "flat": float(np.mean([np.ptp(v) == 0 for v in per_group])) if per_group else None,
            "truncated_fraction": float(np.mean([samples[i]["truncated"] for g in groups for i in g])),
            "truncated_minus_complete": float(np.mean(trunc) - np.mean(done)) if trunc and done else None,
            "spearman": {},
        }
        for other in names:
            if other == name:
                continue
            rhos = []
            for g in groups:
                a, b = values(g, name), values(g, other)
                if a is not None and b is not None:
                    rho = spearman(a, b)
                    if rho is not None:
                        rhos.append(rho)
            row["spearman"][other] = {"mean": float(np.mean(rhos)) if rhos else None, "n_groups": len(rhos)}
        out["rewards"][name] = row
    return out


def table(report: dict[str, Any]) -> str:
    names = list(report["rewards"])
    head = ["reward", "mean", "group std", "flat groups", "trunc - complete"] + [f"rho vs {n}" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x, nd=3):
        return "-" if x is None else f"{x:.{nd}f}"

    for n in names:
        r = report["rewards"][n]
        rhos = [("-" if o == n else f"{f(r['spearman'][o]['mean'], 2)} ({r['spearman'][o]['n_groups']})") for o in names]
        lines.append("| " + " | ".join([n, f(r["mean"]), f(r["group_std"]), f(r["flat"], 2),
                                         f(r["truncated_minus_complete"])] + rhos) + " |")
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("samples", nargs="?", default=None, help="a GRPO run directory, or its samples.jsonl")
    ap.add_argument("--evals", action="append", default=[], metavar="LABEL=DIR",
                    help="instead of a run: an `sqrl eval` folder's answers as one model (repeat, 2 or more); "
                         "each held-out clip is a group with one member per model")
    ap.add_argument("--limit", type=int, default=None, help="with --evals: the first N clips only")
    ap.add_argument("--score", action="append", default=[],
                    help="a reward entry to score the completions with, e.g. '{name: accuracy}' (repeatable)")
    ap.add_argument("--manifest", default=None,
                    help="the clips by id, for --score rewards that read artifacts or descriptions "
                         "(default: the run's training manifest, from its sqrl_config.yaml)")
    ap.add_argument("--components", action="append", default=[],
                    help="also rank by the components under this prefix and their mean, e.g. llm_judge_unified/analysis")
    ap.add_argument("--steps", default=None, help="only these steps, e.g. 1-10")
    ap.add_argument("--out", default=None, help="write the report as JSON (and the rescored samples beside it)")


def run(args: argparse.Namespace) -> int:
    import yaml

    evals, limit = getattr(args, "evals", None) or [], getattr(args, "limit", None)
    if bool(args.samples) == bool(evals):
        raise SystemExit("give a GRPO run (samples) or --evals LABEL=DIR twice or more, not both")
    if evals and not args.score:
        raise SystemExit("--evals needs --score: eval answers carry no rewards")
    if evals:
        pairs = parse_evals(evals)
        try:
            samples = samples_from_evals(pairs, limit)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(str(exc)) from None
        path, run_dir = Path(pairs[0][1]), None
    else:
        path = Path(args.samples)
        run_dir = path if path.is_dir() else path.parent
        path = path / SAMPLES_FILE if path.is_dir() else path
        if not path.exists():
            raise SystemExit(f"{path} does not exist (a GRPO run writes it when logging.samples_every > 0)")
        samples = read_metrics(path)
    if args.steps:
        lo, _, hi = args.steps.partition("-")
        samples = [s for s in samples if int(lo) <= s["step"] <= int(hi or lo)]
    if not samples:
        raise SystemExit(f"no samples in {path}" + (f" for steps {args.steps}" if args.steps else ""))
    if args.score:
        manifest = Path(args.manifest) if args.manifest else (run_manifest(run_dir) if run_dir else None)
        if args.manifest and not manifest.exists():
            raise SystemExit(f"--manifest {manifest} does not exist")
        rescore(samples, [yaml.safe_load(e) for e in args.score], manifest)
    for prefix in args.components:
        add_component_rows(samples, prefix)
    report = agreement(samples)
    report["source"] = str(path)
    print(table(report))
    if evals:
        report["by_model"] = by_source(samples, list(report["rewards"]))
        print()
        print(source_table(report["by_model"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        if args.score:
            with open(Path(args.out).with_suffix(".samples.jsonl"), "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(s) + "\n" for s in samples)
    return 0


def run_manifest(run_dir: Path) -> Path | None:
    """The training manifest of the run in ``run_dir`` (its saved config), when it can be found."""
    config = run_dir / "sqrl_config.yaml"
    if not config.exists():
        return None
    from grpo.config import GRPOConfig
    from sqrl.config import load_config

    data = load_config(GRPOConfig, config, []).data
    if data.train:
        return Path(data.train)
    from sqrl.data.synth import corpus_dir

    manifest = corpus_dir(data.synth.root, data.synth.num, data.synth.seed) / "train.jsonl"
    return manifest if manifest.exists() else None


def register(sub) -> None:
    p = sub.add_parser("agreement", help="how each reward ranks a GRPO run's completions against the others",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
