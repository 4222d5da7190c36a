"""The reward contract, the registry and ``RewardSet`` (weights, aggregation, counting).

A reward is a plain callable::

    fn(completions: list[str], references: list[Record], **columns) -> list[float | None] | RewardOutput

or a small picklable class with that ``__call__`` which loads any model lazily (on the first call, never in
``__init__``, so the object can be shipped to a Ray actor; see ``LazyReward``). ``columns`` always holds
``parsed: list[Assessment]`` (each completion parsed once by ``sqrl.response.parse``, done by ``RewardSet``)
and may hold ``audio: list[np.ndarray]``, ``sampling_rate`` and ``prompts``. Accept ``**columns`` so that
new columns do not break your reward.

``None`` means "cannot score this sample". It is excluded from group statistics and counted
(``ScoredBatch.skipped``), never turned into a quiet 0. Make a ``None`` depend on the clip (its reference or
audio), not on the completion: a completion-dependent ``None`` removes that completion from training (see
``combine`` below for why).

A reward may return ``RewardOutput(values, components)`` where ``components`` maps a dimension (or criterion)
name to per-sample values; they are logged as ``rewards/<name>/<dim>/mean`` and do not enter the total, which
uses ``values`` (builtin dimension-wise rewards set ``values`` to the sum of their components).
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

RewardFn = Callable[..., Any]

AGGREGATIONS = ("sum", "normalize_then_sum")

# Modules whose import registers the builtin rewards. Imported on first lookup so that `import rewards.base`
# stays cheap and the judge module (which may pull in heavy backends) loads only when asked for.
_BUILTIN_MODULES = ("rewards.builtin", "rewards.signal", "rewards.llm_judge")


@dataclass
class RewardOutput:
    """A reward's values plus per-dimension components (for logging only)."""

    values: list
    components: dict[str, list] = field(default_factory=dict)


class RewardError(ValueError):
    """A reward returned something that breaks the contract (wrong length, non-number)."""


# ----------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Any] = {}
_builtins_loaded = False


def register(name: str) -> Callable[[Any], Any]:
    """Decorator: register a reward function or class under ``name``.

    Raises ``ValueError`` if another object already holds the name. Re-registering the same definition (same
    module and qualified name, as after a module reload) is allowed.

    >>> @register("doc_example_length")
    ... def length(completions, references, **columns):
    ...     return [float(len(c)) for c in completions]
    >>> get("doc_example_length")(["ab", "abc"], [None, None])
    [2.0, 3.0]
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"reward name must be a non-empty string without '/', got {name!r}")

    def deco(obj: Any) -> Any:
        old = _REGISTRY.get(name)
        if old is not None and _identity(old) != _identity(obj):
            raise ValueError(f"reward {name!r} is already registered by {_identity(old)}")
        _REGISTRY[name] = obj
        return obj

    return deco


def _identity(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside the module: say so
                raise
    _builtins_loaded = True


def registered() -> list[str]:
    """Names of all registered rewards, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def lookup(name: str) -> Any:
    """The registered object (function or class) for ``name``, or the object at a dotted import path."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            module = _import_user_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward {name!r}: cannot import module {module_name!r}: {exc}") from exc
        if not hasattr(module, attr):
            raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
        return getattr(module, attr)
    raise ValueError(f"unknown reward {name!r}; registered: {', '.join(sorted(_REGISTRY))}; "
                     "or give a dotted import path such as my_pkg.rewards.brevity")


def add_import_path(folders: Iterable[str]) -> None:
    """Put ``folders`` (absolute) on ``sys.path`` (after what is there) so that rewards named by dotted path
    import from them. The GRPO driver calls it with ``rewards.python_path`` and hands the same list to every
    reward worker, which may run in another folder or on another node."""
    for folder in folders:
        if folder not in sys.path:
            sys.path.append(folder)


def _import_user_module(module_name: str) -> Any:
    """Import ``module_name``; if its top-level package is not importable, retry with the working directory on
    ``sys.path``: the ``sqrl`` console script does not put it there, but users name modules of their project
    (``examples.my_rewards``) as they would with ``python -m``."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def get(name: str, params: Mapping[str, Any] | None = None) -> RewardFn:
    """A ready-to-call reward: a class is instantiated with ``params``; a function gets them bound as keyword
    arguments (``functools.partial``). Unknown parameter names raise ``ValueError``."""
    obj = lookup(name)
    params = dict(params or {})
    if inspect.isclass(obj):
        try:
            return obj(**params)
        except TypeError as exc:
            raise ValueError(f"reward {name!r}: bad parameters {sorted(params)}: {exc}") from exc
    if not callable(obj):
        raise ValueError(f"reward {name!r} resolves to {type(obj).__name__}, which is not callable")
    if not params:
        return obj
    _check_keywords(name, obj, params)
    return functools.partial(obj, **params)


def _check_keywords(name: str, fn: Callable, params: Mapping[str, Any]) -> None:
    # `**columns` would swallow a misspelt parameter silently; demand explicitly named parameters.
    sig = inspect.signature(fn)
    named = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][2:]
    unknown = [k for k in params if k not in named]
    if unknown:
        raise ValueError(f"reward {name!r} has no parameter(s) {unknown}; its parameters: {named or 'none'}")


# -------------------------------------------------------------------------------------------- lazy models
class LazyReward:
    """Base for rewards that hold a model: ``self.model`` calls ``self.load()`` on first use, once per process.

    Pickling drops the loaded model, so the reward can be built on the driver and shipped to a Ray actor
    where the model loads on the first call.
    """

    _model: Any = None

    def load(self) -> Any:  # pragma: no cover - subclasses implement
        raise NotImplementedError

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.load()
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_model", None)
        return state


# -------------------------------------------------------------------------------------------- parsing help
def parsed_column(completions: Sequence[str], columns: Mapping[str, Any]) -> list:
    """``columns['parsed']`` if given (checked for length), else each completion parsed now.

    Lets a reward be called on its own (tests, notebooks) as well as through ``RewardSet``.
    """
    parsed = columns.get("parsed")
    if parsed is None:
        from sqrl.response import parse

        return [parse(c if isinstance(c, str) else "") for c in completions]
    if len(parsed) != len(completions):
        raise RewardError(f"'parsed' has {len(parsed)} entries for {len(completions)} completions")
    return list(parsed)


def add_components(components: Mapping[str, Sequence[float | None]], n: int) -> list[float | None]:
    """Per-sample sum of the available (non-None) components; None where every component is None."""
    out: list[float | None] = []
    for i in range(n):
        vals = [c[i] for c in components.values() if c[i] is not None]
        out.append(float(sum(vals)) if vals else None)
    return out


# ---------------------------------------------------------------------------------------------- RewardSet
@dataclass
class RewardEntry:
    """One configured reward: the label its logs use, the callable, its weight."""

    name: str
    fn: RewardFn
    weight: float = 1.0


@dataclass
class ScoredBatch:
    """Everything ``RewardSet.score`` learnt about a batch.

    ``total``: the training reward per completion (None: excluded from the GRPO group statistics).
    ``per_reward``: each reward's own (unweighted, unnormalised) values. ``components``: ``"name/dim"`` ->
    values. ``skipped``: per reward, samples it returned None for. ``errors``: per reward, samples lost to an
    exception, a contract violation or a non-finite value. ``total_skipped``: samples whose total is None.
    ``failures``: per reward that failed on a whole call, its error as ``"TypeError: message"`` (the driver
    stops a run whose reward keeps failing, ``rewards.max_failed_steps``, and names this error).
    """

    total: list
    per_reward: dict[str, list]
    components: dict[str, list]
    skipped: dict[str, int]
    errors: dict[str, int]
    total_skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)


class RewardSet:
    """The configured rewards, their weights and the aggregation; picklable (it travels to Ray actors).

    How the total is formed (``combine``): rewards are grouped by clip (completions that share a reference, i.e.
    one GRPO group). For each reward and group:

    * every member has a value: it enters each member's total with its weight;
    * no member has a value (the clip cannot be scored, e.g. no audio): the reward is left out of that group's
      totals. It would have been the same for all members, so leaving it out shifts nothing within the group;
    * some members have a value and some do not: those without get total ``None``. Summing only the available
      rewards would hand them a systematically lower (or higher) reward and bias the advantages; a ``None`` total
      drops the completion from the group statistics instead, and is counted (``total_skipped``).

    A total is also ``None`` when no reward contributed. Weight-0 rewards are computed and logged only.
    ``aggregation="normalize_then_sum"`` standardises each reward over the batch's available values
    (``(v - mean) / std``; all equal -> 0) before weighting, so that rewards on different scales weigh as set.
    """

    def __init__(self, entries: Iterable[RewardEntry], aggregation: str = "sum"):
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("a RewardSet needs at least one reward")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        names = [e.name for e in self.entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"reward labels must be unique, repeated: {dup}; set 'label' to tell them apart")
        for e in self.entries:
            if not (isinstance(e.weight, (int, float)) and math.isfinite(e.weight)):
                raise ValueError(f"reward {e.name!r}: weight must be a finite number, got {e.weight!r}")
        self.aggregation = aggregation
        self._logged_errors: set[str] = set()

    @classmethod
    def from_config(cls, entries: Iterable[Any], aggregation: str = "sum") -> "RewardSet":
        """Build from config entries, each a mapping (or an object with these attributes):
        ``name`` (registered name or dotted path), ``weight`` (1.0), ``params`` ({}), ``dimensions`` (None:
        the reward's default), ``label`` (default: ``name``, or its last part for a dotted path).
        ``dimensions`` is passed to the reward as its ``dimensions`` parameter."""
        built = []
        for raw in entries:
            spec = _entry_spec(raw)
            params = dict(spec["params"])
            if spec["dimensions"] is not None:
                if "dimensions" in params:
                    raise ValueError(f"reward {spec['name']!r}: give 'dimensions' once, not also in params")
                params["dimensions"] = list(spec["dimensions"])
            built.append(RewardEntry(spec["label"], get(spec["name"], params), float(spec["weight"])))
        return cls(built, aggregation)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def __repr__(self) -> str:
        parts = ", ".join(f"{e.name}*{e.weight:g}" for e in self.entries)
        return f"RewardSet([{parts}], aggregation={self.aggregation!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_logged_errors"] = set()
        return state

    def score(self, completions: Sequence[str], references: Sequence[Any], **columns: Any) -> ScoredBatch:
        """Parse each completion once, run every reward, combine. Never raises for a failing reward."""
        n = len(completions)
        if len(references) != n:
            raise ValueError(f"{n} completions but {len(references)} references")
        columns = dict(columns)
        columns["parsed"] = parsed_column(completions, columns)
        per_reward, components, skipped, errors, failures = {}, {}, {}, {}, {}
        for e in self.entries:
            values, comps, n_err = self._run(e, completions, references, columns, failures)
            per_reward[e.name] = values
            errors[e.name] = n_err
            skipped[e.name] = sum(v is None for v in values) - n_err
            for dim, vals in comps.items():
                components[f"{e.name}/{dim}"] = vals
        total = combine(per_reward, {e.name: e.weight for e in self.entries}, group_keys(references),
                        normalize=self.aggregation == "normalize_then_sum")
        return ScoredBatch(total, per_reward, components, skipped, errors, sum(t is None for t in total), failures)

    def _run(self, e: RewardEntry, completions, references, columns, failures: dict) -> tuple[list, dict, int]:
        n = len(completions)
        try:
            values, comps, n_bad = _validate(e.fn(list(completions), list(references), **columns), n)
        except Exception as exc:  # a reward must not kill a training run: log, count, score None
            first = e.name not in self._logged_errors
            self._logged_errors.add(e.name)
            logger.warning("reward %r failed on a batch of %d (values set to None): %s: %s",
                           e.name, n, type(exc).__name__, exc, exc_info=first)
            failures[e.name] = f"{type(exc).__name__}: {exc}"
            return [None] * n, {}, n
        if n_bad:
            logger.warning("reward %r returned %d non-finite value(s); counted as errors", e.name, n_bad)
            if n_bad == n:
                failures[e.name] = f"RewardError: all {n} values were NaN or infinite"
        return values, comps, n_bad


def entry_weights(entries: Iterable[Any]) -> dict[str, tuple[float, bool]]:
    """Label -> (weight, digits only) of each configured reward, without building it. *Digits only*: a registered
    reward whose class says ``score_digits_only = True`` (``accuracy``): each of its components reads nothing but
    one dimension's score digit, which is what ``algorithm.credit: scores`` credits it to. A reward named by
    dotted path is never taken for one."""
    out = {}
    for raw in entries:
        spec = _entry_spec(raw)
        digits = "." not in spec["name"] and bool(getattr(lookup(spec["name"]), "score_digits_only", False))
        out[spec["label"]] = (float(spec["weight"]), digits)
    return out


def _entry_spec(raw: Any) -> dict[str, Any]:
    get_ = raw.get if isinstance(raw, Mapping) else (lambda k, d=None: getattr(raw, k, d))
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"name", "weight", "params", "dimensions", "label"}
        if unknown:
            raise ValueError(f"reward entry {dict(raw)!r}: unknown key(s) {sorted(unknown)}")
    name = get_("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward entry {raw!r} needs a 'name'")
    weight = get_("weight", 1.0)
    try:
        weight = 1.0 if weight is None else float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"reward {name!r}: weight must be a number, got {weight!r}") from None
    params = get_("params", None) or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"reward {name!r}: 'params' must be a mapping, got {type(params).__name__}")
    dims = get_("dimensions", None)
    if isinstance(dims, str):
        dims = [dims]
    label = get_("label", None) or name.rsplit(".", 1)[-1]  # a dotted path logs under its last part
    return {"name": name, "weight": weight, "params": params, "dimensions": dims, "label": label}


def _validate(out: Any, n: int) -> tuple[list, dict[str, list], int]:
    """Check a reward's output against the contract; non-finite numbers become None and are counted."""
    comps_in: Mapping[str, Any] = {}
    if isinstance(out, RewardOutput):
        out, comps_in = out.values, out.components or {}
    values, bad = _numbers(out, n, "values")
    comps = {}
    for dim, vals in comps_in.items():
        comps[str(dim)], _ = _numbers(vals, n, f"components[{dim!r}]")
    return values, comps, bad


def _numbers(seq: Any, n: int, what: str) -> tuple[list, int]:
    if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
        raise RewardError(f"{what}: expected a list of {n} floats or None, got {type(seq).__name__}")
    if len(seq) != n:
        raise RewardError(f"{what}: expected {n} values, got {len(seq)}")
    out, bad = [], 0
    for v in seq:
        if v is None:
            out.append(None)
            continue
        # float() would take "0.5" and True; a reward that returns them has a bug that must not train quietly
        if isinstance(v, (str, bytes, bool, np.bool_)):
            raise RewardError(f"{what}: {v!r} is a {type(v).__name__}; a reward returns numbers or None")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise RewardError(f"{what}: {v!r} is not a number or None") from None
        if math.isfinite(f):
            out.append(f)
        else:
            out.append(None)
            bad += 1
    return out, bad


def group_keys(references: Sequence[Any]) -> list[Any]:
    """The GRPO group of each sample: the reference's ``id`` (the same clip), else the object's identity."""
    return [getattr(r, "id", "") or ("obj", id(r)) for r in references]


def standardize(values: Sequence[float | None]) -> list[float | None]:
    """``(v - mean) / std`` over the available values (population std); all equal -> 0; None stays None."""
    avail = [v for v in values if v is not None]
    if not avail:
        return list(values)
    mean = sum(avail) / len(avail)
    std = math.sqrt(sum((v - mean) ** 2 for v in avail) / len(avail))
    return [None if v is None else ((v - mean) / std if std > 1e-12 else 0.0) for v in values]


def combine(per_reward: Mapping[str, Sequence[float | None]], weights: Mapping[str, float],
            groups: Sequence[Any], normalize: bool = False) -> list[float | None]:
    """The weighted total per sample under the group rule documented on ``RewardSet``."""
    n = len(groups)
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    total: list[float | None] = [0.0] * n
    contributed = [False] * n
    for name, values in per_reward.items():
        w = weights[name]
        if w == 0:
            continue
        values = standardize(values) if normalize else list(values)
        for idx in members.values():
            have = [values[i] is not None for i in idx]
            if not any(have):
                continue  # the clip cannot be scored by this reward: same for the whole group
            for i in idx:
                if values[i] is None:
                    total[i] = None  # partial: drop the sample rather than bias its advantage
                elif total[i] is not None:
                    total[i] += w * values[i]
                    contributed[i] = True
    return [t if c else None for t, c in zip(total, contributed)]


def summarize(batch: ScoredBatch) -> dict[str, float]:
    """Scalars for the training logger: ``rewards/<name>/mean``, ``rewards/<name>/<dim>/mean``,
    ``rewards/<name>/skipped``, ``rewards/<name>/errors``, ``rewards/total/mean``, ``rewards/total/std``,
    ``rewards/total/skipped``. A mean over no available value is left out (the skip count says why)."""
    out: dict[str, float] = {}

    def put_mean(key: str, values: Sequence[float | None]) -> None:
        avail = [v for v in values if v is not None]
        if avail:
            out[key] = float(sum(avail) / len(avail))

    for name, values in batch.per_reward.items():
        put_mean(f"rewards/{name}/mean", values)
        out[f"rewards/{name}/skipped"] = float(batch.skipped.get(name, 0))
        out[f"rewards/{name}/errors"] = float(batch.errors.get(name, 0))
    for key, values in batch.components.items():
        put_mean(f"rewards/{key}/mean", values)
    put_mean("rewards/total/mean", batch.total)
    avail = [v for v in batch.total if v is not None]
    if avail:
        mean = sum(avail) / len(avail)
        out["rewards/total/std"] = float(math.sqrt(sum((v - mean) ** 2 for v in avail) / len(avail)))
    out["rewards/total/skipped"] = float(batch.total_skipped)
    return out
