"""Typed configuration of the degradation engine."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .registry import NUM_TYPES, TYPE_NAMES, resolve


@dataclass
class EngineConfig:
    """Which types the engine draws, how often, at which levels, with which parameter ranges.

    types:       "all", or a list of names / ids.
    weights:     relative sampling weight per type name (missing types weigh 1).
    level_range: levels are drawn uniformly in [lo, hi] ⊆ [0, 1].
    params:      per-type overrides of the default parameter ranges, e.g.
                 {"noise": {"sigma": [1, 50]}}; keys must be ones the type declares.
    """

    types: Any = "all"
    weights: dict[str, float] = field(default_factory=dict)
    level_range: tuple[float, float] = (0.0, 1.0)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.type_names = self._resolve_types(self.types)
        for name, weight in self.weights.items():
            if resolve(name).name not in self.type_names:
                raise ValueError(f"weights: type {name!r} is not among the selected types {self.type_names}")
            if not float(weight) >= 0:
                raise ValueError(f"weights[{name!r}] must be >= 0, got {weight}")
        lo, hi = (float(v) for v in self.level_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"level_range must satisfy 0 <= lo <= hi <= 1, got {self.level_range}")
        self.level_range = (lo, hi)
        for name, overrides in self.params.items():
            defaults = resolve(name).ranges
            for key in overrides:
                if key not in defaults:
                    raise ValueError(
                        f"params[{name!r}]: unknown key {key!r}; valid keys: {', '.join(sorted(defaults)) or '(none)'}"
                    )

    @staticmethod
    def _resolve_types(types: Any) -> list[str]:
        if types == "all" or types is None:
            return list(TYPE_NAMES)
        if isinstance(types, (str, int)):
            types = [types]
        names = [resolve(t).name for t in types]
        if not names:
            raise ValueError(f"types: select at least one of {NUM_TYPES} types")
        return sorted(set(names), key=TYPE_NAMES.index)

    def ranges_for(self, name: str) -> dict[str, Any]:
        """The default ranges of ``name`` with this config's overrides applied."""
        merged = copy.deepcopy(dict(resolve(name).ranges))
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
        }
