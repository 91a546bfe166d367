"""Mixed types (ids 9, 14–17): compositions of single types.

Ids 14–17 look their components up through the registry. Each component runs with its single type's
default ranges (``dict(resolve(name).ranges)``; the few exceptions are named in the mixed type's own
ranges) and its own random stream, seeded from the mixed type's generator before anything else is
drawn: a component's draws do not depend on how many values an earlier component consumed, so one
seed at rising levels changes only the severity.

Component level: the mixed level bent by a per-component exponent, ``level ** exp(u)`` with
u ~ U(−level_jitter, level_jitter). Components of one sample are then not all equally severe, yet
each component level is still monotone in the mixed level and 0 → 0, 1 → 1.

params: {"components": [{"type", "level", "params"}, ...]} in the order applied, plus the choices.

Id 9 (rain streaks then raindrops, RainDS) is simpler: both components at the mixed level, drawing
from the mixed type's generator in turn; its ranges hold both components' ranges,
``{"streaks": {...}, "drops": {...}}``, and its params are ``{"streaks": ..., "drops": ...}``.
Id 18 (the Real-ESRGAN pipeline) lives in ``realesrgan.py``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from .color import display_to_linear, linear_to_display
from .rain_streaks import STREAK_RANGES, rain_streaks
from .raindrops import DROP_RANGES, raindrops
from .registry import register, resolve
from .rng import make_rng

# CDD-11 (Guo et al., OneRestore): low light, haze, rain, snow and their allowed combinations.
CDD11_COMBINATIONS: tuple[str, ...] = ("l", "h", "r", "s", "l+h", "l+r", "l+s", "h+r", "h+s", "l+h+r", "l+h+s")
# What the mixed type draws by default: CDD-11's combinations of two or more. The four single ones are
# the single types low_light, haze, rain_streaks and snow: drawn under id 17 they would give one image two
# labels (a classifier cannot tell them apart, by construction). ``combinations`` may still ask for all 11.
CDD11_MIXED: tuple[str, ...] = tuple(c for c in CDD11_COMBINATIONS if "+" in c)
CDD11_TYPES = {"l": "low_light", "h": "haze", "r": "rain_streaks", "s": "snow"}
# physical order: the hazy scene, then rain / snow in front of it, then the dark exposure of it all
CDD11_ORDER = ("h", "r", "s", "l")

LEVEL_JITTER = 0.35


class _Composer:
    """Runs components in order and records them; each gets its own generator and bent level."""

    def __init__(self, level: float, rng: np.random.Generator, level_jitter: float, slots: int):
        self.level = float(level)
        # everything random about the composition is drawn up front, in a fixed order
        self.seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=slots)]
        self.exponents = [math.exp(float(u)) for u in rng.uniform(-level_jitter, level_jitter, size=slots)]
        self.components: list[dict[str, Any]] = []

    def component_level(self, slot: int) -> float:
        return float(self.level ** self.exponents[slot])

    def run(
        self,
        slot: int,
        name: str,
        image: np.ndarray,
        overrides: Mapping[str, Any] | None = None,
        transform: tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None,
    ) -> np.ndarray:
        """Apply registered type ``name`` (optionally inside a to/from transform, e.g. linear light)."""
        spec = resolve(name)
        ranges = dict(spec.ranges)
        ranges.update(overrides or {})
        level = self.component_level(slot)
        x = transform[0](image) if transform else image
        out, params = spec.fn(np.ascontiguousarray(x, dtype=np.float32), level, make_rng(self.seeds[slot]), ranges)
        out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
        if transform:
            out = np.clip(transform[1](out), 0.0, 1.0).astype(np.float32, copy=False)
        self.components.append({"type": name, "level": level, "params": params})
        return out


LINEAR_LIGHT = (display_to_linear, linear_to_display)  # a component run in linear light


@register("rain_streaks_raindrops", ranges={"streaks": STREAK_RANGES, "drops": DROP_RANGES})
def rain_streaks_raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Rain streaks, then raindrops on the glass in front of them (RainDS). Both at ``level``."""
    # overrides name only the keys they change: {"streaks": {"density": [...]}}
    streak_ranges = {**STREAK_RANGES, **dict(ranges.get("streaks", {}))}
    drop_ranges = {**DROP_RANGES, **dict(ranges.get("drops", {}))}
    streaked, streak_params = rain_streaks(image, level, rng, streak_ranges)
    out, drop_params = raindrops(streaked, level, rng, drop_ranges)
    return out, {"streaks": streak_params, "drops": drop_params}


@register("blur_jpeg", ranges={"level_jitter": LEVEL_JITTER})
def blur_jpeg(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Motion blur then JPEG (REDS-blur-JPEG, RealBlur-J). image: H×W×3 float32 in [0, 1]."""
    comp = _Composer(level, rng, float(ranges["level_jitter"]), slots=2)
    out = comp.run(0, "motion_blur", image)
    out = comp.run(1, "jpeg", out)
    return out, {"components": comp.components}


@register("blur_rain", ranges={"level_jitter": LEVEL_JITTER, "defocus_prob": 0.6, "streaks_prob": 0.7})
def blur_rain(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """RainDrop-Clarity (day): rain streaks in the scene (p ``streaks_prob``), the scene blurred —
    defocus when the camera focuses on the glass (p ``defocus_prob``), else motion — then raindrops
    on the glass, which stay in focus."""
    comp = _Composer(level, rng, float(ranges["level_jitter"]), slots=3)
    blur = "defocus_blur" if rng.random() < float(ranges["defocus_prob"]) else "motion_blur"
    with_streaks = bool(rng.random() < float(ranges["streaks_prob"]))
    out = comp.run(0, "rain_streaks", image) if with_streaks else image
    out = comp.run(1, blur, out)
    out = comp.run(2, "raindrops", out)
    return out, {"blur": blur, "streaks": with_streaks, "components": comp.components}


@register(
    "blur_lowlight_noise",
    ranges={
        "level_jitter": LEVEL_JITTER,
        "motion_prob": 0.7,
        "noise_model_probs": [0.7, 0.3, 0.0],  # gaussian, poisson, salt_pepper
        "noise_level_scale": 0.5,
    },
)
def blur_lowlight_noise(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """LOL-Blur: blur in linear light (motion, else defocus), darken (low_light: linear-light
    darkening with its own shot + read noise), then sensor-side noise.

    The noise step uses the noise type with Gaussian / Poisson only (impulse noise is not what a
    night camera makes: ``noise_model_probs``) at ``noise_level_scale`` × its level, as low_light
    already brings most of the noise.
    """
    comp = _Composer(level, rng, float(ranges["level_jitter"]), slots=3)
    blur = "motion_blur" if rng.random() < float(ranges["motion_prob"]) else "defocus_blur"
    out = comp.run(0, blur, image, transform=LINEAR_LIGHT)
    out = comp.run(1, "low_light", out)
    scale = float(ranges["noise_level_scale"])
    noise_level = comp.component_level(2) * scale
    spec = resolve("noise")
    noise_ranges = {**dict(spec.ranges), "model_probs": list(ranges["noise_model_probs"])}
    noisy, noise_params = spec.fn(out, noise_level, make_rng(comp.seeds[2]), noise_ranges)
    comp.components.append({"type": "noise", "level": noise_level, "params": noise_params})
    return np.clip(noisy, 0.0, 1.0).astype(np.float32), {"blur": blur, "components": comp.components}


@register("lowlight_haze_rain_snow", ranges={"level_jitter": LEVEL_JITTER, "combinations": list(CDD11_MIXED)})
def lowlight_haze_rain_snow(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """CDD-11: one combination of low light (l), haze (h), rain (r) and snow (s), drawn uniformly
    from ``combinations`` (default: CDD-11's seven of two or more; all 11 on request), applied
    haze → rain / snow → low light."""
    combos = list(ranges["combinations"])
    for combo in combos:
        parts = combo.split("+")
        if not parts or any(p not in CDD11_TYPES for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(
                f"lowlight_haze_rain_snow: combination {combo!r} must join distinct letters of "
                f"{sorted(CDD11_TYPES)} with '+', e.g. 'l+h+r'"
            )
    comp = _Composer(level, rng, float(ranges["level_jitter"]), slots=len(CDD11_ORDER))
    combo = combos[int(rng.integers(len(combos)))]
    parts = set(combo.split("+"))
    out = image
    for slot, letter in enumerate(CDD11_ORDER):
        if letter in parts:
            out = comp.run(slot, CDD11_TYPES[letter], out)
    return out, {"combination": combo, "components": comp.components}
