"""``sqrl compare``'s variants and plan: which stages the chosen rows need, with which overrides, in what order.

A *variant* is one entry of the compare config's ``variants`` mapping (``configs/tiny/compare.yaml``)::

    grpo_accsem:                        # the row's name: its eval folder is seed<S>/eval/grpo_accsem
      label: GRPO Acc.+Sem. dim.-wise   # the row's label in the tables
      stage: grpo                       # untrained | sft | grpo
      config: configs/tiny/grpo_accsem_dimwise.yaml
      overrides: []                     # the variant's own dotted overrides
      start: sft_reasoning              # the variant whose model it starts from

An SFT variant with a ``start`` continues that variant's adapter (``model.init`` = its folder); a GRPO variant
starts from the merged model of its ``start`` (an SFT variant), merged once into ``seed<S>/<merged>`` however
many GRPO variants share it. Within a seed every stage is trained once, whichever rows need it. Adding a row
is adding an entry; nothing here names a row.

Overrides of a stage, in order: the corpus, the shared ``sft_overrides``/``grpo_overrides``, ``model.init``
(from ``start``), the variant's own ``overrides``, then ``train.seed``.

With ``sft_seed`` set in the config, the seeds differ only in the GRPO stages: every SFT stage and merge is
trained once, with ``train.seed=<sft_seed>``, under ``shared/`` (its evaluation in ``shared/eval/<row>``), and
every seed's GRPO variants start from that one merged model; an SFT row is then seed-independent like the
untrained one. Which stages are shared follows from each variant's ``stage``, not from its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from recipes.stages import (EvalStep, GRPOStep, MergeStep, RaySession, SFTStep, Step, UntrainedStep,
                            corpus_overrides, count_lines, sft_units)
from sqrl.config import load_config

if TYPE_CHECKING:
    from recipes.compare import CompareConfig

STAGES = ("untrained", "sft", "grpo")
REASONING = ("none", "sft", "grpo")


@dataclass
class Variant:
    """One row of the comparison and the stage that trains its model (see the module docstring)."""

    label: str = ""
    """The row's label in the tables (default: its name)."""
    stage: str = "sft"
    """untrained (the base model, evaluated once, not per seed), sft or grpo."""
    config: str | None = None
    """The stage's YAML. For ``untrained``: the SFT config whose backbone (``model``) and rubric it uses."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides of this variant's stage, after the shared ones."""
    start: str | None = None
    """The variant this one starts from: an SFT variant continues its adapter, GRPO starts from its merged model."""
    folder: str | None = None
    """The stage's folder under ``seed<S>/`` (default: the variant's name)."""
    merged: str | None = None
    """Where this SFT variant's merged model goes under ``seed<S>/``, when GRPO variants start from it
    (default: ``<folder>_merged``)."""
    reasoning: str | None = None
    """How the long-form reasoning was trained (Table 1's grouping): none, sft or grpo (default: grpo for a
    GRPO variant, none otherwise)."""

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if self.reasoning is not None and self.reasoning not in REASONING:
            raise ValueError(f"reasoning must be one of {', '.join(REASONING)}, not {self.reasoning!r}")
        if not self.config:
            raise ValueError("config must name the stage's YAML")
        if self.stage == "untrained" and self.start:
            raise ValueError("an untrained variant starts from nothing (no start)")
        if self.stage == "grpo" and not self.start:
            raise ValueError("a GRPO variant needs start: the SFT variant whose merged model it trains")


@dataclass(frozen=True)
class Row:
    """A variant as the results describe it."""

    name: str
    label: str
    stage: str
    folder: str | None
    """Its model's folder under ``seed<S>/``; None: the untrained model (one for all seeds)."""
    calibration: str | None
    """The folder of the SFT stage at the root of its chain (its encoder mode is the 'Enc.' column)."""
    reasoning: str
    shared: bool = False
    """Trained once for every seed (an SFT row under ``sft_seed``: its folder is under ``shared/``)."""

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @property
    def seed_independent(self) -> bool:
        """One model and one evaluation for all seeds: the untrained row, and the shared SFT rows."""
        return self.folder is None or self.shared


def check_variants(variants: Mapping[str, Variant]) -> None:
    """Every ``start`` names a variant of the right stage and no chain loops."""
    if not variants:
        raise ValueError("variants: define at least one (see configs/tiny/compare.yaml)")
    for name, v in variants.items():
        seen = [name]
        while v.start is not None:
            if v.start not in variants:
                raise ValueError(f"variants.{seen[-1]}.start: unknown variant {v.start!r}")
            parent = variants[v.start]
            if parent.stage != "sft":
                raise ValueError(f"variants.{seen[-1]}.start: {v.start!r} is not an SFT variant")
            if v.start in seen:
                raise ValueError(f"variants.{name}: start loops through {' -> '.join(seen + [v.start])}")
            seen.append(v.start)
            v = parent


def folder(variants: Mapping[str, Variant], name: str) -> str:
    return variants[name].folder or name


def merged_folder(variants: Mapping[str, Variant], name: str) -> str:
    return variants[name].merged or f"{folder(variants, name)}_merged"


def make_row(variants: Mapping[str, Variant], name: str, sft_seed: int | None = None) -> Row:
    """Row ``name``; with ``sft_seed`` (not None) an SFT row is shared by every seed."""
    v = variants[name]
    root = name
    while variants[root].start is not None:
        root = variants[root].start
    calibrated = variants[root].stage == "sft"
    return Row(name, v.label or name, v.stage, None if v.stage == "untrained" else folder(variants, name),
               folder(variants, root) if calibrated else None,
               v.reasoning or ("grpo" if v.stage == "grpo" else "none"),
               shared=sft_seed is not None and v.stage == "sft")


def rows(variants: Mapping[str, Variant], chosen: list[str] | None = None, sft_seed: int | None = None) -> list[Row]:
    """The chosen rows (None: every variant), in the order of ``variants``; ``sft_seed``: see ``make_row``."""
    return [make_row(variants, n, sft_seed) for n in variants if chosen is None or n in chosen]


class Plan:
    """The folders, overrides and steps of a comparison into ``out``."""

    def __init__(self, cfg: CompareConfig, out: Path):
        self.cfg, self.out, self.variants = cfg, Path(out), cfg.variants

    @property
    def shared(self) -> bool:
        """The SFT stages are trained once for all seeds (``sft_seed`` is set)."""
        return self.cfg.sft_seed is not None

    def rows(self) -> list[Row]:
        """The chosen rows, shared or not as this plan trains them."""
        return rows(self.variants, self.cfg.rows, self.cfg.sft_seed)

    # ---- folders
    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    def sft_dir(self, seed: int | None) -> Path:
        """Where seed ``seed``'s SFT stages and merged models are: ``shared/`` under ``sft_seed``, else ``seed<S>/``."""
        return self.out / "shared" if self.shared else self.seed_dir(seed)

    def stage_dir(self, stage: str, seed: int | None) -> Path:
        """The folder holding a stage of kind ``stage`` (sft, merge, grpo) of seed ``seed``."""
        return self.seed_dir(seed) if stage == "grpo" else self.sft_dir(seed)

    def model_dir(self, row: Row, seed: int | None) -> Path:
        return self.out / "untrained" / "model" if row.folder is None else self.stage_dir(row.stage, seed) / row.folder

    def eval_dir(self, row: Row, seed: int | None) -> Path:
        if row.folder is None:
            return self.out / "untrained" / "eval"
        return self.stage_dir(row.stage, seed) / "eval" / row.name

    # ---- overrides
    def sft_overrides(self, name: str, seed: int | None) -> list[str]:
        """Every override of SFT variant ``name`` (or of the untrained variant's config) for ``seed``; under
        ``sft_seed`` the same for every seed, with ``train.seed=<sft_seed>``."""
        v = self.variants[name]
        out = [*corpus_overrides(self.cfg.corpus), *self.cfg.sft_overrides]
        if v.start is not None:
            out.append(f"model.init={self.sft_dir(seed) / folder(self.variants, v.start)}")
        out += v.overrides
        train_seed = self.cfg.sft_seed if self.shared else seed
        return out + ([f"train.seed={train_seed}"] if train_seed is not None else [])

    def grpo_overrides(self, name: str, seed: int) -> list[str]:
        v = self.variants[name]
        init = self.sft_dir(seed) / merged_folder(self.variants, v.start)
        return [*corpus_overrides(self.cfg.corpus), "model.bootstrap=null", *self.cfg.grpo_overrides,
                f"model.init={init}", *v.overrides, f"train.seed={seed}"]

    # ---- plan
    def needed(self) -> list[tuple[str, str]]:
        """(what, variant) pairs a seed trains, in order: ``("train", name)`` or ``("merge", name)``; each
        variant's chain comes before it, in the order of the variants."""
        need: list[tuple[str, str]] = []

        def add(name: str) -> None:
            v = self.variants[name]
            if v.start is not None:
                add(v.start)
                if v.stage == "grpo" and ("merge", v.start) not in need:
                    need.append(("merge", v.start))
            if ("train", name) not in need:
                need.append(("train", name))

        for row in rows(self.variants, self.cfg.rows):
            if row.folder is not None:
                add(row.name)
        return need

    def needed_stages(self) -> list[str]:
        """The stage folders the chosen rows need, in training order (under ``seed<S>/``; under ``sft_seed`` the
        SFT stages and merges are under ``shared/``, see ``stage_dir``)."""
        return [folder(self.variants, n) if what == "train" else merged_folder(self.variants, n)
                for what, n in self.needed()]

    def _kind(self, what: str, name: str) -> str:
        return "merge" if what == "merge" else self.variants[name].stage

    def steps(self, test_manifest: Path, train_manifest: Path) -> list[Step]:
        """Every step, in order: the untrained model and its eval; under ``sft_seed`` the shared SFT stages,
        merges and SFT evals once; then per seed its stages (only the GRPO ones under ``sft_seed``) and evals."""
        cfg = self.cfg
        n_clips, n_eval = count_lines(train_manifest), count_lines(test_manifest)
        n_eval = min(n_eval, cfg.eval.limit) if cfg.eval.limit else n_eval
        chosen = self.rows()
        steps: list[Step] = []
        for row in chosen:
            if row.folder is not None:
                continue
            model_cfg = self.sft_config(row.name, None).model
            if model_cfg.path:
                raise ValueError("the untrained row needs a tiny backbone (model.path is set); leave it out of rows")
            steps.append(UntrainedStep("untrained/model", self.model_dir(row, None), backbone=model_cfg.backbone,
                                       options=dict(model_cfg.options or {})))
            steps.append(self.eval_step(row, None, test_manifest, n_eval))
        needed = self.needed()
        if self.shared:
            steps += self.train_steps([(w, n) for w, n in needed if self._kind(w, n) != "grpo"], None, n_clips)
            steps += [self.eval_step(row, None, test_manifest, n_eval) for row in chosen
                      if row.shared]
        for seed in cfg.seeds:
            per_seed = [(w, n) for w, n in needed if not self.shared or self._kind(w, n) == "grpo"]
            steps += self.train_steps(per_seed, seed, n_clips)
            steps += [self.eval_step(row, seed, test_manifest, n_eval) for row in chosen if not row.seed_independent]
        return steps

    def train_steps(self, needed: list[tuple[str, str]], seed: int | None, n_clips: int) -> list[Step]:
        """The steps training ``needed`` (``needed()``'s pairs) for ``seed`` (None: the shared SFT stages)."""
        last_grpo = [n for what, n in needed if self._kind(what, n) == "grpo"][-1:]
        ray = RaySession()  # one Ray runtime for the seed's GRPO stages, started only when one has to train
        steps: list[Step] = []
        for what, name in needed:
            v, kind = self.variants[name], self._kind(what, name)
            target = self.stage_dir(kind, seed) / (merged_folder(self.variants, name) if what == "merge"
                                                  else folder(self.variants, name))
            label = str(target.relative_to(self.out))
            if kind == "merge":
                steps.append(MergeStep(label, target, kind="merge",
                                       adapter=self.sft_dir(seed) / folder(self.variants, name)))
            elif kind == "sft":
                overrides = self.sft_overrides(name, seed)
                steps.append(SFTStep(label, target, kind=name, units=sft_units(v.config, overrides, n_clips),
                                     config=v.config, overrides=overrides))
            else:
                step = GRPOStep(label, target, kind=name, config=v.config, overrides=self.grpo_overrides(name, seed),
                                ray=ray, close_ray=[name] == last_grpo)
                step.units = step.load().train.steps
                steps.append(step)
        return steps

    def eval_step(self, row: Row, seed: int | None, manifest: Path, n_eval: int) -> EvalStep:
        e = self.cfg.eval
        # the untrained model has no rubric of its own: the one of the config it was built from
        rubric = self.sft_config(row.name, None).data.rubric if row.folder is None else None
        out = self.eval_dir(row, seed)
        name = f"untrained/eval/{row.name}" if row.folder is None else str(out.relative_to(self.out))
        return EvalStep(name, out, units=n_eval, model=self.model_dir(row, seed),
                        manifest=manifest, limit=e.limit, batch_size=e.batch_size, max_new_tokens=e.max_new_tokens,
                        rubric=rubric)

    def sft_config(self, name: str, seed: int | None):
        from sft.config import SFTStageConfig

        return load_config(SFTStageConfig, self.variants[name].config, self.sft_overrides(name, seed))
