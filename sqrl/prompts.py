"""Rubric prompts (paper section 3.1) built from YAML data in ``configs/rubrics/``.

Three kinds of prompt:
- ``per_dimension(dim)``: one dimension with the criteria of each score (the paper's calibration);
- ``all_dimensions()``: every dimension and the artifact list at once (cheaper; the tiny default);
- ``long_form()``: the full structured answer with a long description (warm-up and GRPO).

Each prompt pairs with the target that ``targets`` renders through ``sqrl.response.render``, in the
rubric's ``answer_order``: ``scores_first`` (default) or ``artifacts_first`` (the artifact block, then the
scores). ``voice_line: true`` ends the artifact block with the voice's character (``- Voice: slightly
robotic``), the evidence for naturalness. A rubric YAML may name a ``base:`` rubric whose values it
overrides (``sqrl.config.read_yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqrl.config import find_config, read_yaml, shipped
from sqrl.dimensions import ARTIFACT_DIMENSION, DIMENSIONS, DISPLAY_NAMES, SCORE_MAX, SCORE_MIN
from sqrl.response import render
from sqrl.schema import Record

DEFAULT_RUBRIC = shipped("rubrics", "qualispeech.yaml")
PROMPTINGS = ("per_dimension", "all_dimensions", "long_form")
ANSWER_ORDERS = ("scores_first", "artifacts_first")


@dataclass(frozen=True)
class Example:
    """One training or evaluation example: a prompt and the answer it should get."""

    prompt: str
    target: str
    dimension: str | None = None  # set for per-dimension prompts


class Rubric:
    """Prompt builder over a rubric YAML; validates that every dimension has every score's criterion."""

    def __init__(self, path: str | Path | None = None):
        # configs name rubrics as configs/rubrics/...: the working folder's file, else the one shipped with sqrl
        self.path = find_config(path) if path else DEFAULT_RUBRIC
        data: dict[str, Any] = read_yaml(self.path)
        self.answer_order: str = data.get("answer_order", "scores_first")
        if self.answer_order not in ANSWER_ORDERS:
            raise ValueError(f"{self.path}: answer_order must be one of {', '.join(ANSWER_ORDERS)}, "
                             f"not {self.answer_order!r}")
        self.voice_line = data.get("voice_line", False)
        if not isinstance(self.voice_line, bool):
            raise ValueError(f"{self.path}: voice_line must be true or false, not {self.voice_line!r}")
        self.scale: str = data["scale"]
        self.dimensions: dict[str, Any] = data["dimensions"]
        self.artifacts: dict[str, str] = data["artifacts"]
        self.templates: dict[str, str] = data["templates"]
        for dim in DIMENSIONS:
            if dim not in self.dimensions:
                raise ValueError(f"{self.path}: rubric lacks dimension {dim!r}")
            crit = {int(k) for k in self.dimensions[dim]["criteria"]}
            if crit != set(range(SCORE_MIN, SCORE_MAX + 1)):
                raise ValueError(f"{self.path}: {dim} needs criteria for scores {SCORE_MIN}-{SCORE_MAX}")

    @property
    def artifacts_first(self) -> bool:
        return self.answer_order == "artifacts_first"

    def _criteria(self, dim: str) -> str:
        crit = self.dimensions[dim]["criteria"]
        return "; ".join(f"{s}: {crit[s]}" for s in sorted(crit, key=int))

    def per_dimension(self, dim: str) -> str:
        kinds = [k for k, d in ARTIFACT_DIMENSION.items() if d == dim]
        artifact = ""
        if kinds:
            artifact = self.templates["per_dimension_artifact"].format(artifact_name=self.artifacts[kinds[0]])
        elif dim == "naturalness" and self.voice_line:
            artifact = self.templates.get("per_dimension_voice", " First describe the voice.")
        return self.templates["per_dimension"].format(
            question=self.dimensions[dim]["question"],
            scale=self.scale,
            criteria=self._criteria(dim),
            name=DISPLAY_NAMES[dim],
            artifact=artifact,
        )

    def _all_criteria(self, dims: tuple[str, ...] = DIMENSIONS) -> str:
        return "\n".join(f"{DISPLAY_NAMES[d]} ({self.dimensions[d]['question']}) {self._criteria(d)}" for d in dims)

    def all_dimensions(self) -> str:
        return self.templates["all_dimensions"].format(scale=self.scale, criteria=self._all_criteria())

    def long_form(self) -> str:
        return self.templates["long_form"].format(scale=self.scale, criteria=self._all_criteria())

    def examples(self, record: Record, prompting: str) -> list[Example]:
        """The (prompt, target) pairs for one record under a prompting mode.

        ``per_dimension`` gives one example per scored dimension (artifacts of the kinds tied to that
        dimension included); ``all_dimensions`` one example without the description; ``long_form``
        one example with everything.
        """
        if prompting == "per_dimension":
            out = []
            for dim in DIMENSIONS:
                if record.scores.get(dim) is None:
                    continue
                kinds = [k for k, d in ARTIFACT_DIMENSION.items() if d == dim]
                target = render(record, dimensions=[dim], artifacts=kinds or False, description=False,
                                artifacts_first=self.artifacts_first, voice=self.voice_line)
                out.append(Example(self.per_dimension(dim), target, dim))
            return out
        if prompting == "all_dimensions":
            return [Example(self.all_dimensions(),
                            render(record, description=False, artifacts_first=self.artifacts_first,
                                   voice=self.voice_line))]
        if prompting == "long_form":
            return [Example(self.long_form(), render(record, artifacts_first=self.artifacts_first,
                                                     voice=self.voice_line))]
        raise ValueError(f"unknown prompting {prompting!r}; choose one of {', '.join(PROMPTINGS)}")


def training_prompts(model_spec: str | Path) -> tuple[str, str | None]:
    """(prompting, rubric path) a model directory was trained with; long_form and the default rubric
    when it does not say. Evaluating with other prompts than training measures the prompt, not the model."""
    import yaml

    cfg_file = Path(model_spec) / "sqrl_config.yaml"
    prompting, rubric = "long_form", None
    if cfg_file.exists():
        data = (yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}
        if data.get("prompting") in PROMPTINGS:
            prompting = data["prompting"]
        rubric = data.get("rubric")
    return prompting, rubric


def answer_format_mismatch(rubric: Rubric, model_dir: str | Path) -> str | None:
    """Why ``rubric``'s answer format (``answer_order``, ``voice_line``) is not the one the model in
    ``model_dir`` was trained to write (``training_prompts``), or ``None`` when it is, or when the model does
    not say (no ``sqrl_config.yaml``). GRPO refuses the mismatch; SFT warns (a warm-up may retrain the format)."""
    import logging

    if not (Path(model_dir) / "sqrl_config.yaml").is_file():
        return None
    trained = training_prompts(model_dir)[1]
    try:
        model_rubric = Rubric(trained)
    except (OSError, ValueError, KeyError) as exc:
        logging.getLogger(__name__).warning("cannot read the rubric %s that %s was trained with (%s); its answer "
                                            "format is not checked", trained, model_dir, exc)
        return None
    ours = (rubric.answer_order, rubric.voice_line)
    theirs = (model_rubric.answer_order, model_rubric.voice_line)
    if ours == theirs:
        return None
    return (f"data.rubric {rubric.path} asks for answer_order={ours[0]}, voice_line={ours[1]}, but {model_dir} "
            f"was trained with {model_rubric.path} (answer_order={theirs[0]}, voice_line={theirs[1]}); "
            f"set data.rubric={trained or model_rubric.path}")
