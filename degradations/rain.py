"""Rain (ids 7, 8, 9): rain streaks, adherent raindrops, and streaks seen through raindrops.

Streaks (Rain100L/H): sparse noise motion-blurred along a near-vertical angle gives a streak layer
R in [0, 1], blended so rain only brightens: screen 1 − (1 − B)(1 − R) or add B + R.

Raindrops (Qian et al., CVPR 2018): each drop on the glass is a small lens. It shows a blurred,
inverted (point-reflected about its centre), magnified view of the scene behind it, has a soft
edge, a dark refraction rim and a specular highlight; the background is slightly defocused because
the camera focuses between the glass and the scene.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np

from .registry import register
from .sampling import lerp, uniform

REFERENCE_SIZE = 256.0  # literature pixel ranges are for ~256² crops

STREAK_RANGES: dict[str, Any] = {
    "density": [0.0008, 0.004],  # fraction of pixels seeding a streak, per layer, level 0 → 1
    "length": [10.0, 40.0],  # px at 256², level 0 → 1
    "angle": [-30.0, 30.0],  # degrees from vertical, clipped normal around 0
    "angle_sigma": 12.0,
    "layers": [1, 3],  # Rain100H: extra layers fade in with the level
    "layer_angle_spread": 15.0,  # degrees between layers
    "brightness": [0.3, 0.8],  # peak of a streak; the streak layer is semi-transparent
    "width": [0.4, 1.0],  # Gaussian σ across a streak, px at 256²
    "blend": ["screen", "add"],
}

DROP_RANGES: dict[str, Any] = {
    "count": [5, 60],  # level 0 → 1
    "radius": [3.0, 25.0],  # px at 256²; the upper end of a sample's radius grows with level
    "aspect": [0.7, 1.3],  # ry / rx of an elliptic drop
    "metaball_prob": 0.4,  # a drop with a second, merged blob
    "magnification": [1.2, 2.0],  # the scene patch behind a drop is this many times smaller
    "distortion": [0.2, 0.6],  # fish-eye: refraction grows towards the edge
    "drop_blur": [1.0, 3.5],  # σ of the view inside drops, px at 256², level 0 → 1
    "background_blur": [0.0, 0.8],  # σ of the background defocus, px at 256², level 0 → 1
    "edge_softness": [0.15, 0.3],  # width of the alpha ramp, as a fraction of the radius
    "rim_darkness": [0.1, 0.3],
    "specular": [0.15, 0.5],
}


def _pixel_scale(image: np.ndarray) -> float:
    return math.sqrt(image.shape[0] * image.shape[1]) / REFERENCE_SIZE


# ----------------------------------------------------------------------------- streaks


def _across_kernel(width: float) -> np.ndarray:
    """Gaussian profile across a streak, peak 1 (a lone streak keeps its seed's brightness)."""
    half = max(1, int(math.ceil(2.5 * width)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1, dtype=np.float32) / max(width, 1e-3)) ** 2)
    return kernel / kernel.max()


def streak_layer(
    shape: tuple[int, int],
    seeds_xy: np.ndarray,
    intensities: np.ndarray,
    angle_deg: float,
    length: float,
    width: float,
) -> np.ndarray:
    """One streak layer (H, W) in [0, 1] from seed points on an upright canvas.

    seeds_xy: (N, 2) positions in [0, 1)² of the canvas; intensities: (N,) streak peaks. The canvas
    covers the image rotated by ``angle_deg``; there every streak is vertical, so two box filters
    (a triangular, tapered profile along) and a short Gaussian across are enough; the canvas is
    then rotated onto the image. The rain layer has no scene content to misalign.
    """
    h, w = shape
    theta = math.radians(angle_deg)
    cw = int(math.ceil(w * abs(math.cos(theta)) + h * abs(math.sin(theta)))) + 4
    ch = int(math.ceil(h * abs(math.cos(theta)) + w * abs(math.sin(theta)) + length)) + 4
    canvas = np.zeros((ch, cw), dtype=np.float32)
    cols = (seeds_xy[:, 0] * cw).astype(np.intp)
    rows = (seeds_xy[:, 1] * ch).astype(np.intp)
    canvas[rows, cols] = intensities
    half = max(1, int(round(length / 2)))
    # box ∗ box = a tapered (triangular) streak of length ~L and peak 1/half: the across kernel
    # carries the factor ``half`` back, so a streak's centre reaches its seed's brightness
    canvas = cv2.blur(canvas, (1, half), borderType=cv2.BORDER_CONSTANT)
    canvas = cv2.blur(canvas, (1, half), borderType=cv2.BORDER_CONSTANT)
    across = _across_kernel(width) * np.float32(half)
    canvas = cv2.sepFilter2D(canvas, -1, across, np.ones(1, np.float32), borderType=cv2.BORDER_CONSTANT)
    centre = ((cw - 1) / 2.0, (ch - 1) / 2.0)
    rot = cv2.getRotationMatrix2D(centre, angle_deg, 1.0)
    # move the canvas centre onto the image centre
    rot[0, 2] += (w - 1) / 2.0 - centre[0]
    rot[1, 2] += (h - 1) / 2.0 - centre[1]
    layer = cv2.warpAffine(canvas, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.clip(layer, 0.0, 1.0)


def blend_rain(image: np.ndarray, rain: np.ndarray, mode: str) -> np.ndarray:
    """Blend a rain layer (H, W) in [0, 1] onto an image: both modes only brighten."""
    r = rain[..., None]
    if mode == "screen":
        return image + r * (1.0 - image)  # = 1 − (1 − B)(1 − R), exact where R = 0
    if mode == "add":
        return np.minimum(image + r, 1.0)
    raise ValueError(f"rain_streaks: blend must be 'screen' or 'add', got {mode!r}")


def rain_streak_layer(
    shape: tuple[int, int], level: float, rng: np.random.Generator, ranges: Mapping[str, Any], scale: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """The combined streak layer (H, W) in [0, 1] at ``level``, and its parameters."""
    h, w = shape
    lo_layers, hi_layers = (int(v) for v in ranges["layers"])
    if not 1 <= lo_layers <= hi_layers:
        raise ValueError(f"rain_streaks: layers must be [lo, hi] with 1 <= lo <= hi, got {ranges['layers']}")
    a_lo, a_hi = (float(v) for v in ranges["angle"])
    base_angle = float(np.clip(rng.normal(0.0, float(ranges["angle_sigma"])), a_lo, a_hi))
    blend_modes = list(ranges["blend"])
    blend = str(blend_modes[int(rng.integers(len(blend_modes)))])
    # seeds per layer: density × canvas area (about the image area), drawn sparsely
    area = float(h * w)
    max_seeds = int(math.ceil(float(ranges["density"][1]) * area * 1.3))
    density_full = lerp(ranges["density"], level)
    length = lerp(ranges["length"], level) * scale
    # a layer index fades in as the level rises: continuous in level, Rain100H-like at the top
    active = lo_layers + (hi_layers - lo_layers) * level
    rain = np.zeros((h, w), dtype=np.float32)
    layers = []
    for k in range(hi_layers):
        # draw every layer's randomness whatever the level, so levels share their seeds; a higher
        # level keeps the first seeds of a lower one and adds more
        seeds_xy = rng.random((max_seeds, 2), dtype=np.float32)
        intensities = rng.uniform(*ranges["brightness"], size=max_seeds).astype(np.float32)
        spread = float(ranges["layer_angle_spread"])
        angle = base_angle if k == 0 else float(np.clip(base_angle + rng.uniform(-spread, spread), a_lo, a_hi))
        width = uniform(rng, ranges["width"]) * scale
        layer_length = length * float(rng.uniform(0.8, 1.2))
        weight = float(np.clip(active - k, 0.0, 1.0))
        if weight <= 0.0:
            continue
        density = density_full * weight / (1.0 + 0.5 * k)  # farther layers are sparser
        n = min(max_seeds, int(round(density * area)))
        layer = streak_layer((h, w), seeds_xy[:n], intensities[:n], angle, layer_length, width)
        rain = 1.0 - (1.0 - rain) * (1.0 - layer)
        layers.append({"angle": angle, "length": layer_length, "width": width, "density": density, "streaks": n})
    return rain, {"blend": blend, "layers": layers}


@register("rain_streaks", ranges=STREAK_RANGES)
def rain_streaks(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Rain streaks, denser, longer and in more layers as ``level`` rises. image: H×W×3 float32 [0, 1]."""
    scale = _pixel_scale(image)
    rain, info = rain_streak_layer(image.shape[:2], level, rng, ranges, scale)
    out = blend_rain(image, rain, info["blend"])
    info["coverage"] = float((rain > 0.1).mean())
    return out, info


# ----------------------------------------------------------------------------- raindrops


# columns of the drop table: one row per drop, in pixels of the image
DROP_COLUMNS = ("cx", "cy", "rx", "ry", "magnification", "distortion", "rim", "specular", "edge",
                "blob_cx", "blob_cy", "blob_rx", "blob_ry")


def draw_drops(
    shape: tuple[int, int], level: float, rng: np.random.Generator, ranges: Mapping[str, Any], scale: float
) -> np.ndarray:
    """The drop table (N, len(DROP_COLUMNS)) float32 at ``level``.

    A drop without a second metaball blob has blob_rx = 0. The maximum count is always drawn and
    the first ``count`` kept, so a higher level keeps every drop of a lower one.
    """
    h, w = shape
    c_lo, c_hi = (int(v) for v in ranges["count"])
    r_lo, r_hi = (float(v) for v in ranges["radius"])
    if not (0 <= c_lo <= c_hi and 0 < r_lo <= r_hi):
        raise ValueError(f"raindrops: need 0 <= count lo <= hi and 0 < radius lo <= hi, got {ranges['count']}, "
                         f"{ranges['radius']}")
    u = rng.random((c_hi, 13))
    count = int(round(lerp((c_lo, c_hi), level)))
    # the radius range opens upwards with the level: light rain has small drops
    r_top = lerp((r_lo + 0.35 * (r_hi - r_lo), r_hi), level)

    def span(key, x):
        lo, hi = (float(v) for v in ranges[key])
        return lo + (hi - lo) * x

    radius = (r_lo + (r_top - r_lo) * u[:, 0] ** 1.5) * scale  # more small drops than large
    rx, ry = radius, radius * span("aspect", u[:, 1])
    cx, cy = u[:, 2] * (w - 1), u[:, 3] * (h - 1)
    has_blob = u[:, 9] < float(ranges["metaball_prob"])
    ang = u[:, 10] * 2 * math.pi
    dist = 0.6 + 0.5 * u[:, 11]
    r2 = (0.5 + 0.4 * u[:, 12]) * has_blob
    table = np.stack(
        [cx, cy, rx, ry, span("magnification", u[:, 4]), span("distortion", u[:, 5]),
         span("rim_darkness", u[:, 6]), span("specular", u[:, 7]), span("edge_softness", u[:, 8]),
         cx + np.cos(ang) * dist * rx, cy + np.sin(ang) * dist * ry, rx * r2, ry * r2],
        axis=1,
    ).astype(np.float32)
    return table[:count]


def raindrop_layer(
    image: np.ndarray, drops: np.ndarray, drop_sigma: float, background_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Render the drop table ``drops`` (see :func:`draw_drops`) on ``image`` (H×W×3 float32 in [0, 1]).

    Returns (degraded image, alpha (H, W) in [0, 1]: how much each pixel belongs to a drop).
    Pixels are assigned to drops with a label image (drawn ellipses), then every lens quantity is
    computed in one vectorised pass over the labelled pixels only.
    """
    h, w = image.shape[:2]
    background = cv2.GaussianBlur(image, (0, 0), background_sigma) if background_sigma > 0.05 else image
    alpha_map = np.zeros((h, w), np.float32)
    if len(drops) == 0:
        return background, alpha_map
    if len(drops) > 255:
        raise ValueError(f"raindrops: at most 255 drops, got {len(drops)}")
    blurred = cv2.GaussianBlur(image, (0, 0), drop_sigma) if drop_sigma > 0.05 else image
    col = {name: j for j, name in enumerate(DROP_COLUMNS)}

    labels = np.zeros((h, w), dtype=np.uint8)
    # larger drops last: where drops touch, the bigger one wins, like merging water
    for i in np.argsort(drops[:, col["rx"]] * drops[:, col["ry"]], kind="stable"):
        d = drops[i]
        blobs = [(d[0], d[1], d[2], d[3])] + ([(d[9], d[10], d[11], d[12])] if d[11] > 0 else [])
        for cx, cy, rx, ry in blobs:
            # alpha reaches 0 on the drop edge (ρ = 1), so the ellipse plus a pixel covers the drop;
            # a tight label keeps a neighbour from being cut where it does not really overlap
            axes = (int(math.ceil(rx + 1)), int(math.ceil(ry + 1)))
            cv2.ellipse(labels, (int(round(float(cx))), int(round(float(cy)))), axes, 0, 0, 360, int(i) + 1, -1)
    sel = np.flatnonzero(labels)
    if sel.size == 0:
        return background, alpha_map
    table = drops[labels.ravel()[sel].astype(np.intp) - 1]  # (N, columns): each pixel's drop

    def c(name):
        return table[:, col[name]]

    px = (sel % w).astype(np.float32)
    py = (sel // w).astype(np.float32)
    du, dv = (px - c("cx")) / c("rx"), (py - c("cy")) / c("ry")
    field = 1.0 / np.maximum(du * du + dv * dv, 1e-6)  # metaball potential: 1 on the drop edge
    blob_r = np.maximum(c("blob_rx"), 1e-3)
    bu, bv = (px - c("blob_cx")) / blob_r, (py - c("blob_cy")) / np.maximum(c("blob_ry"), 1e-3)
    field += np.where(c("blob_rx") > 0, 1.0 / np.maximum(bu * bu + bv * bv, 1e-6), 0.0)
    rho = 1.0 / np.sqrt(field)  # effective normalised radius: < 1 inside the drop
    alpha = np.clip((1.0 - rho) / c("edge"), 0.0, 1.0)
    alpha = alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: a soft, round edge
    inside = np.minimum(rho, 1.0)

    # the lens: point reflection about the drop centre, magnified, stronger refraction at the edge
    gain = (1.0 + c("distortion") * inside * inside) / c("magnification")
    src_x = c("cx") - (px - c("cx")) * gain
    src_y = c("cy") - (py - c("cy")) * gain
    # cv2.remap wants maps under 32767 px wide: lay the N samples out as rows of 1024
    n = sel.size
    rows = -(-n // 1024)
    map_x = np.zeros(rows * 1024, np.float32)
    map_y = np.zeros(rows * 1024, np.float32)
    map_x[:n], map_y[:n] = src_x, src_y
    view = cv2.remap(blurred, map_x.reshape(rows, 1024), map_y.reshape(rows, 1024), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101).reshape(-1, 3)[:n]

    # shading: a dark rim where light is refracted away, a soft highlight towards the top-left
    # (thin: a drop is clear water, not a glossy marble)
    rim = c("rim") * np.clip((inside - 0.75) / 0.25, 0.0, 1.0) ** 2
    hx, hy = du + 0.3, dv + 0.4
    spec = c("specular") * np.exp(-(hx * hx + hy * hy) / 0.012)
    drop_rgb = view * (1.0 - rim)[:, None] + spec[:, None]
    drop_rgb = drop_rgb * 1.04 + 0.02  # water in front of the scene reflects a little sky

    out = background.copy()
    flat = out.reshape(-1, 3)
    a = alpha[:, None]
    flat[sel] = flat[sel] * (1.0 - a) + np.clip(drop_rgb, 0.0, 1.0) * a
    alpha_map.ravel()[sel] = alpha
    return out, alpha_map


def apply_raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Raindrops at ``level``; returns (image, alpha (H, W), params)."""
    scale = _pixel_scale(image)
    drops = draw_drops(image.shape[:2], level, rng, ranges, scale)
    drop_sigma = lerp(ranges["drop_blur"], level) * scale
    background_sigma = lerp(ranges["background_blur"], level) * scale
    out, alpha = raindrop_layer(image, drops, drop_sigma, background_sigma)
    params = {
        "drop_columns": list(DROP_COLUMNS),
        "drops": np.round(drops, 3).tolist(),
        "drop_blur": drop_sigma,
        "background_blur": background_sigma,
        "coverage": float((alpha > 0.5).mean()),
    }
    return out, alpha, params


@register("raindrops", ranges=DROP_RANGES)
def raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Adherent raindrops: more, larger, blurrier as ``level`` rises. image: H×W×3 float32 [0, 1]."""
    out, _, params = apply_raindrops(image, level, rng, ranges)
    return out, params


@register("rain_streaks_raindrops", ranges={"streaks": STREAK_RANGES, "drops": DROP_RANGES})
def rain_streaks_raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Rain streaks, then raindrops on the glass in front of them (RainDS). Both at ``level``."""
    # overrides name only the keys they change: {"streaks": {"density": [...]}}
    streak_ranges = {**STREAK_RANGES, **dict(ranges.get("streaks", {}))}
    drop_ranges = {**DROP_RANGES, **dict(ranges.get("drops", {}))}
    streaked, streak_params = rain_streaks(image, level, rng, streak_ranges)
    out, drop_params = raindrops(streaked, level, rng, drop_ranges)
    return out, {"streaks": streak_params, "drops": drop_params}
