"""The policy worker: the peft policy inside a DeepSpeed ZeRO engine, one data-parallel rank.

* **Policy** = the merged calibration model with a fresh LoRA adapter (all linear layers of the LLM)
  and, per ``encoder_mode``, the audio tower and projector trained in full (peft ``modules_to_save``).
* **Reference** = the same model with the adapter switched off (``disable_adapter()``), so no
  second copy sits in memory. peft switches the ``modules_to_save`` copies back to the original
  modules too, so the reference also has the *calibrated* encoder, not the one GRPO is training:
  exactly the merged calibration model (``tests/grpo/test_policy_worker.py`` checks it).
* **Loss** (``grpo.algorithm``): the audio features go through the forward pass with the sampled
  completion ids; KL by k3; with ``num_iterations > 1`` the batch is reused with PPO clipping
  against the log-probs of the policy before the update.
* **DeepSpeed**: ZeRO stage 2 by default (3 for 7B), gloo on CPU, NCCL on GPUs; a torch AdamW;
  gradient accumulation is ours (``managed_gradient_accumulation: false``), so a step may hold any
  number of micro-batches; the loss scaling is in ``grpo.algorithm.reduce_loss``.

Dropout is switched off in the whole model, as TRL's ``disable_dropout`` does: the log-probs of
the loss pass, of the old policy and of the rollout worker are then the same function.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from grpo.algorithm import LossConfig, Normalizer, masked_sums, per_token_objective, reduce_loss
from grpo.messages import Completion, TrainSample, WeightUpdate
from grpo.model_io import cast_adapter, completion_inputs, completion_logprobs, load_waves, per_row, resolve_dtype

if TYPE_CHECKING:
    from grpo.config import GRPOConfig

log = logging.getLogger(__name__)

ENGINE_TAG = "engine"


def plan_update(samples: Sequence[TrainSample], world_size: int, micro_batch_size: int
                ) -> tuple[list[list[list[TrainSample]]], Normalizer | None]:
    """Split a step's samples over ranks and micro-batches: ``shards[rank][micro_batch]``.

    Every rank gets the same number of micro-batches (ZeRO's collectives need it); a short shard is
    padded with weight-0 copies that add nothing to the loss. Returns ``([], None)`` when there is
    nothing to train on.
    """
    real = [s for s in samples if s.weight > 0]
    if not real:
        return [], None
    shards = [list(real[r::world_size]) for r in range(world_size)]
    per = max(len(s) for s in shards)
    pad = TrainSample(real[0].audio, real[0].prompt, real[0].token_ids, 0.0, weight=0.0)
    shards = [s + [pad] * (per - len(s)) for s in shards]
    chunked = [[s[i:i + micro_batch_size] for i in range(0, per, micro_batch_size)] for s in shards]
    counted = sum(any(x.weight > 0 for x in mb) for shard in chunked for mb in shard)
    norm = Normalizer(num_sequences=len(real), num_tokens=sum(len(s.token_ids) for s in real),
                      num_microbatches=counted, world_size=world_size)
    return chunked, norm


def free_address() -> tuple[str, int]:
    """This node's IP and a free TCP port, for the process group's rendezvous."""
    try:
        import ray

        ip = ray.util.get_node_ip_address()
    except Exception:  # not inside Ray
        ip = "127.0.0.1"
    with socket.socket() as sock:
        sock.bind(("", 0))
        return ip, sock.getsockname()[1]


def rebuild_rotary_buffers(model: torch.nn.Module) -> int:
    """Recompute the rotary tables (``inv_freq``) that a ZeRO-3 load created in the model's dtype.

    ``deepspeed.zero.Init`` (what ``from_pretrained`` runs under ZeRO-3) creates every tensor in the
    training dtype, so in bf16 the rotary frequencies, fp32 buffers in a normal load, come out bf16:
    the policy's log-probs then differ from the rollout's (1.6e-2 on the tiny model) before any
    update. The buffers are not in the checkpoint; a fresh module outside ``zero.Init`` gives them
    in fp32. Returns the number of modules fixed.
    """
    fixed = 0
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if not isinstance(inv_freq, torch.Tensor) or inv_freq.dtype == torch.float32 or not hasattr(module, "config"):
            continue
        fresh = type(module)(module.config)
        for name, buf in fresh.named_buffers(recurse=False):
            module._buffers[name] = buf.to(inv_freq.device)
        fixed += 1
    return fixed


def _numel(param: torch.Tensor) -> int:
    return getattr(param, "ds_numel", param.numel())  # ZeRO-3: the full size, not this rank's share


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PolicyWorker:
    """One rank of the policy. ``setup`` after construction (the driver first gathers the rendezvous)."""

    def __init__(self, model_path: str, backbone: str, *, lora_rank: int, lora_alpha: int | None,
                 lora_dropout: float, encoder_mode: str, dtype: str, loss: LossConfig, lr: float,
                 weight_decay: float = 0.0, adam_betas: Sequence[float] = (0.9, 0.999), max_grad_norm: float = 1.0,
                 zero_stage: int = 2, offload_optimizer: bool = False, gradient_checkpointing: bool = False,
                 attn_implementation: str | None = None, num_iterations: int = 1, max_seconds: float | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.args = dict(model_path=model_path, backbone=backbone, lora_rank=lora_rank, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, encoder_mode=encoder_mode, dtype=dtype, lr=lr,
                         weight_decay=weight_decay, adam_betas=tuple(adam_betas), max_grad_norm=max_grad_norm,
                         zero_stage=zero_stage, offload_optimizer=offload_optimizer,
                         gradient_checkpointing=gradient_checkpointing, attn_implementation=attn_implementation)
        self.loss = loss
        self.num_iterations = num_iterations
        self.max_seconds = max_seconds
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.engine = None

    # ------------------------------------------------------------------ set-up
    def rendezvous(self) -> tuple[str, int]:
        return free_address()

    def setup(self, master_addr: str, master_port: int) -> dict[str, int]:
        """Join the process group, load the model, wrap it in the DeepSpeed engine."""
        import deepspeed

        from sqrl.backbones import get_backbone

        a = self.args
        gpu = torch.cuda.is_available()
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo", auto_mpi_discovery=False, verbose=False)
        torch.manual_seed(self.seed)
        dtype = resolve_dtype(a["dtype"], "cuda" if gpu else "cpu", "model.dtype (policy)")
        ds_config = self._ds_config(dtype)
        self._hf_ds = None
        if a["zero_stage"] == 3:  # partition at load time instead of holding the full model on each rank
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config)
        self.backbone = get_backbone(a["backbone"])
        base, self.processor = self.backbone.load(a["model_path"], dtype=dtype, device="cuda" if gpu else "cpu",
                                                  attn_implementation=a["attn_implementation"])
        if self._hf_ds is not None:
            rebuild_rotary_buffers(base)
        model = self.backbone.apply_lora(base, rank=a["lora_rank"], alpha=a["lora_alpha"], dropout=a["lora_dropout"],
                                         encoder_mode=a["encoder_mode"])
        cast_adapter(model, dtype)
        _disable_dropout(model)
        if a["gradient_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=a["lr"], betas=a["adam_betas"], weight_decay=a["weight_decay"])
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.engine.train()
        self.device = self.engine.device
        self.dtype = dtype
        self._trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return {"parameters": sum(_numel(p) for p in model.parameters()), "trainable": sum(_numel(p) for p in params),
                "threads": torch.get_num_threads()}  # Ray gives a worker without CPUs 1 (cluster.torch_threads)

    def _ds_config(self, dtype: torch.dtype) -> dict[str, Any]:
        a = self.args
        zero: dict[str, Any] = {"stage": a["zero_stage"]}
        if a["offload_optimizer"]:
            zero["offload_optimizer"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": 1,  # nominal: we own the accumulation (next line)
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,
            "gradient_clipping": a["max_grad_norm"],
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False,  # keep the torch AdamW (DeepSpeed's CPU Adam compiles an op)
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }

    @property
    def module(self):
        """The PeftModel inside the engine."""
        return self.engine.module

    @contextlib.contextmanager
    def _reference(self):
        """The adapter off. Leaving peft's ``disable_adapter`` marks every parameter of the encoder copy
        trainable again, the fixed position table included, which the optimizer does not hold."""
        with self.module.disable_adapter():
            yield
        self.backbone.freeze_fixed(self.module)

    # ------------------------------------------------------------------ training
    def _prepare(self, micro_batches: Sequence[Sequence[TrainSample]]) -> list[dict[str, Any]]:
        """Inputs, masks, advantages and the no-grad log-probs (reference, old policy) per micro-batch."""
        waves, bad = load_waves([s.audio for mb in micro_batches for s in mb], self.max_seconds)
        if bad:
            raise RuntimeError(f"policy worker cannot read clips the rollout read: {sorted(bad)[:3]}")
        prepared = []
        for mb in micro_batches:
            inputs, mask = completion_inputs(self.backbone, self.processor, [waves[s.audio] for s in mb],
                                             [s.prompt for s in mb], [s.token_ids for s in mb])
            inputs = inputs.to(self.device).to(self.dtype)
            weights = torch.tensor([s.weight for s in mb], device=self.device)
            item = {"inputs": inputs, "mask": mask.to(self.device) * weights[:, None].long(),
                    "adv": token_advantage_matrix(mb, mask).to(self.device)
                    if any(s.token_advantages is not None for s in mb) else
                    torch.tensor([s.advantage for s in mb], dtype=torch.float32, device=self.device),
                    "ref": None, "old": None}
            with torch.no_grad():
                if self.loss.beta != 0.0:
                    with self._reference():
                        item["ref"], _ = completion_logprobs(self.module, inputs, item["mask"])
                if self.num_iterations > 1:
                    item["old"], _ = completion_logprobs(self.module, inputs, item["mask"])
            prepared.append(item)
        return prepared

    def update(self, micro_batches: Sequence[Sequence[TrainSample]], norm: Normalizer) -> dict[str, float]:
        """One optimizer step per iteration over this rank's micro-batches; returns summed stats."""
        t0 = time.perf_counter()
        prepared = self._prepare(micro_batches)
        t_prep = time.perf_counter() - t0
        sums: dict[str, float] = {}
        losses, norms = [], []
        for _ in range(self.num_iterations):
            step_loss = 0.0
            for item in prepared:
                logps, mask = completion_logprobs(self.engine, item["inputs"], item["mask"])
                adv = item["adv"] if item["adv"].dim() == 1 else item["adv"][:, -logps.shape[1]:]  # (B, L): its columns
                per_token, parts = per_token_objective(logps.float(), item["old"], item["ref"], adv, self.loss)
                loss = reduce_loss(per_token, mask, self.loss, norm)
                self.engine.backward(loss, scale_wrt_gas=False)
                step_loss += float(loss.detach())
                for k, v in masked_sums(parts, mask).items():
                    sums[k] = sums.get(k, 0.0) + v
            self.engine.step()
            losses.append(step_loss)
            grad_norm = self.engine.get_global_grad_norm()
            norms.append(float(grad_norm) if grad_norm is not None else float("nan"))
        sums.update(loss=sum(losses) / len(losses), grad_norm=norms[-1], prepare_s=t_prep,
                    seconds=time.perf_counter() - t0)
        return sums

    # ------------------------------------------------------------------ weights and log-probs
    @contextlib.contextmanager
    def _gathered(self):
        """Under ZeRO-3, the adapter's (and saved modules') full tensors for the duration."""
        if self.args["zero_stage"] != 3:
            yield
            return
        import deepspeed

        params = [p for n, p in self.module.named_parameters() if "lora_" in n or "modules_to_save" in n]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    def weights(self, version: int) -> WeightUpdate | None:
        """The trainable tensors in peft's adapter format (rank 0; other ranks take part and return None)."""
        from peft import get_peft_model_state_dict

        t0 = time.perf_counter()
        with self._gathered():  # collective under ZeRO-3: every rank enters, rank 0 copies
            if self.rank != 0:
                return None
            state = get_peft_model_state_dict(self.module)
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        config = self.module.peft_config["default"].to_dict()
        return WeightUpdate(version=version, tensors=tensors, adapter_config=config, seconds=time.perf_counter() - t0)

    @torch.no_grad()
    def logprobs(self, completions: Sequence[Completion], reference: bool = False) -> list[list[float]]:
        """Per-token log-probs of given completions under the policy (or the reference, adapter off)."""
        waves, bad = load_waves([c.audio for c in completions], self.max_seconds)
        if bad:
            raise ValueError(f"cannot read {sorted(bad)[:3]}")
        inputs, mask = completion_inputs(self.backbone, self.processor, [waves[c.audio] for c in completions],
                                         [c.prompt for c in completions], [c.token_ids for c in completions])
        inputs, mask = inputs.to(self.device).to(self.dtype), mask.to(self.device)
        ctx = self._reference() if reference else contextlib.nullcontext()
        with ctx:
            logps, mask = completion_logprobs(self.module, inputs, mask)
        return per_row(logps, mask)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """Engine state (trainable weights, optimizer; DeepSpeed's per-rank format), the adapter in
        safetensors (rank 0) and this rank's torch RNG state."""
        from safetensors.torch import save_file

        path_ = Path(path)
        self.engine.save_checkpoint(str(path_ / "engine"), tag=ENGINE_TAG, save_latest=False,
                                    exclude_frozen_parameters=True)
        save_file({"torch": torch.get_rng_state()}, str(path_ / f"rng_rank{self.rank}.safetensors"))
        self.save_adapter(str(path_ / "adapter"))

    def load(self, path: str) -> None:
        from safetensors.torch import load_file

        path_ = Path(path)
        loaded, _ = self.engine.load_checkpoint(str(path_ / "engine"), tag=ENGINE_TAG, load_module_strict=False,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint under {path_ / 'engine'}")
        rng = path_ / f"rng_rank{self.rank}.safetensors"
        if rng.exists():
            torch.set_rng_state(load_file(str(rng))["torch"])

    def save_adapter(self, path: str) -> None:
        """The adapter (LoRA + trained encoder/projector) and processor, as peft's save_pretrained writes them."""
        from safetensors.torch import save_file

        update = self.weights(version=-1)
        if update is None:
            return
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file(update.tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
        self.module.peft_config["default"].save_pretrained(str(out))
        self.processor.save_pretrained(str(out))

    def pid(self) -> int:
        return os.getpid()


def token_advantage_matrix(samples: Sequence[TrainSample], mask: torch.Tensor) -> torch.Tensor:
    """``(B, W)`` advantages on a micro-batch's ``(B, W)`` completion mask: each sample's ``token_advantages`` on
    its completion tokens in order (its one ``advantage`` where it has none), 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for row, sample in enumerate(samples):
        cols = mask[row].nonzero().squeeze(1).cpu()
        values = sample.token_advantages if sample.token_advantages is not None else [sample.advantage] * len(cols)
        if len(values) != len(cols):
            raise RuntimeError(f"{len(values)} token advantages for a completion of {len(cols)} tokens in the "
                               "policy's inputs: the completion mask and the rollout's token ids disagree")
        out[row, cols] = torch.tensor(values, dtype=torch.float32)
    return out


def build_policy_workers(cfg: GRPOConfig, init: str, backbone: str, place: Callable[[str, int], dict],
                         runtime_env: dict[str, Any]) -> list[Any]:
    """``policy.num_workers`` Ray actors, one data-parallel rank each; ``place(role, index)`` gives each its
    placement options. Call ``setup`` on all of them (after one ``rendezvous``) before training."""
    import ray

    algo, lora, W = cfg.algorithm, cfg.lora, cfg.policy.num_workers
    loss = LossConfig(algo.loss_type, algo.beta, algo.epsilon,
                        algo.epsilon_high if algo.epsilon_high is not None else algo.epsilon, cfg.rollout.max_new_tokens)
    cls = ray.remote(PolicyWorker)
    return [cls.options(runtime_env=runtime_env, **place("policy", r)).remote(
        init, backbone, lora_rank=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        encoder_mode=lora.encoder_mode, dtype=cfg.model.dtype, loss=loss, lr=cfg.policy.lr,
        weight_decay=cfg.policy.weight_decay, adam_betas=cfg.policy.adam_betas, max_grad_norm=cfg.policy.max_grad_norm,
        zero_stage=cfg.policy.zero_stage, offload_optimizer=cfg.policy.offload_optimizer,
        gradient_checkpointing=cfg.model.gradient_checkpointing, attn_implementation=cfg.model.attn_implementation,
        num_iterations=algo.num_iterations,
        max_seconds=cfg.data.max_seconds, seed=cfg.train.seed, rank=r, world_size=W) for r in range(W)]


def update_stats(parts: Sequence[dict[str, float]], norm: Normalizer, num_iterations: int) -> dict[str, float]:
    """The step's update metrics from every rank's ``update`` result: the loss averaged over ranks, the
    clip ratios and KL per trained token, the (global) grad norm of rank 0."""
    sums = {k: sum(p[k] for p in parts) for k in parts[0]}
    tokens = max(sums.pop("tokens"), 1.0)
    stats = {"loss": sums["loss"] / len(parts), "grad_norm": parts[0]["grad_norm"],
             "update/trained_sequences": float(norm.num_sequences), "update/trained_tokens": float(norm.num_tokens),
             "time/update_prepare": max(p["prepare_s"] for p in parts)}
    for key in ("clip_low", "clip_high", "clip_region"):
        stats[f"clip_ratio/{key[5:]}_mean"] = sums[key] / tokens
    if "kl" in sums:
        stats["kl"] = sums["kl"] / tokens
    stats["update/iterations"] = float(num_iterations)
    return stats
