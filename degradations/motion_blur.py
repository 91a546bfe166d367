"""Type 2 ``motion_blur``: a camera-shake trajectory kernel (Boracchi & Foi 2012) or a linear one.

The kernels are rasterised by bilinear splatting, centred and normalised like every kernel of
:mod:`kernels`, so the blurred image stays aligned with the sharp one.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .kernels import apply_kernel, odd
from .levels import lerp
from .registry import register
from .rng import uniform


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
