"""The SFT stages on TRL's SFTTrainer: calibration with an unfrozen audio encoder, then warm-up.

``run_sft(cfg, out)`` is the whole stage. It runs in this process, or, with ``ray.num_workers``
set, on each worker of a Ray Train TorchTrainer (``sft/ray_train.py``), the same code either way.
The result in ``out`` is an sqrl model directory (sqrl/models.py) holding the adapter, the projector
and (``lora.encoder_mode: trainable``, or an adapter continued from such a run) the encoder as
``modules_to_save``, and the processor.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from sft.compact_head import compact_head
from sft.config import SFTStageConfig, continuation_problem
from sft.data import AudioCollator, balance_weights, build_examples, example_lengths, load_records
from sft.zero3 import zero3_aware
from sqrl.backbones.config import resolve_dtype
from sqrl.config import save_config
from sqrl.fsutil import read_jsonl, truncate_jsonl
from sqrl.integrity import verify_manifest, write_manifest
from sqrl.rundir import prepare_out
from sqrl.runtime import bf16_is_slow, compute_dtype, resolve_device
from sqrl.models import ModelMeta, load_model, read_meta, write_meta
from sqrl.prompts import Rubric, answer_format_mismatch

log = logging.getLogger(__name__)


def deepspeed_config(cfg: SFTStageConfig) -> dict[str, Any] | None:
    """A ZeRO config whose batch and precision fields HF fills in ("auto")."""
    ds = cfg.train.deepspeed
    if not ds.enabled:
        return None
    zero: dict[str, Any] = {"stage": ds.stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        # On CPU the torch optimizer HF builds is kept (DeepSpeed's CPU Adam would compile an op first).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_process_group_env(use_deepspeed: bool) -> None:
    """A single process still needs the torch.distributed env for DeepSpeed; launchers set their own."""
    if not use_deepspeed or "WORLD_SIZE" in os.environ:
        return
    os.environ.update(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    )
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


class JsonlLogger(TrainerCallback):
    """Append every log dict (loss, learning rate, grad norm, throughput) to ``metrics.jsonl``."""

    def __init__(self, path: Path, collator: AudioCollator):
        self.path = path
        self.collator = collator
        self._t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "time_s": round(time.perf_counter() - self._t0, 2)}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        row["skipped_clips"] = sum(self.collator.skipped.values())
        row["world_size"] = args.world_size
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


class ChecksumCheckpoints(TrainerCallback):
    """Record ``sqrl_sha256.json`` in each checkpoint the trainer saves (sqrl/integrity.py), so that a resume
    can refuse one changed afterwards. Every rank waits until all have written their part (DeepSpeed
    partitions, RNG states); rank 0 hashes the folder."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                write_manifest(folder)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank runs ahead (and could resume) before the manifest exists


def build_model(cfg: SFTStageConfig):
    """(peft model, processor, backbone, base path) for the stage."""
    dtype = resolve_dtype(cfg.model.dtype, _device())
    lora = cfg.lora
    if cfg.model.init:
        meta = read_meta(cfg.model.init)
        if meta.kind == "full":  # a merged (or untrained) model: a new adapter over it, as GRPO starts
            base, processor, backbone = load_model(cfg.model.init, dtype=dtype,
                                                   attn_implementation=cfg.model.attn_implementation)
            model = backbone.apply_lora(base, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                                        encoder_mode=lora.encoder_mode)
            return model, processor, backbone, str(Path(cfg.model.init).expanduser().resolve())
        model, processor, backbone = load_model(cfg.model.init, dtype=dtype, trainable=True,
                                                attn_implementation=cfg.model.attn_implementation)
        continue_encoder(model, backbone, lora.encoder_mode, cfg.model.init)
        return model, processor, backbone, meta.base
    from sqrl.backbones import get_backbone

    backbone = get_backbone(cfg.model.backbone, **cfg.model.options)
    base, processor = backbone.load(cfg.model.path, dtype=dtype, attn_implementation=cfg.model.attn_implementation)
    model = backbone.apply_lora(
        base, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, encoder_mode=lora.encoder_mode
    )
    return model, processor, backbone, cfg.model.path


def continue_encoder(model, backbone, encoder_mode: str, init) -> None:
    """Apply ``lora.encoder_mode`` to an adapter that this stage continues (the warm-up continuing the
    calibration adapter). The adapter fixes what it trains, so the stage may keep its mode or freeze the encoder
    (``frozen``: the audio tower keeps its calibrated weights and only the text side learns); switching to a mode
    that trains what the adapter does not hold is refused."""
    trained = backbone.encoder_mode_of(model)
    if encoder_mode == trained:
        return
    if problem := continuation_problem(trained, encoder_mode):
        raise ValueError(f"model.init {init}: {problem}")
    log.info("encoder frozen for this stage: %d parameters of %s's audio tower (adapter trained it: %s)",
             backbone.freeze_encoder(model), init, trained)


def _device() -> str:
    return resolve_device("auto")


def mixed_precision(cfg: SFTStageConfig) -> bool:
    """The Trainer's ``bf16`` flag: bf16 weights (``model.dtype``) or bf16 autocast over fp32 weights
    (``train.bf16_autocast``). On a CPU without native bf16 matmuls both fall back to fp32, with a
    warning (``sqrl.runtime.compute_dtype``): bf16 runs ~100x slower there, not faster."""
    import torch

    if bf16_is_slow(_device()):
        if cfg.train.bf16_autocast:
            compute_dtype(torch.bfloat16, _device(), "train.bf16_autocast")
        return False
    return resolve_dtype(cfg.model.dtype) == torch.bfloat16 or cfg.train.bf16_autocast


def frozen_linears_to_bf16(model) -> int:
    """Store the frozen weights of ``model``'s linear layers in bf16, for a run under bf16 autocast over fp32
    weights (``train.bf16_autocast``); returns how many layers. Autocast casts them to bf16 before every
    matmul anyway (in the forward, and the backward's input gradient reuses that copy), so the step computes
    the same numbers, without a cast of each frozen weight before each matmul (~9% of a small calibration
    step on a CPU, docs/small.md) and with half their memory. Trained parameters stay fp32 (the optimizer's master
    weights), and so does the LM head, which TRL's fused loss reads outside the linear layers. So do the frozen
    parts of a saved adapter (a continued adapter's tower copy or LoRA weights under ``encoder_mode=frozen``): the
    adapter writes them back, and in bf16 they would come out rounded instead of as they were trained."""
    head = model.get_output_embeddings()
    count = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or module is head:
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if ".modules_to_save." in f".{name}." or "lora_" in name:
            continue
        module.to(torch.bfloat16)
        count += 1
    return count


def trainable_summary(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def run_sft(cfg: SFTStageConfig, out: str | Path, resume: bool = False, overwrite: bool = False,
            claim: bool = True) -> Path:
    """Train one SFT stage into ``out`` and return it. ``resume`` continues from the last checkpoint;
    a non-empty ``out`` is refused without ``resume`` or ``overwrite`` (sqrl/rundir.py). ``claim=False``:
    the caller has checked ``out`` (each Ray Train worker; ``run_sft_on_ray`` checks once)."""
    from trl import SFTConfig, SFTTrainer

    out = prepare_out(out, resume=resume, overwrite=overwrite) if claim else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpts = out / "checkpoints"
    last = get_last_checkpoint(str(ckpts)) if resume and ckpts.is_dir() else None
    if resume and last is None:
        log.warning("--resume: no checkpoint under %s; starting from scratch", out / "checkpoints")
    if last is not None:
        verify_manifest(last)  # DeepSpeed unpickles the engine state: nothing changed since it was written
    if resume and os.environ.get("RANK", "0") == "0":  # rank 0 alone writes the log
        truncate_jsonl(out / "metrics.jsonl", int(last.rsplit("-", 1)[1]) if last else 0)
    ds_config = deepspeed_config(cfg)
    ensure_process_group_env(ds_config is not None)
    torch.manual_seed(cfg.train.seed)

    train_manifest = cfg.data.train_manifest()
    rubric = Rubric(cfg.data.rubric)
    if cfg.model.init and (problem := answer_format_mismatch(rubric, cfg.model.init)):
        log.warning("model.init: %s (this stage will teach its own format instead)", problem)
    records = load_records(train_manifest, cfg.data.limit)
    examples = build_examples(records, rubric, cfg.data.prompting)
    model, processor, backbone, base = build_model(cfg)
    if cfg.train.bf16_autocast and mixed_precision(cfg) and resolve_dtype(cfg.model.dtype) == torch.float32:
        log.info("bf16 autocast: %d frozen linear weights stored in bf16", frozen_linears_to_bf16(model))
    options = dict(cfg.model.options) if base is None and cfg.model.options else None
    if cfg.model.init:
        options = read_meta(cfg.model.init).options
    collator = AudioCollator(backbone.name, processor, cfg.data.max_seconds, options)
    lengths = None
    if cfg.train.group_by_length:
        window = min(cfg.data.max_seconds, float((options or {}).get("window_s", 30)))
        lengths = example_lengths(examples, getattr(processor, "tokenizer", processor), window)
    log.info("stage %s: %d examples from %s; %s", cfg.stage, len(examples), train_manifest, trainable_summary(model))

    from datasets import Dataset

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")

    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        learning_rate=cfg.train.lr,
        lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=cfg.train.warmup_ratio,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        seed=cfg.train.seed,
        logging_steps=cfg.train.logging_steps,
        save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit,
        report_to=["tensorboard"],
        bf16=mixed_precision(cfg),
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        deepspeed=ds_config,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=0,
        max_length=None,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer_cls = compact_head(zero3_aware(SFTTrainer))  # the LM head scores only answer tokens on a CPU too
    if cfg.data.balance == "labels":
        weights = balance_weights(records, rubric, cfg.data.prompting)
        log.info("data.balance: labels: %d examples, effective number %.0f", len(weights), 1 / (weights ** 2).sum())
        trainer_cls = balanced(trainer_cls, weights, cfg.train.seed)
    if lengths is not None:
        trainer_cls = length_grouped(trainer_cls, lengths, cfg.train.batch_size, cfg.train.seed)
    if cfg.train.score_sigma > 0:
        from sft.ordinal import with_score_targets

        trainer_cls = with_score_targets(trainer_cls, getattr(processor, "tokenizer", processor), cfg.train.score_sigma)
        log.info("train.score_sigma %g: soft ordinal targets at the score digits", cfg.train.score_sigma)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        data_collator=collator,
        processing_class=processor,
        callbacks=[JsonlLogger(out / "metrics.jsonl", collator), ChecksumCheckpoints()],
    )
    try:
        trainer.train(resume_from_checkpoint=last)
        trainer.save_model(str(out))  # on every rank: under ZeRO-3 the weights are gathered collectively
    finally:
        # transformers keeps the ZeRO config in a process-wide global that outlives the trainer; left set,
        # a ZeRO-3 run makes every later from_pretrained in this process (a merge, the next stage) partition.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        write_meta(out, ModelMeta(backbone=backbone.name, kind="adapter", base=base, stage=cfg.stage, options=options,
                                        base_build=_base_build(backbone, base, cfg)))
        save_config(cfg, out / "sqrl_config.yaml")
        _plot_training(out)
        if collator.skipped:
            log.warning("skipped clips: %s", dict(collator.skipped))
    return out


def balanced(trainer_cls, weights, seed: int):
    """``trainer_cls`` drawing its training examples under ``weights`` (``data.balance: labels``) with
    replacement, a fresh seeded order per epoch (``sqrl.data.balance.BalancedSampler``). The Trainer's
    own samplers know uniform and length-grouped orders only."""
    from sqrl.data.balance import BalancedSampler

    return _with_sampler(trainer_cls, "Balanced", len(weights), "data.balance", lambda: BalancedSampler(weights, seed))


def length_grouped(trainer_cls, lengths, batch_size: int, seed: int):
    """``trainer_cls`` training batches of similar length in a random order (``train.group_by_length``;
    ``sqrl.data.length_groups``). Not HF's own length-grouped sampler: it trains each mega-batch's batches
    longest first, a 50-step sweep that broke calibration where length tells the label (docs/small.md)."""
    import numpy as np

    from sqrl.data.length_groups import LengthGroupedSampler, length_grouped_order, padding_fraction

    grouped = padding_fraction(lengths, length_grouped_order(lengths, batch_size, seed, 0), batch_size)
    shuffled = padding_fraction(lengths, np.random.default_rng(seed).permutation(len(lengths)), batch_size)
    log.info("train.group_by_length: batches of similar length in random order; padding %.1f%% of a batch "
             "(%.1f%% in a random order)", 100 * grouped, 100 * shuffled)
    return _with_sampler(trainer_cls, "LengthGrouped", len(lengths), "train.group_by_length",
                         lambda: LengthGroupedSampler(lengths, batch_size, seed))


def _with_sampler(trainer_cls, prefix: str, n: int, setting: str, make):
    class WithSampler(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if len(dataset) != n:
                raise ValueError(f"{setting}: {n} entries for {len(dataset)} examples")
            return make()

    WithSampler.__name__ = WithSampler.__qualname__ = f"{prefix}{trainer_cls.__name__}"
    return WithSampler


def _plot_training(out: Path) -> None:
    """``plots/training.png``: the loss and token accuracy of ``metrics.jsonl`` per logged step. A plot is a
    convenience: a failure to draw it is logged, never raised after a finished training."""
    try:
        from sqrl.plots import training_curves

        training_curves({out.name: read_jsonl(out / "metrics.jsonl")}, out / "plots" / "training.png")
    except Exception as exc:  # noqa: BLE001 - matplotlib missing or broken must not fail a trained stage
        log.warning("could not draw %s: %s", out / "plots" / "training.png", exc)


def _base_build(backbone, base: str | None, cfg: SFTStageConfig) -> str | None:
    """The tiny build's cache key when the adapter sits on the default tiny build (None otherwise)."""
    if cfg.model.init:
        return read_meta(cfg.model.init).base_build
    if base is None and backbone.spec is not None:
        return backbone.build_dir().name
    return None
