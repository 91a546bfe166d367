"""Extra degradation types beyond the 19: an albumentations transform or a user's function, declared
in an engine config and numbered after the 19 in the order given.

    extra_types:
      sun_flare: {albumentations: RandomSunFlare, params: {method: overlay}}
      shadow:    {albumentations: RandomShadow, level: {shadow_intensity_range: [0.3, 0.9]}}
      my_sensor: {function: "my_lab.sensor:degrade", params: {gain: 2.0}}

An ``albumentations`` entry runs that transform (always, p = 1) on the float32 image. For the transforms
of :data:`LEVEL_MAPS` the level drives the transform's strength parameters: each mapped parameter takes
the value ``lerp((at level 0, at level 1), level)``, passed as a point range ``(v, v)`` where the
transform expects a range, rounded where it expects an integer, scaled by √(H·W)/256 for lengths in
pixels (given at 256², as everywhere in the engine) and given a random sign where marked. An entry's
``level: {param: [at 0, at 1]}`` replaces the bounds of a mapped parameter or maps a new one (also on
transforms outside the table); a transform with no mapped parameter ignores the level. Every other
parameter comes from ``params`` or the transform's default, and the transform draws the rest from its
own generator, which is reseeded from the engine's generator on every call: the output is a pure
function of (image, level, seed), whatever the process or worker, and no global RNG is read.

A ``function`` entry names ``"module:function"``, called as ``fn(image, level, rng, **params) → image``
with image H×W×3 float32 in [0, 1], level in [0, 1] and ``rng`` a ``numpy.random.Generator`` (draw
from it only); it returns an H×W×3 float32 image (values outside [0, 1] are clipped).

Every entry is built and tried on a small test image when the config is made, so that a bad entry
(unknown transform or parameter, missing function, wrong output shape or dtype, non-deterministic
or global-RNG draws) is refused up front with an error naming it.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import random
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .image import pixel_scale
from .levels import lerp
from .rng import make_rng

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class ExtraTypeConfig:
    """One extra type: exactly one of ``albumentations`` (a transform's class name) or ``function``
    (``"module:function"``); ``params`` its fixed parameters; ``level`` (albumentations only) maps
    parameters onto the level, ``{param: [at level 0, at level 1]}``, on top of :data:`LEVEL_MAPS`."""

    albumentations: str | None = None
    function: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    level: dict[str, tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.albumentations is not None:
            out["albumentations"] = self.albumentations
        if self.function is not None:
            out["function"] = self.function
        out["params"] = dict(self.params)
        if self.level is not None:
            out["level"] = {k: list(v) for k, v in self.level.items()}
        return out


@dataclass(frozen=True)
class LevelMap:
    """A parameter's values at level 0 and level 1; ``pixels``: a length given at 256² (scaled with the
    image); ``signed``: the value's sign is drawn at random (±v), for parameters whose sign is a direction."""

    at_0: float
    at_1: float
    pixels: bool = False
    signed: bool = False


# The transforms we support well: their strength parameters, mapped onto the level. Chosen by eye on the
# contact sheet (tools/degrade.py --sheet) so that level 0 is a visible but mild degradation and level 1 a
# harsh one on 128²–256² crops. The README lists them; tests check that severity rises with the level.
LEVEL_MAPS: dict[str, dict[str, LevelMap]] = {
    # lens flare: the sun disk's radius (px at 256²) and the number of flare circles
    "RandomSunFlare": {"src_radius": LevelMap(40, 130, pixels=True), "num_flare_circles_range": LevelMap(3, 10)},
    # cast shadows: darkness of each polygon and their number
    "RandomShadow": {"shadow_intensity_range": LevelMap(0.25, 0.85), "num_shadows_limit": LevelMap(1, 2)},
    # rain or mud on the lens: opacity, and coverage (a lower threshold lets more of the liquid layer through)
    "Spatter": {"intensity": LevelMap(0.3, 0.9), "cutout_threshold": LevelMap(0.74, 0.66)},
    # lateral chromatic aberration: radial distortion of red and blue against green (sign: fringe direction).
    # Red and blue share the level's value, so mode "random" acts as "green_purple"; "red_blue" is the other.
    "ChromaticAberration": {
        "primary_distortion_limit": LevelMap(0.02, 0.15, signed=True),
        "secondary_distortion_limit": LevelMap(0.01, 0.08, signed=True),
    },
    # zoom blur (a non-uniform, radial blur): the largest zoom factor
    "ZoomBlur": {"max_factor": LevelMap(1.03, 1.2)},
    # non-uniform shadow from a plasma fractal
    "PlasmaShadow": {"shadow_intensity_range": LevelMap(0.2, 0.8)},
    # non-uniform illumination (linear gradient, corner or Gaussian spot)
    "Illumination": {"intensity_range": LevelMap(0.03, 0.2)},
    # patchy fog
    "RandomFog": {"fog_coef_range": LevelMap(0.2, 0.8)},
    # sensor noise: colour shift and luminance noise
    "ISONoise": {"intensity": LevelMap(0.05, 0.5), "color_shift": LevelMap(0.01, 0.05)},
    # frosted glass: blur and local pixel shuffling
    "GlassBlur": {"sigma": LevelMap(0.7, 1.2), "max_delta": LevelMap(1, 4, pixels=True)},
    # gravel patches
    "RandomGravel": {"number_of_patches": LevelMap(1, 6)},
    "SaltAndPepper": {"amount": LevelMap(0.005, 0.08)},
    # Poisson noise: the scale is the inverse photon count per unit intensity
    "ShotNoise": {"scale_range": LevelMap(0.001, 0.05)},
    # ringing of a sinc filter: a lower cut-off (radians) rings more
    "RingingOvershoot": {"cutoff": LevelMap(1.5, 0.4)},
    "Posterize": {"num_bits": LevelMap(6, 2)},
    "GaussNoise": {"std_range": LevelMap(0.02, 0.25)},
    "ImageCompression": {"quality_range": LevelMap(90, 10)},
    "Defocus": {"radius": LevelMap(2, 8, pixels=True)},
}

# Modules whose transforms move pixels or change the size (LQ and GT would no longer be aligned) or
# work on other data; Morphological (erosion / dilation) lives among the geometric ones but moves nothing.
_REFUSED_MODULES = ("geometric", "crops", "transforms3d", "spectrogram")
_ALIGNED_GEOMETRIC = ("Morphological",)
# Parameters the engine owns.
_RESERVED = ("p", "strict")


class ExtraTypeError(ValueError):
    """An extra type failed in a way its error message already explains, naming the entry."""


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations

    return albumentations


def _where(name: str, key: str | None = None) -> str:
    return f"extra_types.{name}" + (f".{key}" if key else "")


def _json_safe(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _one_line(err: Exception) -> str:
    """A (pydantic) error message on one line, without its links."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return " ".join(lines)


def _is_integer(param: inspect.Parameter) -> bool:
    """Whether a transform's parameter takes integers: by its annotation, else by its default."""
    annotation = str(param.annotation)
    if param.annotation is not inspect.Parameter.empty:
        return "float" not in annotation and re.search(r"\bint\b", annotation) is not None
    values = param.default if isinstance(param.default, tuple) else (param.default,)
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def entry_from_dict(name: str, data: Any) -> ExtraTypeConfig:
    """An entry of ``extra_types`` from YAML: unknown keys are named by their dotted path."""
    if isinstance(data, ExtraTypeConfig):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"{_where(name)}: expected a mapping with 'albumentations' or 'function', got {data!r}")
    valid = [f.name for f in dataclasses.fields(ExtraTypeConfig)]
    for key in data:
        if key not in valid:
            raise ValueError(f"unknown config key {_where(name, key)!r}; valid keys in {_where(name)}: {', '.join(valid)}")
    return ExtraTypeConfig(**dict(data))


def check_entry(name: str, entry: ExtraTypeConfig, builtin_names: tuple[str, ...]) -> None:
    """The static checks of one entry (no import); ValueError naming it."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"{_where(str(name))}: a type name is lower-case letters, digits and '_', starting with a letter")
    if name in builtin_names:
        raise ValueError(f"{_where(name)}: {name!r} is one of the 19 built-in types; give the extra type another name")
    for key in ("albumentations", "function"):
        if getattr(entry, key) == "":
            setattr(entry, key, None)
    if entry.params is None:  # `params:` left empty in YAML
        entry.params = {}
    given = [key for key in ("albumentations", "function") if getattr(entry, key) is not None]
    if len(given) != 1:
        raise ValueError(f"{_where(name)}: give exactly one of 'albumentations' (a transform name) or 'function' "
                         f"('module:function'), got {given or 'neither'}")
    if not isinstance(getattr(entry, given[0]), str):
        raise ValueError(f"{_where(name, given[0])}: expected a string, got {getattr(entry, given[0])!r}")
    if not isinstance(entry.params, Mapping):
        raise ValueError(f"{_where(name, 'params')}: expected a mapping, got {entry.params!r}")
    for key in entry.params:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{_where(name, 'params')}: {key!r} is not a parameter name")
    if entry.function is not None and entry.level is not None:
        raise ValueError(f"{_where(name, 'level')}: applies to albumentations entries; a function receives the level itself")
    if entry.level is not None:
        if not isinstance(entry.level, Mapping):
            raise ValueError(f"{_where(name, 'level')}: expected a mapping {{param: [at level 0, at level 1]}}, got {entry.level!r}")
        bounds = {}
        for key, pair in entry.level.items():
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in pair)):
                raise ValueError(f"{_where(name, f'level.{key}')}: expected [value at level 0, value at level 1], got {pair!r}")
            bounds[key] = (float(pair[0]), float(pair[1]))
        entry.level = bounds


def build_extra_type(name: str, entry: ExtraTypeConfig, type_id: int):
    """The :class:`~degradations.registry.DegradationType` of one entry, tried on a test image."""
    from .registry import DegradationType

    if entry.albumentations is not None:
        fn: Callable = AlbumentationsDegradation(name, entry.albumentations, entry.level)
        description = f"albumentations {entry.albumentations}" + ("" if fn.level_map else " (level ignored)")
    else:
        fn = FunctionDegradation(name, entry.function)
        description = f"function {entry.function}"
    fn.check_params(entry.params)
    spec = DegradationType(type_id, name, name, description, fn, dict(entry.params))
    try_entry(spec)
    return spec


class AlbumentationsDegradation:
    """``fn(image, level, rng, params) → (lq, recorded parameters)`` running one albumentations transform.

    The transform is built on every call with the level's parameters (cheap: well under a millisecond)
    and seeded from ``rng``, so that nothing is shared between calls, threads or engines.
    """

    def __init__(self, entry: str, transform: str, level: Mapping[str, tuple[float, float]] | None = None):
        self.entry, self.transform = entry, transform
        self.cls = self._find(entry, transform)
        self.signature = self._parameters(self.cls)
        table = dict(LEVEL_MAPS.get(transform, {}))
        for key, (at_0, at_1) in (level or {}).items():
            if key not in self.signature:
                raise ValueError(f"{_where(entry, f'level.{key}')}: {transform} has no parameter {key!r}; "
                                 f"valid: {', '.join(self.signature)}")
            kept = table.get(key, LevelMap(at_0, at_1))
            table[key] = dataclasses.replace(kept, at_0=at_0, at_1=at_1)
        self.level_map = table

    @staticmethod
    def _find(entry: str, transform: str) -> type:
        A = _albumentations()
        cls = getattr(A, transform, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            names = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
            close = difflib.get_close_matches(transform, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{_where(entry, 'albumentations')}: unknown albumentations transform {transform!r}{hint}")
        module = cls.__module__.split(".")
        if any(part in _REFUSED_MODULES for part in module) and transform not in _ALIGNED_GEOMETRIC:
            raise ValueError(f"{_where(entry, 'albumentations')}: {transform} is a geometric transform ({cls.__module__}); "
                             "it would misalign the degraded image with its clean target")
        if transform == "Lambda":
            raise ValueError(f"{_where(entry, 'albumentations')}: use a 'function' entry instead of Lambda")
        return cls

    @staticmethod
    def _parameters(cls: type) -> dict[str, inspect.Parameter]:
        params = inspect.signature(cls.__init__).parameters
        return {k: p for k, p in params.items()
                if k not in ("self", *_RESERVED) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def check_params(self, params: Mapping[str, Any]) -> None:
        for key in params:
            if key in _RESERVED:
                raise ValueError(f"{_where(self.entry, f'params.{key}')}: the engine sets it (an extra type always applies)")
            if key not in self.signature:
                raise ValueError(f"{_where(self.entry, f'params.{key}')}: {self.transform} has no parameter {key!r}; "
                                 f"valid: {', '.join(self.signature)}")
            if key in self.level_map:
                m = self.level_map[key]
                raise ValueError(f"{_where(self.entry, f'params.{key}')}: follows the level ({m.at_0:g} at level 0 → "
                                 f"{m.at_1:g} at level 1); set its bounds in {_where(self.entry, 'level')} instead")

    def _value(self, key: str, m: LevelMap, level: float, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        value = lerp((m.at_0, m.at_1), level)
        if m.pixels:
            value *= pixel_scale(shape)
        if m.signed and rng.random() < 0.5:
            value = -value
        param = self.signature[key]
        if _is_integer(param):
            value = max(1, round(value)) if m.pixels else round(value)
        return (value, value) if isinstance(param.default, tuple) else value

    def kwargs_at(self, params: Mapping[str, Any], level: float, shape: tuple[int, ...], rng: np.random.Generator) -> dict:
        kwargs = dict(params)
        for key in sorted(self.level_map):  # a fixed order: the signs draw from rng
            kwargs[key] = self._value(key, self.level_map[key], level, shape, rng)
        return kwargs

    def __call__(self, image: np.ndarray, level: float, rng: np.random.Generator, params: Mapping[str, Any]):
        kwargs = self.kwargs_at(params, level, image.shape, rng)
        seed = int(rng.integers(2**63))
        try:
            transform = self.cls(**kwargs, p=1.0, strict=True)
        except Exception as err:  # noqa: BLE001 - pydantic's and albumentations' own errors
            raise ExtraTypeError(f"{_where(self.entry)}: albumentations {self.transform} rejects {_json_safe(kwargs)}: "
                                 f"{_one_line(err)}") from None
        transform.set_random_seed(seed)
        out = transform(image=image)["image"]
        if isinstance(out, np.ndarray) and out.dtype == np.uint8:
            out = out.astype(np.float32) / np.float32(255.0)
        check_output(self.entry, image, out)
        recorded = {"transform": self.transform, **_json_safe(kwargs), "seed": seed}
        if not self.level_map:
            recorded["level_ignored"] = True
        return out, recorded


class FunctionDegradation:
    """``fn(image, level, rng, params) → (lq, params)`` calling a user's ``fn(image, level, rng, **params)``."""

    def __init__(self, entry: str, path: str):
        self.entry, self.path = entry, path
        self.fn = import_function(entry, path)

    def check_params(self, params: Mapping[str, Any]) -> None:
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # a builtin without a signature: the trial call will tell
            return
        try:
            signature.bind(None, 0.0, None, **params)
        except TypeError as err:
            raise ValueError(f"{_where(self.entry, 'params')}: {self.path} cannot be called as "
                             f"fn(image, level, rng, **params): {err}") from None

    def __call__(self, image: np.ndarray, level: float, rng: np.random.Generator, params: Mapping[str, Any]):
        out = self.fn(image, level, rng, **params)
        check_output(self.entry, image, out)
        return out, {"function": self.path, **_json_safe(dict(params))}

    def __getstate__(self) -> dict:  # re-imported by path in a worker process
        return {"entry": self.entry, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["entry"], state["path"])


def import_function(entry: str, path: str) -> Callable:
    """``"package.module:function"`` (or ``module:Class.method``) → the callable; ValueError naming the entry."""
    where = _where(entry, "function")
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{where}: expected 'module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import module {module_name!r} ({err}); is it on PYTHONPATH?") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}: {path!r} is not callable")
    return obj


def check_output(entry: str, image: np.ndarray, out: Any) -> None:
    """An extra type's output must be an H×W×3 float32 array like its input, with finite values."""
    if not isinstance(out, np.ndarray):
        raise ExtraTypeError(f"extra type {entry!r} returned {type(out).__name__}, expected an H×W×3 float32 numpy array")
    if out.shape != image.shape:
        raise ExtraTypeError(f"extra type {entry!r} returned shape {out.shape} for an input of shape {image.shape}")
    if out.dtype != np.float32:
        raise ExtraTypeError(f"extra type {entry!r} returned dtype {out.dtype}, expected float32 in [0, 1]")
    if not np.isfinite(out).all():
        raise ExtraTypeError(f"extra type {entry!r} returned NaN or inf")


def probe_image(height: int = 48, width: int = 64) -> np.ndarray:
    """A small deterministic test image (H ≠ W, so that a transposed output is caught): smooth colour
    gradients under a fine texture, float32 in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.25 * np.sin(x / 3.0) * np.cos(y / 5.0)], axis=-1)
    texture = make_rng(12345).random((height, width, 1), dtype=np.float32) * 0.2
    return np.clip(0.15 + 0.65 * base + texture, 0.0, 1.0).astype(np.float32)


def _global_rng_states() -> tuple:
    torch = sys.modules.get("torch")
    np_state = np.random.get_state()
    return (random.getstate(), np_state[1].tobytes(), np_state[2:],
            torch.random.get_rng_state().numpy().tobytes() if torch is not None else None)


def try_entry(spec) -> None:
    """Run ``spec`` on :func:`probe_image` at levels 0 and 1 and refuse, naming the entry, a failure, an
    output of the wrong kind, an output that ignores the seed or a change of a global RNG's state."""
    image = probe_image()
    where = _where(spec.name)
    before = _global_rng_states()
    for level in (0.0, 1.0):
        outputs = []
        for _ in range(2):
            try:
                out, _ = spec.fn(image.copy(), level, make_rng((0, 1)), dict(spec.ranges))
            except ExtraTypeError:
                raise
            except Exception as err:  # noqa: BLE001 - any failure of foreign code is reported as the entry's
                raise ValueError(f"{where}: fails on a {image.shape[0]}×{image.shape[1]} test image at level {level:g}: "
                                 f"{type(err).__name__}: {err}") from None
            outputs.append(out)
        if not np.array_equal(outputs[0], outputs[1]):
            raise ValueError(f"{where}: two calls with the same seed gave different images; draw every random "
                             "number from the rng argument")
        if level == 1.0 and np.array_equal(outputs[0], image):
            raise ValueError(f"{where}: left the test image unchanged at level 1")
    if _global_rng_states() != before:
        raise ValueError(f"{where}: changed a global random state (python random, numpy or torch); draw every random "
                         "number from the rng argument")
