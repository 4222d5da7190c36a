"""Typed configs: nested dataclasses loaded from YAML, unknown keys rejected, dotted overrides.

Every stage declares its config as dataclasses (one per concern) and loads it with::

    cfg = load_config(SFTConfig, "configs/tiny/calibration.yaml", ["train.lr=1e-4"])

A YAML may name a ``base:`` file (relative to itself) whose values it overrides, so the paper
configs can share one file per concern. Values are validated by each dataclass's
``__post_init__``; a wrong key or type names its dotted path.

Numeric ranges are declared once, on the field: ``epochs: float = bounded(1.0, gt=0)``. The loader
checks them before building the dataclass and names the dotted key (``train.epochs must be > 0,
got -1``); a dataclass built in Python checks them in ``__post_init__`` (``check_ranges(self)``).
Non-finite floats (``.nan``, ``.inf``) are refused everywhere. ``arg_range`` does the same for
command-line flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not fit its dataclass; the message names the dotted key."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a number: the bounds that are set, plus ``also`` (sentinels such as -1)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple = ()

    def describe(self) -> str:
        low = f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}" if self.gt is not None else None
        high = f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}" if self.lt is not None else None
        if low and high:
            text = (f"in {'[' if self.ge is not None else '('}{self.ge if self.ge is not None else self.gt:g}, "
                    f"{self.le if self.le is not None else self.lt:g}{']' if self.le is not None else ')'}")
        else:
            text = low or high or "a number"
        return "must be " + text + "".join(f" or {a!r}" for a in self.also)

    def allows(self, value: Any) -> bool:
        if value in self.also and not isinstance(value, bool):
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not ((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
                    or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt))


class RangeError(ConfigError):
    """A number out of its field's range; ``key`` is the field (the loader prefixes its section)."""

    def __init__(self, key: str, requirement: str, value: Any):
        self.key, self.requirement, self.value = key, requirement, value
        super().__init__(f"{key} {requirement}, got {value!r}")


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, also: tuple = (),
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding a number (or ``None``, or a list of numbers) within a range.

    >>> Range(ge=1, also=(-1,)).describe()
    'must be >= 1 or -1'
    """
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"range": Range(ge, gt, le, lt, tuple(also))})


def _range_problem(rng: Range, key: str, value: Any) -> RangeError | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _range_problem(rng, f"{key}[{i}]", item)
            if problem:
                return problem
        return None
    if isinstance(value, (int, float)) and not rng.allows(value):
        return RangeError(key, rng.describe(), value)
    return None


def check_ranges(obj: Any, values: dict[str, Any] | None = None) -> None:
    """Raise ``RangeError`` for the first field of dataclass ``obj`` (or of ``values``, by field name)
    outside its ``bounded`` range. Call it first in ``__post_init__``."""
    fields = dataclasses.fields(obj)
    for f in fields:
        rng = f.metadata.get("range")
        if rng is None or (values is not None and f.name not in values):
            continue
        problem = _range_problem(rng, f.name, values[f.name] if values is not None else getattr(obj, f.name))
        if problem:
            raise problem


def check_value(key: str, value: Any, **bounds: Any) -> None:
    """``RangeError`` naming ``key`` when ``value`` (a number or list of numbers) is outside ``bounds``
    (``ge``/``gt``/``le``/``lt``/``also``): the range check for numbers that are not dataclass fields."""
    problem = _range_problem(Range(**bounds), key, value)
    if problem:
        raise problem


def arg_range(kind: type, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
              lt: float | None = None) -> typing.Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` and enforces a range; argparse names the flag:
    ``argument --batch-size: must be >= 1, got 0``."""
    rng = Range(ge, gt, le, lt)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not rng.allows(value):
            raise argparse.ArgumentTypeError(f"{rng.describe()}, got {value!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, following ``base:`` chains (relative to the including file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    if base:
        data = _merge(read_yaml(path.parent / base), data)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; the value is parsed as YAML (``1e-4``, ``true``, ``[1,2]``)."""
    data = _merge({}, data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if _is_dataclass_type(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any or tp is object:
        return value
    if tp is float and isinstance(value, str):
        try:
            value = float(value)  # YAML reads "1e-4" (no dot) as a string
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known in {where or 'top level'}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, path)
    prefix = f"{where}." if where else ""
    try:
        check_ranges(cls, kwargs)  # before __post_init__, whose cross-field checks assume sane numbers
        return cls(**kwargs)
    except RangeError as exc:
        raise ConfigError(f"{prefix}{exc.key} {exc.requirement}, got {exc.value!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, apply_overrides(data, overrides))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (for logging and for saving next to a run)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
