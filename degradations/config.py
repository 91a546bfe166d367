"""Typed configuration of the degradation engine."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from .extra_types import ExtraTypeConfig, build_extra_type, check_entry, entry_from_dict
from .registry import NUM_TYPES, TYPE_NAMES, DegradationType, resolve


@dataclass
class EngineConfig:
    """Which types the engine draws, how often, at which levels, with which parameter ranges.

    types:       "all" (the 19 and every extra type), or a list of names / ids.
    weights:     relative sampling weight per type name (missing types weigh 1).
    level_range: levels are drawn uniformly in [lo, hi] ⊆ [0, 1].
    params:      per-type overrides of the default parameter ranges, e.g.
                 {"noise": {"sigma": [1, 50]}}; keys must be ones the type declares.
    extra_types: types beyond the 19, {name: {albumentations: Transform | function: "module:function",
                 params: {...}, level: {...}}} (see :mod:`degradations.extra_types`); they take the ids
                 19, 20, … in the order given. They belong to this config only: the registry of the 19
                 is never changed, so engines with different extras coexist in one process.
    """

    types: Any = "all"
    weights: dict[str, float] = field(default_factory=dict)
    level_range: tuple[float, float] = (0.0, 1.0)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra_types: dict[str, ExtraTypeConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.extra_types, dict):
            raise ValueError(f"extra_types: expected a mapping {{name: entry}}, got {self.extra_types!r}")
        self.extra_types = {name: entry_from_dict(name, e) for name, e in self.extra_types.items()}
        for name, entry in self.extra_types.items():
            check_entry(name, entry, TYPE_NAMES)
        # Built (imported, tried on a test image) here, so that a bad entry stops a run before it starts.
        self._extras: dict[str, DegradationType] = {
            name: build_extra_type(name, entry, NUM_TYPES + i) for i, (name, entry) in enumerate(self.extra_types.items())
        }
        self.type_names = self._resolve_types(self.types)
        for name, weight in self.weights.items():
            if self.resolve(name).name not in self.type_names:
                raise ValueError(f"weights: type {name!r} is not among the selected types {self.type_names}")
            if not float(weight) >= 0:
                raise ValueError(f"weights[{name!r}] must be >= 0, got {weight}")
        lo, hi = (float(v) for v in self.level_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"level_range must satisfy 0 <= lo <= hi <= 1, got {self.level_range}")
        self.level_range = (lo, hi)
        for name, overrides in self.params.items():
            if name in self._extras:
                raise ValueError(f"params[{name!r}]: set the parameters of an extra type in extra_types.{name}.params")
            defaults = resolve(name).ranges
            for key in overrides:
                if key not in defaults:
                    raise ValueError(
                        f"params[{name!r}]: unknown key {key!r}; valid keys: {', '.join(sorted(defaults)) or '(none)'}"
                    )

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every type this config knows, in id order: the 19, then the extra types (a classifier's labels)."""
        return TYPE_NAMES + tuple(self._extras)

    def resolve(self, type_: str | int) -> DegradationType:
        """A built-in or extra type by name or id; the error lists the valid ones."""
        if isinstance(type_, str) and type_ in self._extras:
            return self._extras[type_]
        if isinstance(type_, (int, np.integer)) and not isinstance(type_, bool) and NUM_TYPES <= int(type_) < len(self.label_names):
            return self._extras[self.label_names[int(type_)]]
        try:
            return resolve(type_)
        except ValueError:
            if isinstance(type_, (int, np.integer)):
                raise ValueError(f"unknown degradation type id {type_}; valid ids are 0..{len(self.label_names) - 1}") from None
            raise ValueError(f"unknown degradation type {type_!r}; valid: {', '.join(self.label_names)}") from None

    def _resolve_types(self, types: Any) -> list[str]:
        if types == "all" or types is None:
            return list(self.label_names)
        if isinstance(types, (str, int)):
            types = [types]
        names = [self.resolve(t).name for t in types]
        if not names:
            raise ValueError(f"types: select at least one of {len(self.label_names)} types")
        return sorted(set(names), key=self.label_names.index)

    def ranges_for(self, name: str) -> dict[str, Any]:
        """The default ranges of ``name`` with this config's overrides applied (an extra type: its params)."""
        merged = copy.deepcopy(dict(self.resolve(name).ranges))
        merged.update(copy.deepcopy(self.params.get(name, {})))
        return merged

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "EngineConfig":
        data = dict(data or {})
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                raise ValueError(f"engine config: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if "level_range" in data:
            data["level_range"] = tuple(data["level_range"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "types": list(self.type_names),
            "weights": dict(self.weights),
            "level_range": list(self.level_range),
            "params": copy.deepcopy(self.params),
            "extra_types": {name: entry.to_dict() for name, entry in self.extra_types.items()},
        }
