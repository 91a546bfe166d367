"""Typed configuration: nested dataclasses loaded from YAML, overridden by ``key=value``.

Every section is a dataclass with defaults, so a config file only states what differs.
An unknown key anywhere raises :class:`~maskdcpt.errors.ConfigError` (a ``ValueError``) naming its
dotted path and listing the valid keys at that level; a value of the wrong type names the key and
the expected type.

Numeric fields declare their allowed range once, on the field (:func:`ranged`)::

    lr: float = ranged(3e-4, gt=0)
    mask_ratio: float = ranged(0.5, ge=0, lt=1)

and the loader checks every value given against it, naming the key and the range
(``optim.lr: -1.0 is out of range; allowed: > 0``). A field marked ``fixed=True`` (or a whole
section, :func:`fixed_field`) may not change when a run resumes (see ``maskdcpt.training.run``).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")
RANGE = "range"  # field metadata key: a Range (or anything with .contains(value) and str())
FIXED = "fixed"  # field metadata key: True where a resumed run must keep the value


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric setting: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"{low}, {high}"
        if low:
            return f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        if high:
            return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"
        return "any number"


def ranged(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, fixed: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose values (or, for a list/tuple, each item; None passes) must lie in the range."""
    metadata: dict[str, Any] = {RANGE: Range(ge, gt, le, lt)}
    if fixed:
        metadata[FIXED] = True
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def fixed_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field (a value or a whole section) that a resumed run may not change."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={FIXED: True})


def field_metadata(cls: type, name: str, key: str) -> Any:
    """``key`` of field ``name``'s metadata, looked up through the base classes too (a subclass that only
    changes a default keeps its base's range)."""
    for klass in cls.__mro__:
        own = klass.__dict__.get("__dataclass_fields__", {})
        if name in own and key in own[name].metadata:
            return own[name].metadata[key]
    return None


def check_ranges(cfg: Any, path: str) -> None:
    """Check every field of the dataclass instance ``cfg`` (not its sub-sections) against its declared range;
    for sections built directly in code, from their ``__post_init__`` (the loader checks what it reads)."""
    for f in dataclasses.fields(cfg):
        _check_range(type(cfg), f.name, getattr(cfg, f.name), _join(path, f.name))


def _check_range(cls: type, name: str, value: Any, path: str) -> None:
    bounds = field_metadata(cls, name, RANGE)
    if bounds is None or value is None:
        return
    items = value if isinstance(value, (list, tuple)) else [value]
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue  # a type error is _convert's to report
        if not bounds.contains(item):
            where = path if items is not value else f"{path}[{i}]"
            raise ConfigError(f"{where}: {item!r} is out of range; allowed: {bounds}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _number(value: Any) -> Any:
    """YAML 1.1 reads "2e-3" and "1e3" (no dot) as strings: what Python reads as a number becomes one (an integer
    field then takes an integral one, ``train.max_steps: 1e5``); anything else is returned unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check and convert ``value`` to the annotated type ``tp``; ``path`` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more than "matches none"
            return _convert(value, options[0], path)
        for arg in options:
            try:
                return _convert(value, arg, path)
            except ValueError:
                pass
        raise ConfigError(f"{path}: {value!r} matches none of {tp}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        number = _number(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or int(number) != number:
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys by name.

    A section given in part keeps the rest of *its own* default: ``optim.lr=1e-3`` in fine-tuning keeps the
    fine-tuning optimiser's other settings (its default_factory's), not the optimiser class's defaults.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    by_name = {f.name: f for f in fields}
    valid = [f.name for f in fields]
    at = f" in {path}" if path else ""
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"unknown config key {_join(path, key)!r}; valid keys{at}: {', '.join(valid)}")
        default = _section_default(by_name[key], hints[key])
        if default is not None and isinstance(value, Mapping):
            value = merge(to_dict(default), value)
        kwargs[key] = _convert(value, hints[key], _join(path, key))
        _check_range(cls, key, kwargs[key], _join(path, key))
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ConfigError(f"missing config key {_join(path, missing[0])!r}; required keys{at}: {', '.join(required)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a section's own checks (__post_init__) of values that depend on each other
        message = str(err)
        raise ConfigError(message if not path or message.startswith(path) else f"{path}: {message}") from None


def _section_default(f: dataclasses.Field, tp: Any) -> Any:
    """The default instance of a section field (a dataclass-typed field with a default), else None."""
    if not _is_dataclass_type(tp):
        return None
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default if dataclasses.is_dataclass(f.default) else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_dict(cfg: Any) -> Any:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(data: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """A nested dict (a config's ``to_dict``, metrics) → ``{"train.max_steps": 300, …}``, keys joined by ``sep``;
    lists and empty mappings stay values (callers that want only some leaves filter the result)."""
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
        return out
    return {prefix: data}


def fixed_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of the fields of dataclass ``cls`` (and its sections) marked ``fixed``: a key under one of
    them may not change when a run resumes."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if field_metadata(cls, f.name, FIXED):
            out.append(key)
        elif _is_dataclass_type(hints.get(f.name)):
            out += fixed_paths(hints[f.name], key)
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.max_steps=20", "model.name=restormer_tiny"]`` → nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def format_value(value: Any) -> str:
    """``value`` as one line of YAML (``[0.2, 1]``, ``'a: b'``), as an override's right-hand side."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def format_override(key: str, value: Any) -> str:
    """The ``key=value`` override that :func:`parse_overrides` reads back as ``{key: value}``."""
    return f"{key}={format_value(value)}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; ``ConfigError`` names the file when there is none."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a text file") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r}: invalid YAML{at}: {problem}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return dict(loaded)


def build_config(cls: type[T], data: Mapping[str, Any], source: str | Path | None = None) -> T:
    """:func:`from_dict`, with an error that also names where ``data`` came from (a file)."""
    try:
        if not isinstance(data, Mapping):
            valid = ", ".join(f.name for f in dataclasses.fields(cls) if f.init)
            raise ConfigError(f"expected a mapping with keys {valid}, got {data!r}")
        return from_dict(cls, data)
    except ValueError as err:
        raise ConfigError(f"{err} (in {source})" if source is not None else str(err)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls`` ← YAML file at ``path`` ← ``key=value`` overrides, validated."""
    data = read_yaml(path) if path is not None else {}
    return build_config(cls, merge(data, parse_overrides(overrides)), path)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (a config dataclass, or its ``to_dict``) as YAML (atomically: a run killed
    meanwhile keeps the previous file)."""
    from .io import atomic_write

    text = yaml.safe_dump(cfg if isinstance(cfg, Mapping) else to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
