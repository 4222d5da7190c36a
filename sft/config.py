"""Configuration of the SFT stages (calibration and long-form warm-up), one dataclass per concern."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqrl.backbones.config import LoraConfig, check_attn_implementation, check_dtype
from sqrl.data.config import DataConfig
from sqrl.config import bounded, check_ranges


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
    """Start from an sqrl model directory. An adapter (e.g. the calibration output for the warm-up) keeps
    training with its own rank and alpha; ``lora.encoder_mode`` may keep its mode or freeze the encoder. A full
    (merged) model gets a new adapter from ``lora.*``. Overrides ``path`` and ``backbone``."""
    dtype: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU), float32 or bfloat16."""
    attn_implementation: str | None = None
    """transformers' attention kernel for the whole model (``eager``, ``sdpa``, ...); None: transformers'
    default (sdpa). The same function either way; ``eager`` is the faster one for the small backbone on a CPU."""

    def __post_init__(self):
        check_dtype(self.dtype)
        check_attn_implementation(self.attn_implementation)


@dataclass
class SFTDataConfig(DataConfig):
    """The shared ``data:`` fields (``sqrl.data.config.DataConfig``) and a held-out manifest."""

    eval: str | None = None
    """Held-out manifest; None: the synthetic test split when ``synth`` is used."""

    def manifests(self) -> tuple[Path, Path | None]:
        """(train, held-out) manifest paths; builds the synthetic corpus when the config asks for it."""
        held_out = Path(self.eval) if self.eval else None
        if self.train:
            return Path(self.train), held_out
        folder = self.synth.folder()
        return folder / "train.jsonl", held_out or folder / "test.jsonl"


@dataclass
class DeepSpeedConfig:
    enabled: bool = True
    stage: int = bounded(2, ge=0, le=3)
    """ZeRO stage: 2 by default, 3 for 7B backbones."""
    offload_optimizer: bool = False

    def __post_init__(self):
        check_ranges(self)


@dataclass
class TrainConfig:
    epochs: float = bounded(1.0, gt=0)
    max_steps: int = bounded(-1, ge=1, also=(-1,))
    """Stop after this many optimizer steps (-1: run ``epochs``)."""
    batch_size: int = bounded(8, ge=1)
    """Per-device micro-batch."""
    grad_accum: int = bounded(1, ge=1)
    lr: float = bounded(1.5e-5, gt=0)
    """Peak learning rate (paper: 1.5e-5)."""
    lr_scheduler: str = "linear"
    """A transformers scheduler name (linear, cosine, constant, ...)."""
    warmup_ratio: float = bounded(0.03, ge=0, le=1)
    """Share of the steps spent warming the learning rate up from 0."""
    weight_decay: float = bounded(0.0, ge=0)
    max_grad_norm: float = bounded(1.0, ge=0)
    """0: no clipping."""
    seed: int = bounded(0, ge=0)
    logging_steps: int = bounded(10, ge=1)
    save_steps: int = bounded(200, ge=1)
    save_total_limit: int = bounded(2, ge=1)
    gradient_checkpointing: bool = False
    bf16_autocast: bool = False
    """Mixed precision with fp32 weights: matmuls in bf16 under autocast (docs/small.md). Needs deepspeed off
    (its bf16 mode casts the weights). Ignored, with a warning, on a CPU without native bf16 matmuls
    (no AVX-512/AMX), where bf16 is ~100x slower than fp32 (``sqrl.runtime.cpu_bf16_native``)."""
    score_sigma: float = bounded(0.0, ge=0, le=5)
    """Ordinal score targets (sft/ordinal.py): at each score digit of an answer the target is a Gaussian over
    1..5 with this width around the label instead of one-hot (0.5: the label 0.79, each neighbour 0.11).
    0 (default): plain cross-entropy, as in the paper."""
    group_by_length: bool = False
    """Batch examples of similar length together (``sqrl.data.length_groups``: shuffled, sorted by length within
    mega-batches of 50 micro-batches, then the batches shuffled; not HF's sampler, which trains each mega-batch
    longest first and broke calibration here). A random batch of 4 small-model calibration examples is ~15%
    padding, which costs as much as real tokens on a CPU; grouped, 0.7%. Changes the order of the examples, so a
    run with it is not the same run as one without; on the synthetic corpus (where length tells the label) the small
    calibration with it ended 0.17 of held-out greedy PCC below a random-order run of the same code
    (docs/small.md): off in every shipped config. Not with
    ``data.balance: labels`` (both choose the order)."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def __post_init__(self):
        check_ranges(self)
        if self.bf16_autocast and self.deepspeed.enabled:
            raise ValueError("train.bf16_autocast needs train.deepspeed.enabled: false "
                             "(DeepSpeed's bf16 mode casts the weights to bf16)")


@dataclass
class RayConfig:
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
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self):
        if self.train.group_by_length and self.data.balance == "labels":
            raise ValueError("train.group_by_length and data.balance: labels both choose the order of the "
                             "examples; set one of them")


def continuation_problem(trained: str, asked: str) -> str | None:
    """Why a stage asking for ``lora.encoder_mode=asked`` cannot continue an adapter trained with ``trained``
    (None: it can). The adapter fixes what it trains: a stage keeps its mode or freezes the encoder."""
    if asked in (trained, "frozen"):
        return None
    return (f"lora.encoder_mode={asked}, but the adapter it continues was trained with encoder_mode={trained}; "
            f"continue it with {trained} or frozen, or merge it first (`sqrl merge`) and start a new adapter "
            "from the merged model")

