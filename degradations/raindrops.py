"""Type 8 ``raindrops``: adherent drops on the glass (Qian et al., CVPR 2018; RainDS).

Each drop on the glass is a small, clear lens out of the camera's focus. It shows a blurred, inverted
(point-reflected about its centre) view of a scene area wider than itself, so it keeps the colour of
its surroundings, a little brighter and with less contrast; a thin soft dark edge on the side away
from the light and a faint highlight are all that outline it. Shapes are wobbly metaballs, large
drops sag down the pane, sizes are skewed to many small drops, touching drops merge, and the
background is slightly defocused.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import numpy as np

from .image import pixel_scale
from .levels import lerp
from .registry import register
from .rng import uniform

DROP_RANGES: dict[str, Any] = {
    "count": [8, 80],  # level 0 → 1; most of them small
    "radius": [1.5, 26.0],  # px at 256²; the upper end of a sample's radius grows with level
    "size_skew": 1.6,  # radius = lo·(top/lo)^(u^skew): > 1 gives many small drops and few large ones
    "aspect": [0.85, 1.15],  # ry / rx of a small drop
    "elongation": 0.5,  # a large drop sags down the tilted pane: ry grows by up to this fraction
    "metaball_prob": 0.5,  # a drop with a second, merged blob (below it when the drop is large)
    "wobble": [0.0, 0.08],  # irregular outline: 2nd/3rd angular harmonics of the radius
    "minification": [1.6, 3.0],  # a drop shows an inverted view of a scene area this many times wider
    "distortion": [0.2, 0.5],  # fish-eye: the view is compressed more towards the edge
    "view_blur": [1.5, 3.5],  # σ of the view inside drops, px at 256², level 0 → 1
    "background_blur": [0.3, 1.0],  # σ of the background defocus, px at 256², level 0 → 1
    "edge_softness": [0.2, 0.4],  # width of the alpha ramp, as a fraction of the radius (≥ 1 px)
    "flatten": [0.15, 0.4],  # contrast lost inside a drop: light gathered from a wide area averages out
    "brighten": [0.02, 0.08],  # a drop is a little brighter than the scene around it
    "rim_darkness": [0.08, 0.25],  # thin dark edge, on the side away from the light
    "highlight": [0.03, 0.12],  # small soft specular spot towards the light
    "light_angle": [-150.0, -30.0],  # degrees, image coordinates (y down): the light comes from above
}


# columns of the drop table: one row per drop, lengths in pixels of the image
DROP_COLUMNS = ("cx", "cy", "rx", "ry", "minification", "distortion", "rim", "highlight", "edge", "wobble",
                "phase2", "phase3", "flatten", "brighten", "blob_cx", "blob_cy", "blob_rx", "blob_ry")
_COL = {name: j for j, name in enumerate(DROP_COLUMNS)}
_PER_DROP_RANGES = {"minification": 4, "distortion": 5, "rim_darkness": 6, "highlight": 7, "edge_softness": 8,
                    "wobble": 9, "flatten": 12, "brighten": 13}  # range key → column filled from it


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
    if not (0 <= c_lo <= c_hi <= 255 and 0 < r_lo <= r_hi):
        raise ValueError(f"raindrops: need 0 <= count lo <= hi <= 255 and 0 < radius lo <= hi, got "
                         f"{ranges['count']}, {ranges['radius']}")
    u = rng.random((c_hi, 18))
    count = int(round(lerp((c_lo, c_hi), level)))
    # the radius range opens upwards with the level: light rain has small drops only
    r_top = lerp((r_lo + 0.35 * (r_hi - r_lo), r_hi), level)
    # log-uniform skewed to the small end: many droplets, a few large drops (as on a real pane)
    radius = r_lo * (r_top / r_lo) ** (u[:, 0] ** float(ranges["size_skew"]))
    size = (radius - r_lo) / max(r_hi - r_lo, 1e-6)  # 0 smallest … 1 largest possible
    a_lo, a_hi = (float(v) for v in ranges["aspect"])
    rx = radius * scale
    ry = rx * (a_lo + (a_hi - a_lo) * u[:, 1]) * (1.0 + float(ranges["elongation"]) * size * size)
    table = np.zeros((c_hi, len(DROP_COLUMNS)))
    table[:, 0], table[:, 1] = u[:, 2] * (w - 1), u[:, 3] * (h - 1)
    table[:, 2], table[:, 3] = rx, ry
    for key, j in _PER_DROP_RANGES.items():
        lo, hi = (float(v) for v in ranges[key])
        table[:, j] = lo + (hi - lo) * u[:, j]
    table[:, 10], table[:, 11] = u[:, 10] * 2 * math.pi, u[:, 11] * 2 * math.pi
    # a second blob merges into the drop; on large drops it hangs below (gravity on a tilted pane)
    has_blob = u[:, 14] < float(ranges["metaball_prob"])
    hang = np.pi / 2 + (u[:, 15] - 0.5) * 1.2
    ang = np.where(size > 0.3, hang, u[:, 15] * 2 * math.pi)
    dist = 0.5 + 0.5 * u[:, 16]
    r2 = (0.45 + 0.35 * u[:, 17]) * has_blob
    table[:, 14] = table[:, 0] + np.cos(ang) * dist * rx
    table[:, 15] = table[:, 1] + np.sin(ang) * dist * ry
    table[:, 16], table[:, 17] = rx * r2, rx * r2
    return table[:count].astype(np.float32)


_OUTLINE_ANGLES = np.linspace(0.0, 2 * math.pi, 32, endpoint=False)


def _harmonics(cos1, sin1):
    """(cos 2φ, sin 2φ, cos 3φ, sin 3φ) from cos φ, sin φ: polynomials instead of arctan2."""
    return (cos1 * cos1 - sin1 * sin1, 2 * cos1 * sin1,
            cos1 * (4 * cos1 * cos1 - 3), sin1 * (3 - 4 * sin1 * sin1))


_OUTLINE_COS, _OUTLINE_SIN = np.cos(_OUTLINE_ANGLES)[None], np.sin(_OUTLINE_ANGLES)[None]
_OUTLINE_HARMONICS = _harmonics(_OUTLINE_COS, _OUTLINE_SIN)


def _drop_outlines(per_drop: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Polygons for :func:`_label_drops`, all drops at once: (N, 32, 2) int32 outlines of the
    wobbly main blobs and (N, 16, 2) of the metaball blobs, in pixels with 4 fractional bits.

    Each is 4 % and a pixel larger than the drop: the metaball bridge bulges the outline slightly.
    """
    d = {name: per_drop[name][:, None] for name in ("cx", "cy", "rx", "ry", "w2c", "w2s", "w3c", "w3s",
                                                       "blob_cx", "blob_cy", "blob_rx", "blob_ry")}
    cos2, sin2, cos3, sin3 = _OUTLINE_HARMONICS
    k = 1.0 + d["w2c"] * cos2 - d["w2s"] * sin2 + d["w3c"] * cos3 - d["w3s"] * sin3
    xs = d["cx"] + (d["rx"] * 1.04 * k + 1.0) * _OUTLINE_COS
    ys = d["cy"] + (d["ry"] * 1.04 * k + 1.0) * _OUTLINE_SIN
    main = np.rint(np.stack([xs, ys], -1) * 16).astype(np.int32)
    xs = d["blob_cx"] + (d["blob_rx"] * 1.04 + 1.0) * _OUTLINE_COS[:, ::2]
    ys = d["blob_cy"] + (d["blob_ry"] * 1.04 + 1.0) * _OUTLINE_SIN[:, ::2]
    blob = np.rint(np.stack([xs, ys], -1) * 16).astype(np.int32)
    return main, blob


def _label_drops(drops: np.ndarray, order: np.ndarray, outlines, labels: np.ndarray) -> np.ndarray:
    """Draw into ``labels`` (uint8 (H, W), 0: no drop) 1 + the index of a drop covering each pixel.

    Drops are drawn in ``order`` as their ``outlines`` (from :func:`_drop_outlines`); where they
    overlap the last one drawn keeps the pixel. A drop claims no more than it really covers.
    """
    main, blob = outlines
    has_blob = drops[:, _COL["blob_rx"]] > 0
    for i in order.tolist():
        cv2.fillPoly(labels, [main[i]], i + 1, lineType=cv2.LINE_8, shift=4)
        if has_blob[i]:
            cv2.fillPoly(labels, [blob[i]], i + 1, lineType=cv2.LINE_8, shift=4)
    return labels


def _blurred_source(image: np.ndarray, sigma: float) -> tuple[np.ndarray, float, float]:
    """``image`` blurred by ``sigma`` px, at 1/2 or 1/4 resolution when the blur allows it.

    Returns (source, sx, sy): full-resolution pixel x maps to source pixel (x + 0.5)·sx − 0.5.
    """
    h, w = image.shape[:2]
    factor = 4 if sigma >= 6.0 else 2 if sigma >= 2.0 else 1
    if factor == 1:
        return (cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0.05 else image), 1.0, 1.0
    hs, ws = -(-h // factor), -(-w // factor)
    small = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA)
    # the area filter itself blurs by about half a low-resolution pixel
    rest = sigma * sigma / (factor * factor) - 0.25
    if rest > 0.01:
        small = cv2.GaussianBlur(small, (0, 0), math.sqrt(rest))
    return small, ws / w, hs / h


def _per_drop(drops: np.ndarray) -> dict[str, np.ndarray]:
    """Per-drop quantities (each (N,) float32) for the per-pixel pass: the table's columns plus
    reciprocals and the outline's harmonic coefficients, so that pixels gather instead of recompute."""
    d = {name: np.ascontiguousarray(drops[:, j]) for name, j in _COL.items()}
    d["inv_rx"], d["inv_ry"] = 1.0 / d["rx"], 1.0 / d["ry"]
    d["w2c"], d["w2s"] = 0.6 * d["wobble"] * np.cos(d["phase2"]), 0.6 * d["wobble"] * np.sin(d["phase2"])
    d["w3c"], d["w3s"] = 0.4 * d["wobble"] * np.cos(d["phase3"]), 0.4 * d["wobble"] * np.sin(d["phase3"])
    has_blob = d["blob_rx"] > 0
    # a drop without a second blob gets one far away: its potential vanishes without a branch
    d["bcx"] = np.where(has_blob, d["blob_cx"], np.float32(1e6)).astype(np.float32)
    d["bcy"] = np.where(has_blob, d["blob_cy"], np.float32(1e6)).astype(np.float32)
    d["inv_bx"] = np.where(has_blob, 1.0 / np.maximum(d["blob_rx"], 1e-3), 1.0).astype(np.float32)
    d["inv_by"] = np.where(has_blob, 1.0 / np.maximum(d["blob_ry"], 1e-3), 1.0).astype(np.float32)
    return d


def _drop_field(per_drop: dict[str, np.ndarray], owner: np.ndarray, px: np.ndarray, py: np.ndarray):
    """Metaball potential at pixels (px, py) of the drops ``owner`` (indices into ``per_drop``).

    Returns (field, du, dv, cos φ, sin φ): field is 1 on the outline of a lone blob, > 1 inside;
    (du, dv) is the offset from the drop centre in radii, φ its direction.
    """
    def g(name):
        return per_drop[name][owner]

    du = (px - g("cx")) * g("inv_rx")
    dv = (py - g("cy")) * g("inv_ry")
    r2 = np.maximum(du * du + dv * dv, 1e-6)
    inv_norm = 1.0 / np.sqrt(r2)
    cos1, sin1 = du * inv_norm, dv * inv_norm
    # irregular outline: 2nd and 3rd angular harmonics of the radius
    cos2, sin2, cos3, sin3 = _harmonics(cos1, sin1)
    outline = 1.0 + g("w2c") * cos2 - g("w2s") * sin2 + g("w3c") * cos3 - g("w3s") * sin3
    # Σ ρ⁻⁴ rather than the classic Σ ρ⁻²: two blobs merge with a short bridge instead of the
    # whole drop swelling
    field = outline * outline / r2
    field *= field
    bu = (px - g("bcx")) * g("inv_bx")
    bv = (py - g("bcy")) * g("inv_by")
    b2 = np.maximum(bu * bu + bv * bv, 1e-6)
    field += 1.0 / (b2 * b2)
    return field, du, dv, cos1, sin1


def _lens_view(source: np.ndarray, sx: float, sy: float, per_drop: dict[str, np.ndarray], owner: np.ndarray,
               px: np.ndarray, py: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """What each pixel (px, py) of drop ``owner`` shows: (N, 3) samples of the blurred ``source``.

    The lens is a point reflection about the drop centre; the view spans a wider area than the
    drop (minification) and is compressed more towards the edge (fish-eye, ``inside`` = ρ ≤ 1).
    """
    cx, cy = per_drop["cx"][owner], per_drop["cy"][owner]
    gain = per_drop["minification"][owner] * (1.0 + per_drop["distortion"][owner] * inside * inside)
    # cv2.remap wants maps under 32767 px wide: lay the N samples out as rows of 1024
    n = px.size
    rows = -(-n // 1024)
    map_x = np.zeros(rows * 1024, np.float32)
    map_y = np.zeros(rows * 1024, np.float32)
    map_x[:n] = (cx - (px - cx) * gain + 0.5) * sx - 0.5
    map_y[:n] = (cy - (py - cy) * gain + 0.5) * sy - 0.5
    return cv2.remap(source, map_x.reshape(rows, 1024), map_y.reshape(rows, 1024), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101).reshape(-1, 3)[:n]


def raindrop_layer(
    image: np.ndarray, drops: np.ndarray, view_sigma: float, background_sigma: float, light_angle: float = -90.0
) -> tuple[np.ndarray, np.ndarray]:
    """Render the drop table ``drops`` (see :func:`draw_drops`) on ``image`` (H×W×3 float32 in [0, 1]).

    Returns (degraded image, alpha (H, W) in [0, 1]: how much each pixel belongs to a drop).
    A drop is a clear lens focused far from the camera's focal plane: it shows an inverted,
    minified (wider) and blurred view of the scene around it, so its colour stays close to its
    surroundings with less contrast; only a thin dark edge on the side away from the light
    (``light_angle``, degrees, y down) and a small highlight towards it mark it. Pixels are
    assigned to drops by label images, then the lens is computed in one vectorised pass over the
    labelled pixels only.
    """
    h, w = image.shape[:2]
    background = cv2.GaussianBlur(image, (0, 0), background_sigma) if background_sigma > 0.05 else image.copy()
    alpha_map = np.zeros((h, w), np.float32)
    if len(drops) == 0:
        return background, alpha_map
    if len(drops) > 255:
        raise ValueError(f"raindrops: at most 255 drops, got {len(drops)}")
    # two labellings, larger drops on top and smaller drops on top, so that where two drops
    # overlap a pixel sees both: their potentials add up and their lenses cross-fade, so touching
    # drops merge like water instead of cutting each other (a droplet on a large drop is absorbed)
    by_size = np.argsort(drops[:, _COL["rx"]] * drops[:, _COL["ry"]], kind="stable")
    per_drop = _per_drop(drops)
    outlines = _drop_outlines(per_drop)
    labels = _label_drops(drops, by_size, outlines, np.zeros((h, w), np.uint8))
    sel = np.flatnonzero(labels)
    if sel.size == 0:
        return background, alpha_map
    owner = labels.ravel()[sel].astype(np.intp) - 1
    # only a drop overlapped by a larger one needs redrawing on top (bounding circles)
    d = drops.astype(np.float64)
    reach = np.maximum(d[:, 2], d[:, 3]) * (1.04 + d[:, _COL["wobble"]]) + 1.0
    blob_reach = np.hypot(d[:, 14] - d[:, 0], d[:, 15] - d[:, 1]) + np.maximum(d[:, 16], d[:, 17]) * 1.04 + 1.0
    reach = np.where(d[:, _COL["blob_rx"]] > 0, np.maximum(reach, blob_reach), reach)
    gap2 = (d[:, None, 0] - d[None, :, 0]) ** 2 + (d[:, None, 1] - d[None, :, 1]) ** 2
    rank = np.empty(len(drops), np.intp)
    rank[by_size] = np.arange(len(drops))
    overlapped = ((gap2 < (reach[:, None] + reach[None]) ** 2) & (rank[None] > rank[:, None])).any(1)
    small_on_top = by_size[::-1][overlapped[by_size[::-1]]]
    other = _label_drops(drops, small_on_top, outlines, labels.copy()).ravel()[sel].astype(np.intp) - 1
    px = (sel % w).astype(np.float32)
    py = (sel // w).astype(np.float32)
    field, du, dv, cos1, sin1 = _drop_field(per_drop, owner, px, py)
    both = np.flatnonzero(other != owner)
    if both.size:
        field_own = field[both]
        field_other = _drop_field(per_drop, other[both], px[both], py[both])[0]
        field[both] += field_other

    def c(name):
        return per_drop[name][owner]

    rho = 1.0 / np.sqrt(np.sqrt(field))  # effective normalised radius: < 1 inside the drop
    edge = np.maximum(c("edge"), 1.2 * np.maximum(c("inv_rx"), c("inv_ry")))  # ≥ ~1 px of soft edge
    alpha = np.clip((1.0 - rho) / edge, 0.0, 1.0)
    alpha = alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: the glass is out of focus too
    inside = np.minimum(rho, 1.0)

    source, sx, sy = _blurred_source(image, view_sigma * float(per_drop["minification"].mean()))
    view = _lens_view(source, sx, sy, per_drop, owner, px, py, inside)
    if both.size:
        # where drops merge, cross-fade the two lenses instead of a seam; a lens's weight grows
        # with its area and its potential, from 0 just inside its label outline (potential
        # ≤ 0.85 there) up to a cap, so that a droplet's centre does not punch through a large drop
        area = per_drop["rx"] * per_drop["ry"]
        w_own = np.clip(field_own - 0.85, 0.0, 3.0) * area[owner[both]]
        w_other = np.clip(field_other - 0.85, 0.0, 3.0) * area[other[both]]
        t = (w_other / np.maximum(w_own + w_other, 1e-6))[:, None]
        t[(w_own + w_other)[:, None] <= 1e-6] = 0.5
        view_other = _lens_view(source, sx, sy, per_drop, other[both], px[both], py[both], inside[both])
        view[both] += t * (view_other - view[both])

    # light gathered from a wide area: less contrast around the drop's mean, a little brighter
    # per-drop alpha-weighted sums of (1, r, g, b) in one bincount over (drop, channel) bins
    weighted = np.empty((sel.size, 4), np.float32)
    weighted[:, 0] = alpha
    weighted[:, 1:] = view * alpha[:, None]
    bins = (owner[:, None] * 4 + np.arange(4)).ravel()
    sums = np.bincount(bins, weighted.ravel(), minlength=4 * len(drops)).reshape(-1, 4)
    mean = (sums[:, 1:] / (sums[:, :1] + 1e-6)).astype(np.float32)[owner]
    keep = 1.0 - c("flatten")
    drop_rgb = mean + (view - mean) * keep[:, None]
    # thin dark edge (light refracted away), strongest on the side away from the light
    theta = math.radians(light_angle)
    away = np.clip(0.5 - 0.5 * (cos1 * math.cos(theta) + sin1 * math.sin(theta)), 0.0, 1.0)
    band = (inside - 0.86) * 10.0
    rim = c("rim") * np.exp(-band * band) * (0.2 + 0.8 * away * np.sqrt(away))
    # brighten, darken at the rim, then a small soft highlight half-way to the edge, towards the light
    hx, hy = du - 0.45 * math.cos(theta), dv - 0.45 * math.sin(theta)
    spot = c("highlight") * np.exp((hx * hx + hy * hy) * (-1.0 / (2 * 0.12**2)))
    brighten = c("brighten")
    drop_rgb = 1.0 - (1.0 - drop_rgb) * (1.0 - brighten)[:, None]
    drop_rgb *= (1.0 - rim)[:, None]
    drop_rgb = 1.0 - (1.0 - drop_rgb) * (1.0 - spot)[:, None]

    flat = background.reshape(-1, 3)
    mixed = flat[sel]
    mixed += alpha[:, None] * (np.clip(drop_rgb, 0.0, 1.0) - mixed)
    flat[sel] = mixed
    alpha_map.ravel()[sel] = alpha
    return background, alpha_map


def apply_raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Raindrops at ``level``; returns (image, alpha (H, W), params)."""
    scale = pixel_scale(image.shape)
    drops = draw_drops(image.shape[:2], level, rng, ranges, scale)
    light_angle = uniform(rng, ranges["light_angle"])
    view_sigma = lerp(ranges["view_blur"], level) * scale
    background_sigma = lerp(ranges["background_blur"], level) * scale
    out, alpha = raindrop_layer(image, drops, view_sigma, background_sigma, light_angle)
    params = {
        "drop_columns": list(DROP_COLUMNS),
        "drops": np.round(drops, 3).tolist(),
        "light_angle": light_angle,
        "view_blur": view_sigma,
        "background_blur": background_sigma,
        "coverage": float((alpha > 0.5).mean()),
    }
    return out, alpha, params


@register("raindrops", ranges=DROP_RANGES)
def raindrops(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Adherent raindrops: more, larger, blurrier as ``level`` rises. image: H×W×3 float32 [0, 1]."""
    out, _, params = apply_raindrops(image, level, rng, ranges)
    return out, params
