"""Moiré (id 13): a photograph of a screen (Liu et al. 2018; Yuan et al., AIM 2019).

The screen shows the image through a grid of R, G, B sub-pixel stripes separated by a dark matrix.
The camera sees that grid rotated, scaled (display pitch 0.7–1.3 camera pixels) and slightly in
perspective, blurred by its lens and pixel aperture, and samples it with a Bayer colour filter
array; noise, demosaicking and JPEG follow. Moiré is the aliasing of the sub-pixel grid by the
camera grid: nothing here draws a low-frequency pattern, it appears only when the fine grid is
sampled.

Registration: the clean image is the ground truth, so the scene must not move. We therefore warp
the *sub-pixel grid* relative to the camera, not the picture: the scene is evaluated at its own
camera coordinates and multiplied by the warped, blurred emission pattern. Only the interference
pattern and a small colour / brightness shift separate the output from the input.

Speed: the grid is periodic, so the lens and aperture blur are applied exactly to one period (a
12×12 tile) in the Fourier domain, and the camera samples that pre-filtered tile with one
``cv2.remap`` at its pixel centres — point sampling of the blurred irradiance, which is what a
sensor pixel records.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping

import cv2
import numpy as np

from .jpeg import jpeg_roundtrip_uint8
from .levels import lerp
from .registry import register
from .rng import uniform

TILE = 12  # texels per display pixel: 4 per sub-pixel stripe
OVERSAMPLING = 2  # camera pixels per output pixel: the ISP downsizes the capture, as in the data sets

MOIRE_RANGES: dict[str, Any] = {
    "pitch": [0.7, 1.3],  # display pixel size in output pixels (display grid scale), hard bounds
    # The pitch is drawn through the beat it makes with the camera: a colour's stripes (period
    # 2·pitch camera px) are sampled by its Bayer sites every 2 camera px, and alias to
    # |1/pitch − 1| cycles per output px; a beat period P gives pitch = 1/(1 ± 1/P). Broad bands
    # (P of tens of px) are the look of screen photos; P is log-uniform, in output px.
    "beat_period": [4.0, 60.0],
    "rotation": [-10.0, 10.0],  # degrees, bounds of a normal draw with σ = rotation_sigma
    "rotation_sigma": 3.0,
    "perspective": 0.12,  # max relative change of the pitch across the frame
    "stripe_fill": [0.55, 0.9],  # lit width of a sub-pixel stripe
    "matrix_gap": [0.1, 0.3],  # dark rows between display pixels, fraction of the pitch
    "lens_sigma": [0.9, 0.3],  # Gaussian PSF σ in camera px, level 0 → 1 (sharper = stronger moiré)
    "aperture": [0.6, 1.0],  # pixel aperture width (fill factor) in camera px
    "contrast": [0.35, 1.0],  # fraction of the sub-pixel modulation that reaches the sensor, level 0 → 1
    "color_shift": [0.01, 0.06],  # max per-channel gain change of the screen + camera pipeline, level 0 → 1
    "noise": [0.002, 0.015],  # read-noise σ on the raw values, level 0 → 1
    "jpeg_quality": [95, 70],  # level 0 → 1
}


def subpixel_tile(stripe_fill: float, matrix_gap: float) -> np.ndarray:
    """One display pixel as TILE×TILE×3 emission in [0, 1]: vertical R, G, B stripes, dark gaps."""
    fine = 4  # supersample so that fractional stripe widths are (nearly) area-exact
    n = TILE * fine
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n  # position in the display pixel, [0, 1)
    third = coords * 3.0
    stripe, within = np.floor(third), third - np.floor(third)
    lit_x = np.abs(within - 0.5) < stripe_fill / 2  # each stripe centred in its third
    lit_y = coords >= matrix_gap  # black matrix at the top of each display pixel
    tile = np.zeros((n, n, 3), dtype=np.float32)
    for c in range(3):
        tile[:, :, c] = lit_y[:, None] & (lit_x & (stripe == c))[None, :]
    return cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_AREA)


def filtered_tile(tile: np.ndarray, pitch: float, rotation_deg: float, sigma: float, aperture: float) -> np.ndarray:
    """The tile blurred by a Gaussian lens PSF (σ camera px) and a square pixel aperture, exactly.

    A display frequency k (cycles per display pixel) is, in the camera frame, f = R(θ)·k / pitch
    (cycles per camera pixel); the PSF attenuates it by exp(−2π²σ²|f|²), the aperture by
    sinc(a·f_x)·sinc(a·f_y). Returns TILE×TILE×3 float32 (may dip slightly below 0 from ringing).
    """
    k = np.fft.fftfreq(TILE, d=1.0 / TILE)  # integer harmonics
    ky, kx = np.meshgrid(k, k, indexing="ij")
    theta = math.radians(rotation_deg)
    fx = (math.cos(theta) * kx - math.sin(theta) * ky) / pitch
    fy = (math.sin(theta) * kx + math.cos(theta) * ky) / pitch
    transfer = np.exp(-2.0 * math.pi**2 * sigma**2 * (fx**2 + fy**2)) * np.sinc(aperture * fx) * np.sinc(aperture * fy)
    spectrum = np.fft.fft2(tile, axes=(0, 1)) * transfer[..., None]
    return np.real(np.fft.ifft2(spectrum, axes=(0, 1))).astype(np.float32)


# The four Bayer sites of a 2×2 camera block (RGGB): (row offset, column offset, colour channel).
BAYER_SITES: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2))


def site_offset(row: int, col: int) -> tuple[float, float]:
    """Offset (dx, dy), in output px, of a Bayer site's camera pixel centre from its output pixel centre.

    With OVERSAMPLING = D, camera pixel D·i + r covers output coordinates [i + r/D − 0.5, i + (r+1)/D − 0.5):
    the convention of ``cv2.resize``, so that the final INTER_AREA downsize leaves the scene in place.
    """
    d = OVERSAMPLING
    return (col + 0.5) / d - 0.5, (row + 0.5) / d - 0.5


@lru_cache(maxsize=16)
def _site_grid(h: int, w: int, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera pixel centres of one Bayer site, (H, W) each, in output px relative to the image centre."""
    xs, ys = np.meshgrid(
        np.arange(w, dtype=np.float32) + np.float32(dx - (w - 1) / 2),
        np.arange(h, dtype=np.float32) + np.float32(dy - (h - 1) / 2),
    )
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def display_coordinates(
    shape: tuple[int, int],
    offset: tuple[float, float],
    pitch: float,
    rotation_deg: float,
    tilt: tuple[float, float],
    phase: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Display-pixel coordinates (u, v), each (H, W), seen by the camera pixels at ``offset`` from the
    output pixel centres: a homography (rotation, scale 1/pitch, perspective tilt) of the grid.

    tilt = (g, h): relative change of the pitch from the centre to the right / bottom edge.
    """
    h, w = shape
    xs, ys = _site_grid(h, w, float(offset[0]), float(offset[1]))
    theta = math.radians(rotation_deg)
    c, s = np.float32(math.cos(theta) / pitch), np.float32(math.sin(theta) / pitch)
    inv_den = np.float32(2.0 * tilt[0] / w) * xs
    inv_den += np.float32(2.0 * tilt[1] / h) * ys
    inv_den += np.float32(1.0)
    np.reciprocal(inv_den, out=inv_den)
    u = c * xs
    u += s * ys
    u *= inv_den
    u += np.float32(phase[0])
    v = c * ys
    v -= s * xs
    v *= inv_den
    v += np.float32(phase[1])
    return u, v


def sample_grid(tile_channel: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-sample one periodic TILE×TILE channel at display coordinates (u, v): (H, W).

    u and v are overwritten (they become the texel maps).
    """
    padded = np.pad(tile_channel, 1, mode="wrap")
    # texel j covers [j, j + 1) / TILE of a display pixel; its centre sits at j + 1 in ``padded``
    for coord in (u, v):
        coord -= np.floor(coord)
        coord *= np.float32(TILE)
        coord += np.float32(0.5)
    return cv2.remap(padded, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def shift_scene(channel: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """A channel (H, W) bilinearly resampled at (x + dx, y + dy): the scene seen by one Bayer site."""
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    return cv2.warpAffine(channel, m, channel.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


def demosaic_to_uint8(raw: np.ndarray) -> np.ndarray:
    """Bilinear demosaic of an RGGB raw (H, W) in [0, 1] → (H, W, 3) uint8 RGB."""
    raw8 = cv2.convertScaleAbs(np.maximum(raw, 0.0), alpha=255.0)  # saturating, rounding
    # OpenCV names Bayer patterns by the 2×2 block starting at (1, 1): RGGB is "BG"
    return cv2.cvtColor(raw8, cv2.COLOR_BayerBG2RGB)


@register("moire", ranges=MOIRE_RANGES)
def moire(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Screen-capture moiré, stronger as ``level`` rises. image: H×W×3 float32 in [0, 1]."""
    h, w = image.shape[:2]
    p_lo, p_hi = (math.log(float(v)) for v in ranges["beat_period"])
    beat_period = math.exp(rng.uniform(p_lo, p_hi))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    pitch = float(np.clip(1.0 / (1.0 + sign / beat_period), *ranges["pitch"]))
    rotation = float(np.clip(rng.normal(0.0, float(ranges["rotation_sigma"])), *ranges["rotation"]))
    persp = float(ranges["perspective"])
    tilt = (float(rng.uniform(-persp, persp)), float(rng.uniform(-persp, persp)))
    phase = (float(rng.random()), float(rng.random()))
    stripe_fill = uniform(rng, ranges["stripe_fill"])
    matrix_gap = uniform(rng, ranges["matrix_gap"])
    aperture = uniform(rng, ranges["aperture"])
    gain_direction = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
    noise_bytes = rng.integers(0, 256, size=(h * OVERSAMPLING, w * OVERSAMPLING), dtype=np.uint8)

    sigma = lerp(ranges["lens_sigma"], level)
    contrast = lerp(ranges["contrast"], level)
    gains = 1.0 + lerp(ranges["color_shift"], level) * gain_direction
    noise_sigma = lerp(ranges["noise"], level)
    quality = int(round(lerp(ranges["jpeg_quality"], level)))

    pitch_camera = pitch * OVERSAMPLING
    tile = filtered_tile(subpixel_tile(stripe_fill, matrix_gap), pitch_camera, rotation, sigma, aperture)
    emission = tile / np.maximum(tile.mean(axis=(0, 1)), 1e-6)  # mean 1 per channel: exposure is set
    emission = (1.0 + contrast * (emission - 1.0)) * gains

    # The scene stays at its own coordinates (the screen shows it 1:1; the lens blurs it, σ in
    # output px = σ / D). Each Bayer site samples its colour of scene × warped sub-pixel emission.
    scene_sigma = sigma / OVERSAMPLING
    scene = cv2.GaussianBlur(image, (0, 0), scene_sigma) if scene_sigma > 0.05 else image
    d = OVERSAMPLING
    raw = np.empty((h * d, w * d), dtype=np.float32)
    for row in range(d):
        for col in range(d):
            channel = BAYER_SITES[(row % 2) * 2 + (col % 2)][2]
            dx, dy = site_offset(row, col)
            u, v = display_coordinates((h, w), (dx, dy), pitch, rotation, tilt, phase)
            pattern = sample_grid(np.ascontiguousarray(emission[..., channel]), u, v)
            raw[row::d, col::d] = shift_scene(np.ascontiguousarray(scene[..., channel]), dx, dy) * pattern
    # read noise of σ on the raw, uniform (random bytes are 10× cheaper than normal draws); after
    # demosaicking and the D× downsize it sums into a near-Gaussian. Signal-dependent shot noise is
    # the camera_noise type's subject.
    noise = noise_bytes.view(np.int8).astype(np.float32)  # uniform on [−128, 127], σ ≈ 73.9
    cv2.scaleAdd(noise, noise_sigma * math.sqrt(12.0) / 256.0, raw, dst=raw)
    capture = cv2.resize(demosaic_to_uint8(raw), (w, h), interpolation=cv2.INTER_AREA)
    out = jpeg_roundtrip_uint8(capture, quality).astype(np.float32) * np.float32(1.0 / 255.0)
    params = {
        "pitch": pitch,
        "beat_period": beat_period,
        "rotation": rotation,
        "tilt": list(tilt),
        "phase": list(phase),
        "stripe_fill": stripe_fill,
        "matrix_gap": matrix_gap,
        "aperture": aperture,
        "lens_sigma": sigma,
        "contrast": contrast,
        "channel_gains": [float(g) for g in gains],
        "noise": noise_sigma,
        "jpeg_quality": quality,
    }
    return out, params
