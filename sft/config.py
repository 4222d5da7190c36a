"""Configuration of the SFT stages (calibration and long-form warm-up), one dataclass per concern."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    rank: int = 64
    """LoRA rank on every linear layer of the LLM (paper: 64)."""
    alpha: int | None = None
    """LoRA alpha; None: equal to ``rank`` (scaling 1)."""
    dropout: float = 0.05
    encoder_mode: str = "trainable"
    """trainable: audio tower and projector trained in full (the paper's calibration); frozen: tower
    frozen, projector trained; lora: LoRA on the tower too."""

    def __post_init__(self):
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"lora.encoder_mode must be one of {', '.join(ENCODER_MODES)}, not {self.encoder_mode!r}")
        if self.rank < 1:
            raise ValueError("lora.rank must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout must be in [0, 1)")


@dataclass
class SynthSettings:
    root: str = "data/synth"
    """Folder under which corpora are cached by seed and size."""
    num: int = 2000
    seed: int = 0


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
    max_seconds: float = 30.0
    """Clips longer than this are skipped and counted."""
    limit: int | None = None
    """Use only the first N clips (quick runs)."""

    def __post_init__(self):
        if self.prompting not in PROMPTINGS:
            raise ValueError(f"data.prompting must be one of {', '.join(PROMPTINGS)}, not {self.prompting!r}")
        if self.train is None and self.synth is None:
            raise ValueError("data.train or data.synth must be set")


@dataclass
class DeepSpeedSettings:
    enabled: bool = True
    stage: int = 2
    """ZeRO stage: 2 by default, 3 for 7B backbones."""
    offload_optimizer: bool = False

    def __post_init__(self):
        if self.stage not in (0, 1, 2, 3):
            raise ValueError("deepspeed.stage must be 0-3")


@dataclass
class TrainSettings:
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run ``epochs``)."""
    batch_size: int = 8
    """Per-device micro-batch."""
    grad_accum: int = 1
    lr: float = 1.5e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    bf16_autocast: bool = False
    """Mixed precision with fp32 weights: matmuls in bf16 under autocast. On a CPU with avx512_bf16
    (or AMX) an SFT step of the small backbone took half the time (7.2 s vs 12-16 s, docs/small.md).
    Needs deepspeed off (its bf16 mode casts the weights)."""
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)

    def __post_init__(self):
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.batch_size and train.grad_accum must be >= 1")
        if self.lr <= 0:
            raise ValueError("train.lr must be > 0")
        if self.bf16_autocast and self.deepspeed.enabled:
            raise ValueError("train.bf16_autocast needs train.deepspeed.enabled: false "
                             "(DeepSpeed's bf16 mode casts the weights to bf16)")


@dataclass
class RaySettings:
    num_workers: int = 0
    """0: train in this process. N >= 1: a Ray Train TorchTrainer with N workers running the same code."""
    address: str | None = None
    """Ray cluster address (None: start or join a local one)."""
    use_gpu: bool = False
    cpus_per_worker: int = 1


@dataclass
class SFTStageConfig:
    stage: str = "calibration"
    """A name recorded with the model: calibration or warmup."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    ray: RaySettings = field(default_factory=RaySettings)
