"""The 19 UIR-2.5M degradation types: stable ids, names, and their implementations.

The table below fixes ids and names once, independent of import order, so that a label
written today means the same type in every later version. Implementations attach to a
name with :func:`register`; each lives in the module named for its physical model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

# id, name, abbreviation (as in the UIR-2.5M table), one-line description.
TYPE_TABLE: tuple[tuple[int, str, str, str], ...] = (
    (0, "noise", "GN", "Gaussian, Poisson or salt-and-pepper noise"),
    (1, "camera_noise", "RN", "real camera noise: unprocess to raw, shot + read noise, re-process"),
    (2, "motion_blur", "MB", "camera-shake trajectory or linear motion kernel"),
    (3, "defocus_blur", "DB", "anti-aliased disk kernel, optionally depth-varying"),
    (4, "gaussian_blur", "GB", "Real-ESRGAN Gaussian / generalised / plateau / sinc kernels"),
    (5, "jpeg", "J", "JPEG encode / decode"),
    (6, "haze", "H", "atmospheric scattering with a plausible depth"),
    (7, "rain_streaks", "RS", "motion-blurred streak layers"),
    (8, "raindrops", "RD", "adherent drops acting as small refracting lenses"),
    (9, "rain_streaks_raindrops", "RSD", "rain streaks then raindrops"),
    (10, "snow", "S", "snowflake particle layers and veiling haze"),
    (11, "mosaic", "MS", "Bayer sampling then demosaicking"),
    (12, "low_light", "LL", "darkening in linear light with sensor noise"),
    (13, "moire", "MR", "display grid aliased against a camera Bayer grid"),
    (14, "blur_jpeg", "BJ", "motion blur then JPEG"),
    (15, "blur_rain", "BR", "defocus or motion blur with raindrops and streaks"),
    (16, "blur_lowlight_noise", "BLN", "blur in linear light, darkening, noise"),
    (17, "lowlight_haze_rain_snow", "LHRS", "one of the 11 CDD-11 combinations"),
    (18, "downsample_noise_blur_jpeg", "DNBJ", "Real-ESRGAN second-order pipeline"),
)
NUM_TYPES = len(TYPE_TABLE)
TYPE_NAMES: tuple[str, ...] = tuple(row[1] for row in TYPE_TABLE)
TYPE_IDS: dict[str, int] = {row[1]: row[0] for row in TYPE_TABLE}

# fn(image HxWx3 float32 in [0,1], level in [0,1], rng, ranges) -> (degraded image, parameters)
DegradeFn = Callable[[np.ndarray, float, np.random.Generator, Mapping[str, Any]], tuple[np.ndarray, dict]]


@dataclass(frozen=True)
class DegradationType:
    """One registered type. ``ranges`` are the default parameter ranges a config may override."""

    id: int
    name: str
    abbrev: str
    description: str
    fn: DegradeFn
    ranges: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, DegradationType] = {}


def register(name: str, ranges: Mapping[str, Any] | None = None):
    """Decorator attaching an implementation to a name of :data:`TYPE_TABLE`. (A type's batched torch form, where it
    has one, is a row of ``torch_ops.TORCH_FNS``: the only module of ``degradations`` that imports torch.)"""
    if name not in TYPE_IDS:
        raise ValueError(f"unknown degradation type {name!r}; valid: {', '.join(TYPE_NAMES)}")

    def wrap(fn: DegradeFn) -> DegradeFn:
        row = TYPE_TABLE[TYPE_IDS[name]]
        _REGISTRY[name] = DegradationType(row[0], row[1], row[2], row[3], fn, dict(ranges or {}))
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the implementation modules registers them; done lazily so that
    # ``registry`` itself has no import cycle with the modules that use ``register``.
    if len(_REGISTRY) < NUM_TYPES:
        from . import types  # noqa: F401


def resolve(type_: str | int) -> DegradationType:
    """Look a type up by name or id; the error lists the valid ones."""
    _ensure_loaded()
    if isinstance(type_, (int, np.integer)) and not isinstance(type_, bool):
        if not 0 <= int(type_) < NUM_TYPES:
            raise ValueError(f"unknown degradation type id {type_}; valid ids are 0..{NUM_TYPES - 1}")
        type_ = TYPE_NAMES[int(type_)]
    if type_ not in _REGISTRY:
        if type_ in TYPE_IDS:
            raise ValueError(f"degradation type {type_!r} has no implementation registered")
        raise ValueError(f"unknown degradation type {type_!r}; valid: {', '.join(TYPE_NAMES)}")
    return _REGISTRY[type_]


def all_types() -> list[DegradationType]:
    """Every implemented type, in id order."""
    _ensure_loaded()
    return [_REGISTRY[n] for n in TYPE_NAMES if n in _REGISTRY]
