"""Configuration of the SFT stages (calibration and long-form warm-up), one dataclass per concern."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqrl.config import bounded, check_ranges
from sqrl.prompts import PROMPTINGS

ENCODER_MODES = ("trainable", "frozen", "lora")


@dataclass
class ModelConfig:
    backbone: str = "tiny-qwen2-audio"
    """Backbone registry name (sqrl/backbones.py): tiny-qwen2-audio, tiny-af3, qwen2-audio, audio-flamingo-3."""
    options: dict = field(default_factory=dict)
    """Tiny-build options (sqrl/backbones TinySpec fields), e.g. {window_s: 5}: a cheaper encoder window
    for CPU runs where vLLM is not involved."""
    path: str | None = None
    """Base weights: a local directory (or hub id for released models). None: the backbone's default."""
    init: str | None = None
    """Start from an sqrl model directory (e.g. the calibration output for the warm-up); its adapter
    keeps training. Overrides ``path`` and ``backbone``."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), float32 or bfloat16."""

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")


@dataclass
class LoraSettings:
    rank: int = bounded(64, ge=1)
    """LoRA rank on every linear layer of the LLM (paper: 64)."""
    alpha: int | None = bounded(None, ge=1)
    """LoRA alpha; None: equal to ``rank`` (scaling 1)."""
    dropout: float = bounded(0.05, ge=0, lt=1)
    encoder_mode: str = "trainable"
    """trainable: audio tower and projector trained in full (the paper's calibration); frozen: tower
    frozen, projector trained; lora: LoRA on the tower too."""

    def __post_init__(self):
        check_ranges(self)
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"lora.encoder_mode must be one of {', '.join(ENCODER_MODES)}, not {self.encoder_mode!r}")


@dataclass
class SynthSettings:
    root: str = "data/synth"
    """Folder under which corpora are cached by seed and size."""
    num: int = bounded(2000, ge=1)
    seed: int = bounded(0, ge=0)
    """numpy seeds the corpus with it: a non-negative integer."""

    def __post_init__(self):
        check_ranges(self)


@dataclass
class DataConfig:
    train: str | None = None
    """Training manifest (JSONL). None: use the synthetic corpus of ``synth`` (made when absent)."""
    eval: str | None = None
    """Held-out manifest; None: the synthetic test split when ``synth`` is used."""
    synth: SynthSettings | None = field(default_factory=SynthSettings)
    rubric: str | None = None
    """Rubric YAML (default configs/rubrics/qualispeech.yaml)."""
    prompting: str = "all_dimensions"
    """per_dimension (the paper: one dimension per prompt), all_dimensions (cheaper), long_form (warm-up)."""
    max_seconds: float = bounded(30.0, gt=0)
    """Clips longer than this are skipped and counted."""
    limit: int | None = bounded(None, ge=1)
    """Use only the first N clips (quick runs)."""

    def __post_init__(self):
        check_ranges(self)
        if self.prompting not in PROMPTINGS:
            raise ValueError(f"data.prompting must be one of {', '.join(PROMPTINGS)}, not {self.prompting!r}")
        if self.train is None and self.synth is None:
            raise ValueError("data.train or data.synth must be set")


@dataclass
class DeepSpeedSettings:
    enabled: bool = True
    stage: int = bounded(2, ge=0, le=3)
    """ZeRO stage: 2 by default, 3 for 7B backbones."""
    offload_optimizer: bool = False

    def __post_init__(self):
        check_ranges(self)


@dataclass
class TrainSettings:
    epochs: float = bounded(1.0, gt=0)
    max_steps: int = bounded(-1, ge=1, also=(-1,))
    """Stop after this many optimizer steps (-1: run ``epochs``)."""
    batch_size: int = bounded(8, ge=1)
    """Per-device micro-batch."""
    grad_accum: int = bounded(1, ge=1)
    lr: float = bounded(1.5e-5, gt=0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = bounded(0.03, ge=0, le=1)
    weight_decay: float = bounded(0.0, ge=0)
    max_grad_norm: float = bounded(1.0, ge=0)
    """0: no clipping."""
    seed: int = bounded(0, ge=0)
    logging_steps: int = bounded(10, ge=1)
    save_steps: int = bounded(200, ge=1)
    save_total_limit: int = bounded(2, ge=1)
    gradient_checkpointing: bool = False
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)

    def __post_init__(self):
        check_ranges(self)


@dataclass
class RaySettings:
    num_workers: int = bounded(0, ge=0)
    """0: train in this process. N >= 1: a Ray Train TorchTrainer with N workers running the same code."""
    address: str | None = None
    """Ray cluster address (None: start or join a local one)."""
    use_gpu: bool = False
    cpus_per_worker: int = bounded(1, ge=1)

    def __post_init__(self):
        check_ranges(self)


@dataclass
class SFTStageConfig:
    stage: str = "calibration"
    """A name recorded with the model: calibration or warmup."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    ray: RaySettings = field(default_factory=RaySettings)
