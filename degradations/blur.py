"""Types 2–4: ``motion_blur``, ``defocus_blur``, ``gaussian_blur``, and the kernels they use.

Every kernel is odd-sized, sums to 1 and has its centroid on the centre pixel, so that blurring
never shifts content (LQ and GT stay aligned). ``apply_kernel`` is a true convolution with a
reflect-101 border.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Mapping

import cv2
import numpy as np

from .levels import lerp
from .registry import register
from .rng import uniform


# ----------------------------------------------------------------------------- helpers
def odd(n: float) -> int:
    """The odd integer nearest to n (ties go up), at least 1."""
    k = int(round(n))
    return max(1, k if k % 2 else k + 1)


@lru_cache(maxsize=64)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from the centre of a size×size kernel, (x, y), float64, read-only."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    xx, yy = np.meshgrid(r, r)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def kernel_centroid(kernel: np.ndarray) -> tuple[float, float]:
    """(x, y) centroid of a kernel relative to its centre pixel, in pixels."""
    xx, yy = _grid(kernel.shape[0])
    total = float(kernel.sum())
    return float((kernel * xx).sum() / total), float((kernel * yy).sum() / total)


# Above this size OpenCV's filter2D switches to a per-channel DFT that is slower than doing the DFT
# ourselves with two channels packed as one complex plane.
DIRECT_MAX_SIZE = 11


def _check_kernel(kernel: np.ndarray) -> None:
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"apply_kernel: kernel must be odd and square, got shape {kernel.shape}")


def apply_kernel(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel of ``image`` (H, W, 3) float32 with an odd square kernel (reflect-101 border)."""
    _check_kernel(kernel)
    if kernel.shape[0] <= DIRECT_MAX_SIZE or image.ndim != 3 or image.shape[2] != 3:
        # filter2D correlates; flipping makes it a convolution (matters for asymmetric motion kernels).
        flipped = np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)
        return cv2.filter2D(image, -1, flipped, borderType=cv2.BORDER_REFLECT_101)
    separable = _separable_factors(kernel)
    if separable is not None:
        # (iso or axis-aligned Gaussians): two 1-D passes; sepFilter2D correlates, so flip both factors
        column, row = separable
        return cv2.sepFilter2D(image, -1, row[::-1].copy(), column[::-1].copy(), borderType=cv2.BORDER_REFLECT_101)
    return apply_kernels_dft(image, [kernel])[0]


def _separable_factors(kernel: np.ndarray, tolerance: float = 1e-6) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with kernel == outer(column, row) up to ``tolerance`` · max|kernel|, else None.

    A rank-1 kernel equals the outer product of its centre column and centre row divided by the centre
    value; checking that costs one k×k comparison instead of an SVD.
    """
    c = kernel.shape[0] // 2
    pivot = float(kernel[c, c])
    if pivot <= 0:
        return None
    column = kernel[:, c].astype(np.float64) / pivot
    row = kernel[c, :].astype(np.float64)
    if np.abs(np.outer(column, row) - kernel).max() > tolerance * float(np.abs(kernel).max()):
        return None
    return column.astype(np.float32), row.astype(np.float32)


def apply_kernels_dft(image: np.ndarray, kernels: list[np.ndarray]) -> list[np.ndarray]:
    """Convolve an (H, W, 3) float32 image with several odd kernels, sharing the image's spectrum.

    The image is reflect-padded straight into an efficient DFT frame; R and G travel as the real and
    imaginary parts of one complex plane (a real kernel keeps them apart), B as a real plane.
    Equal to ``filter2D`` with the flipped kernel up to float rounding (~1e-6).
    """
    for k in kernels:
        _check_kernel(k)
    h, w = image.shape[:2]
    pad = max(k.shape[0] for k in kernels) // 2
    fh, fw = cv2.getOptimalDFTSize(h + 2 * pad), cv2.getOptimalDFTSize(w + 2 * pad)
    framed = cv2.copyMakeBorder(
        np.ascontiguousarray(image, dtype=np.float32), pad, fh - h - pad, pad, fw - w - pad, cv2.BORDER_REFLECT_101
    )
    spec_rg = cv2.dft(np.ascontiguousarray(framed[..., :2]))
    spec_b = cv2.dft(np.ascontiguousarray(framed[..., 2]), flags=cv2.DFT_COMPLEX_OUTPUT)
    outs = []
    for kernel in kernels:
        k = kernel.shape[0]
        frame = np.zeros((fh, fw), np.float32)
        frame[:k, :k] = kernel
        # circular shift that puts the kernel's centre at the origin: no displacement of the result
        frame = np.roll(frame, (-(k // 2), -(k // 2)), axis=(0, 1))
        spec_k = cv2.dft(frame, flags=cv2.DFT_COMPLEX_OUTPUT)
        rg = cv2.idft(cv2.mulSpectrums(spec_rg, spec_k, 0), flags=cv2.DFT_SCALE)
        b = cv2.idft(cv2.mulSpectrums(spec_b, spec_k, 0), flags=cv2.DFT_SCALE | cv2.DFT_REAL_OUTPUT)
        out = np.empty((h, w, 3), np.float32)
        out[..., :2] = rg[pad : pad + h, pad : pad + w]
        out[..., 2] = b[pad : pad + h, pad : pad + w]
        outs.append(out)
    return outs


def _splat(points: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splatting of sub-pixel points (N, 2) as (x, y) offsets from the centre onto a size² grid.

    Bilinear splatting preserves the first moment, so the kernel's centroid equals the weighted mean of
    the points exactly.
    """
    c = (size - 1) / 2
    x, y = points[:, 0] + c, points[:, 1] + c
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size + 1, size + 1), dtype=np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w * weights)
    if kernel[size, :].any() or kernel[:, size].any():
        raise AssertionError("motion kernel points fell outside the kernel")  # guarded by the callers' scaling
    return kernel[:size, :size]


# ----------------------------------------------------------------------------- motion
# Per-path direction noise and pull towards the start, per unit of path length (for 128 steps). Tuned by
# eye against recorded shake kernels (Levin et al., Köhler et al.): mostly open, gently curving strokes
# with the odd hook or reversal; stronger settings give the closed orbits real hands do not make.
SHAKE_GAIN = 1.5
PULL_GAIN = 0.5


def shake_trajectory(rng: np.random.Generator, steps: int = 128, info: dict | None = None) -> np.ndarray:
    """A random camera-shake path (steps, 2) sampled at equal times, in arbitrary units, after Boracchi & Foi (2012).

    The direction follows a random walk: Gaussian shake, a centripetal pull back towards the start (hands
    correct themselves) and rare impulsive jerks that reverse the motion; the speed drifts smoothly.
    Each path draws its own shake characteristics (written into ``info`` when given). All random numbers
    are drawn up front.
    """
    centripetal = 0.7 * float(rng.random())
    gaussian_shake = 10.0 * float(rng.random())
    big_shake_prob = 0.2 * float(rng.random())
    angle = 2 * math.pi * float(rng.random())
    shake = (rng.standard_normal((steps, 2)) * (gaussian_shake * SHAKE_GAIN / steps)).tolist()
    jerks = (rng.random(steps) < big_shake_prob * 0.05).tolist()  # a few impulsive shakes per path at most
    jerk_angles = (math.pi + (rng.random(steps) - 0.5)).tolist()
    pull = centripetal * PULL_GAIN / steps
    # hands speed up and slow down: a random-walk log speed; equal exposure per step makes slow stretches bright
    speeds = np.exp(np.clip(np.cumsum(rng.normal(0.0, 0.12, steps)), -1.2, 1.2)).tolist()
    if info is not None:
        info.update(
            centripetal=centripetal,
            gaussian_shake=gaussian_shake,
            big_shake_prob=big_shake_prob,
            start_angle=math.degrees(angle),
            jerks=int(sum(jerks)),
        )
    vx, vy, x, y = math.cos(angle), math.sin(angle), 0.0, 0.0
    path = []
    for i in range(steps):
        if jerks[i]:
            c, s = math.cos(jerk_angles[i]), math.sin(jerk_angles[i])
            vx, vy = 2.0 * (c * vx - s * vy), 2.0 * (s * vx + c * vy)
        vx += shake[i][0] - pull * x
        vy += shake[i][1] - pull * y
        speed = math.hypot(vx, vy) or 1.0
        vx, vy = vx / speed, vy / speed  # the direction wanders; the step length is set by speeds[i]
        x, y = x + vx * speeds[i], y + vy * speeds[i]
        path.append((x, y))
    return np.asarray(path)


def trajectory_kernel(path: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a path (N, 2) into a centred size×size kernel that sums to 1.

    The path is shifted so that its mean lies on the centre and scaled so that its farthest point lies
    one pixel inside the border; equal exposure time per step gives equal weight per point.
    """
    # densify: 8 sub-steps per step, so that the stroke is continuous at any kernel size
    t = np.linspace(0.0, len(path) - 1.0, 8 * (len(path) - 1) + 1)
    path = np.stack([np.interp(t, np.arange(len(path)), path[:, i]) for i in range(2)], axis=1)
    pts = path - path.mean(axis=0)
    extent = float(np.abs(pts).max())
    half = (size - 1) / 2 - 1.0
    if extent > 0:
        pts = pts * (half / extent)
    kernel = _splat(pts, np.ones(len(pts)), size)
    return (kernel / kernel.sum()).astype(np.float32)


def linear_kernel(length: float, angle_deg: float, size: int | None = None) -> np.ndarray:
    """Anti-aliased straight motion of ``length`` px at ``angle_deg``, centred, sums to 1."""
    size = size or odd(length + 3)
    t = np.linspace(-0.5, 0.5, max(16, int(4 * length) + 1))
    a = math.radians(angle_deg)
    pts = np.stack([t * length * math.cos(a), -t * length * math.sin(a)], axis=1)  # y points down
    kernel = _splat(pts, np.ones(len(pts)), size)
    return (kernel / kernel.sum()).astype(np.float32)


MOTION_RANGES = {
    "kernel_size": [9, 41],  # trajectory kernel size, level 0 → 1
    "linear_length": [5.0, 35.0],  # linear kernel length, level 0 → 1
    "linear_prob": 0.3,
    "angle": [0.0, 180.0],
}


def draw_motion_kernel(rng: np.random.Generator, level: float, ranges: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """The motion-blur kernel and its parameters for one sample (shared with the torch path)."""
    linear = bool(rng.random() < float(ranges["linear_prob"]))
    angle = uniform(rng, ranges["angle"])
    shake: dict[str, Any] = {}
    path = shake_trajectory(rng, info=shake)
    if linear:
        length = lerp(ranges["linear_length"], level)
        kernel = linear_kernel(length, angle)
        params = {"kernel": "linear", "length": length, "angle": angle, "kernel_size": kernel.shape[0]}
    else:
        size = odd(lerp(ranges["kernel_size"], level))
        kernel = trajectory_kernel(path, size)
        params = {"kernel": "trajectory", "kernel_size": size, "shake": shake}
    return kernel, params


@register("motion_blur", ranges=MOTION_RANGES)
def motion_blur(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Camera-shake trajectory (p 1 − linear_prob) or linear kernel; its extent grows with ``level``."""
    kernel, params = draw_motion_kernel(rng, level, ranges)
    return apply_kernel(image, kernel), params


# ----------------------------------------------------------------------------- defocus
def disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased pillbox of ``radius`` px: coverage falls linearly over one pixel at the rim. Sums to 1."""
    size = odd(2 * math.ceil(radius + 0.5) + 1)
    xx, yy = _grid(size)
    kernel = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return (kernel / kernel.sum()).astype(np.float32)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1] (H, W): coarse uniform noise, bicubic-upsampled, rescaled."""
    h, w = shape
    coarse = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo + 1e-6)


DEFOCUS_RANGES = {
    "radius": [1.0, 10.0],  # disk radius in px, level 0 → 1
    "depth_varying_prob": 0.3,
    "depth_layers": 4,  # blur layers blended per pixel when the depth varies
}


@register("defocus_blur", ranges=DEFOCUS_RANGES)
def defocus_blur(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """Disk blur of radius rising with ``level``; with p ``depth_varying_prob`` the radius varies by depth.

    Depth-varying: thin-lens circle of confusion ∝ |1/d − 1/d_f| over a smooth random depth map,
    scaled so that its largest value is the level's radius. The image is blurred at a few radii and
    each pixel blends the two layers bracketing its own radius.
    """
    radius, pos, params = draw_defocus(rng, level, ranges, image.shape[:2])
    if pos is None:
        return apply_kernel(image, disk_kernel(radius)), params
    n = params["layers"]
    radii = np.linspace(0.0, radius, n)
    layers = [image] + apply_kernels_dft(image, [disk_kernel(r) for r in radii[1:]])
    out = np.zeros_like(image)
    for j, layer in enumerate(layers):
        # tent weights: each pixel blends the two layers that bracket its own radius
        weight = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(pos - np.float32(j)))
        out += layer * weight[..., None]
    return out, params


def draw_defocus(rng: np.random.Generator, level: float, ranges: Mapping[str, Any],
                 shape: tuple[int, int]) -> tuple[float, np.ndarray | None, dict]:
    """One sample's defocus draws (shared with the torch path): the disk radius, and for a
    depth-varying sample the fractional blur-layer index per pixel (H, W) float32, else None."""
    radius = lerp(ranges["radius"], level)
    varying = bool(rng.random() < float(ranges["depth_varying_prob"]))
    depth = 1.0 + 4.0 * smooth_field(shape, rng)  # depth in [1, 5] (arbitrary units); drawn always
    focus = float(rng.uniform(1.0, 5.0))
    if not varying:
        return radius, None, {"radius": radius, "depth_varying": False}
    coc = np.abs(1.0 / depth - 1.0 / focus)
    coc = coc / (float(coc.max()) + 1e-12) * radius  # per-pixel radius in [0, radius]
    n = max(2, int(ranges["depth_layers"]))
    pos = (coc / (radius / (n - 1))).astype(np.float32)  # fractional layer index per pixel
    return radius, pos, {"radius": radius, "depth_varying": True, "focus_depth": focus, "layers": n}


# ----------------------------------------------------------------------------- Real-ESRGAN family
def _sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """xᵀ Σ⁻¹ x over the kernel grid."""
    inv = np.linalg.inv(_sigma_matrix(sigma_x, sigma_y, theta))
    xx, yy = _grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 1.0) -> np.ndarray:
    """(Generalised) Gaussian exp(−½ (xᵀΣ⁻¹x)^β); β = 1 is the ordinary Gaussian. Sums to 1."""
    k = np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta))
    return (k / k.sum()).astype(np.float32)


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """Plateau-shaped 1 / (1 + (xᵀΣ⁻¹x)^β). Sums to 1."""
    k = 1.0 / (1.0 + np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta))
    return (k / k.sum()).astype(np.float32)


def bessel_j1(x: np.ndarray, nodes: int = 96) -> np.ndarray:
    """Bessel J1 by its integral J1(x) = (1/π)∫₀^π cos(τ − x sin τ) dτ (midpoint rule).

    The integrand extends to a smooth periodic function, so the rule converges exponentially: with 96
    nodes the error is below 1e-12 for |x| < 50 (sinc kernels need x ≤ π·15). Avoids importing scipy.
    """
    tau = (np.arange(nodes) + 0.5) * (math.pi / nodes)
    x = np.asarray(x, dtype=np.float64)
    return np.cos(tau - x[..., None] * np.sin(tau)).mean(axis=-1)


@lru_cache(maxsize=32)
def _unique_radii(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct distances from the centre of a size×size grid and, per pixel, the index of its own."""
    xx, yy = _grid(size)
    radii, inverse = np.unique(np.hypot(xx, yy), return_inverse=True)
    return radii, inverse.reshape(size, size)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Circular low-pass (2-D sinc) with cut-off ``cutoff`` rad/px: ω J1(ω r) / (2π r). Sums to 1."""
    radii, inverse = _unique_radii(size)  # J1 only at the few distinct radii (symmetry)
    safe = np.where(radii == 0, 1.0, radii)
    values = np.where(radii == 0, cutoff**2 / (4 * math.pi), cutoff * bessel_j1(cutoff * safe) / (2 * math.pi * safe))
    k = values[inverse]
    return (k / k.sum()).astype(np.float32)


KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")

GAUSSIAN_RANGES = {
    "kernel_size": [7, 21],  # odd sizes, drawn uniformly
    "sigma": [0.2, 3.0],  # largest σ, level 0 → 1; the minor axis of anisotropic kernels is a random fraction
    "family_probs": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "generalized_beta": [0.5, 4.0],
    "plateau_beta": [1.0, 2.0],
    "sinc_prob": 0.1,
}


def random_kernel(rng: np.random.Generator, severity: float, ranges: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    """One Real-ESRGAN blur kernel whose σ (or sinc cut-off) is set by ``severity`` in [0, 1].

    All draws come before the kernel is built and do not depend on ``severity``, so that the same
    generator state gives the same kernel shape, only wider, as severity rises.
    """
    lo, hi = (int(v) for v in ranges["kernel_size"])
    size = 2 * int(rng.integers(lo // 2, hi // 2 + 1)) + 1
    sinc = bool(rng.random() < float(ranges["sinc_prob"]))
    probs = np.asarray(ranges["family_probs"], dtype=np.float64)
    if probs.shape != (len(KERNEL_FAMILIES),) or (probs < 0).any() or probs.sum() <= 0:
        raise ValueError(f"gaussian_blur: family_probs must be {len(KERNEL_FAMILIES)} weights for {KERNEL_FAMILIES}")
    family = KERNEL_FAMILIES[int(rng.choice(len(probs), p=probs / probs.sum()))]
    minor_fraction = float(rng.uniform(0.1, 1.0))
    theta = float(rng.uniform(-math.pi, math.pi))
    beta_unit = float(rng.random())
    cutoff_unit = float(rng.random())
    if sinc:
        # Real-ESRGAN: ω_c ∈ [π/3, π] for small kernels, [π/5, π] otherwise; lower cut-off = more blur.
        lowest = math.pi / 3 if size < 13 else math.pi / 5
        cutoff = lerp([math.pi, lowest], severity * (0.5 + 0.5 * cutoff_unit))
        return sinc_kernel(size, cutoff), {"family": "sinc", "kernel_size": size, "cutoff": cutoff}
    sigma_x = lerp(ranges["sigma"], severity)
    if family.endswith("aniso"):
        sigma_y = max(float(ranges["sigma"][0]), sigma_x * minor_fraction)
    else:
        sigma_y, theta = sigma_x, 0.0
    params = {"family": family, "kernel_size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta}
    if family.startswith("generalized"):
        beta = lerp(ranges["generalized_beta"], beta_unit)
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta, beta)
        params["beta"] = beta
    elif family.startswith("plateau"):
        beta = lerp(ranges["plateau_beta"], beta_unit)
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, beta)
        params["beta"] = beta
    else:
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
    return kernel, params


@register("gaussian_blur", ranges=GAUSSIAN_RANGES)
def gaussian_blur(image: np.ndarray, level: float, rng: np.random.Generator, ranges: Mapping[str, Any]):
    """A Real-ESRGAN kernel (iso/aniso/generalised/plateau Gaussian, or sinc) whose width rises with ``level``."""
    kernel, params = random_kernel(rng, level, ranges)
    return apply_kernel(image, kernel), params
