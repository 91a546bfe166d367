"""NIQE, the no-reference "Natural Image Quality Evaluator" (Mittal et al., 2013), with our own pristine model.

**Our NIQE values are on our own scale, not MATLAB's.** The original pristine multivariate-Gaussian (MVG)
parameters (fitted by the authors on 125 pristine photographs) are not shipped here. We fit our own MVG with
:func:`fit_pristine_model` on the natural photographs that come with scikit-image
(``skimage.data.data_dir``) and ship the result as ``evaluation/data/niqe_pristine.npz``; rebuild it with::

    python -m maskdcpt.evaluation.niqe fit --out maskdcpt/evaluation/data/niqe_pristine.npz

Lower is better. Numbers are comparable between runs of this package, not with papers.

The features follow the paper and BasicSR's port: the luma (BT.601 Y, [16, 235], rounded) is split into
96×96 blocks; for each block and at two scales (full, then ½ by 2×2 area averaging) the MSCN coefficients
``(I − μ) / (σ + 1)`` (μ, σ from a 7×7 Gaussian window, σ_w = 7/6, replicate borders) give 18 features: an
AGGD fit of the coefficients (shape α, mean of the two scales β_l, β_r) and, for the products of each
coefficient with its neighbour in four directions (0,1), (1,0), (1,1), (1,−1) (cyclic shift), an AGGD fit
(α, mean (β_r − β_l)·Γ(2/α)/Γ(1/α), β_l, β_r). The quality is the distance
``sqrt((μ_p − μ_d)ᵀ pinv((Σ_p + Σ_d)/2) (μ_p − μ_d))`` between the pristine MVG (μ_p, Σ_p) and the MVG of the
image's block features (μ_d, Σ_d). The pristine fit keeps, per image, blocks whose sharpness (mean local σ)
exceeds 0.75 of that image's sharpest block, as the original does.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from scipy.ndimage import convolve
from scipy.special import gamma

from ..data.decode import SkipImage, read_image
from .metrics import rgb_to_y

BLOCK_SIZE = 96
NUM_FEATURES = 36  # 18 per scale, 2 scales
DEFAULT_PRISTINE_PATH = Path(__file__).with_name("data") / "niqe_pristine.npz"
# scikit-image's natural photographs (colour and grey); drawings, microscopy and astronomy are left out.
PRISTINE_SAMPLE_IMAGES = ("astronaut.png", "camera.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                          "motorcycle_right.png", "brick.png", "grass.png", "gravel.png", "coins.png")
SHARPNESS_FRACTION = 0.75


@dataclass(frozen=True)
class PristineModel:
    """Multivariate Gaussian of pristine block features: ``mu`` (36,), ``cov`` (36, 36)."""

    mu: np.ndarray
    cov: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=self.mu, cov=self.cov)


def load_pristine_model(path: str | os.PathLike | None = None) -> PristineModel:
    """Load ``mu``/``cov`` from an ``.npz`` file (default: the one shipped with the package)."""
    path = Path(path) if path is not None else DEFAULT_PRISTINE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"NIQE pristine model not found: {path} "
                                "(build it with `python -m maskdcpt.evaluation.niqe fit --out PATH`)")
    return _load_cached(str(path.resolve()), path.stat().st_mtime)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, _mtime: float) -> PristineModel:
    try:
        with np.load(path) as data:
            mu, cov = np.asarray(data["mu"], np.float64), np.asarray(data["cov"], np.float64)
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a NIQE pristine model (.npz with 'mu' and 'cov'): {err}") from err
    if mu.shape != (NUM_FEATURES,) or cov.shape != (NUM_FEATURES, NUM_FEATURES):
        raise ValueError(f"{path}: expected mu (36,) and cov (36, 36), got {mu.shape} and {cov.shape}")
    return PristineModel(mu, cov)


# ---------------------------------------------------------------------------------------------- features
@functools.lru_cache(maxsize=1)
def _aggd_lookup() -> tuple[np.ndarray, np.ndarray]:
    """Candidate shapes α ∈ [0.2, 10] (step 0.001) and the moment ratio Γ(2/α)² / (Γ(1/α) Γ(3/α)) of each."""
    alphas = np.arange(0.2, 10.001, 0.001)
    ratio = gamma(2 / alphas) ** 2 / (gamma(1 / alphas) * gamma(3 / alphas))
    return alphas, ratio


def fit_aggd(x: np.ndarray) -> tuple[float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian: (shape α, left scale β_l, right scale β_r).

    NaNs come back when ``x`` has no negative or no positive values (e.g. a flat block)."""
    x = x.ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.mean(x[x < 0] ** 2)) if np.any(x < 0) else np.nan
        right_std = np.sqrt(np.mean(x[x > 0] ** 2)) if np.any(x > 0) else np.nan
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x ** 2)
        r_hat_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    if not np.isfinite(r_hat_norm):
        return math.nan, math.nan, math.nan
    alphas, ratio = _aggd_lookup()
    alpha = alphas[np.argmin((ratio - r_hat_norm) ** 2)]
    spread = math.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return float(alpha), float(left_std * spread), float(right_std * spread)


_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def block_features(mscn_block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one (h, w) block of MSCN coefficients."""
    alpha, beta_l, beta_r = fit_aggd(mscn_block)
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in _NEIGHBOUR_SHIFTS:
        products = mscn_block * np.roll(mscn_block, shift, axis=(0, 1))
        alpha, beta_l, beta_r = fit_aggd(products)
        mean = (beta_r - beta_l) * gamma(2 / alpha) / gamma(1 / alpha) if np.isfinite(alpha) else math.nan
        features += [alpha, mean, beta_l, beta_r]
    return features


@functools.lru_cache(maxsize=1)
def _mscn_window() -> np.ndarray:
    # MATLAB's fspecial('gaussian', 7, 7/6): sampled Gaussian, normalised to sum 1.
    r = np.arange(-3, 4)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def mscn(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients of an (H, W) image on [0, 255], and local σ."""
    window = _mscn_window()
    mu = convolve(luma, window, mode="nearest")
    sigma = np.sqrt(np.abs(convolve(luma * luma, window, mode="nearest") - mu * mu))
    return (luma - mu) / (sigma + 1.0), sigma


def image_block_features(luma: np.ndarray, offset: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, 36) of the complete 96×96 blocks of an (H, W) luma image on [0, 255], and each block's
    sharpness (N,) = mean local σ at full scale. ``offset`` shifts the block grid (for extra pristine crops)."""
    luma = np.asarray(luma, np.float64)[offset[0]:, offset[1]:]
    rows, cols = luma.shape[0] // BLOCK_SIZE, luma.shape[1] // BLOCK_SIZE
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs an image of at least {BLOCK_SIZE}x{BLOCK_SIZE} pixels, got {luma.shape}")
    img = luma[: rows * BLOCK_SIZE, : cols * BLOCK_SIZE]
    per_scale, sharpness = [], None
    for scale in (1, 2):
        coeffs, sigma = mscn(img)
        size = BLOCK_SIZE // scale
        blocks = [(i, j) for j in range(cols) for i in range(rows)]
        per_scale.append(np.array([block_features(coeffs[i * size:(i + 1) * size, j * size:(j + 1) * size])
                                   for i, j in blocks]))
        if scale == 1:
            sharpness = np.array([sigma[i * size:(i + 1) * size, j * size:(j + 1) * size].mean() for i, j in blocks])
            # ½ scale: 2×2 area averaging (BasicSR uses bilinear at exactly half, which is the same average)
            img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return np.concatenate(per_scale, axis=1), sharpness


def to_luma(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """RGB image → rounded BT.601 Y on [16, 235], (H, W) float64.

    Accepts uint8 (H, W, 3) on [0, 255], 16-bit (H, W, 3), float (H, W, 3) on [0, 1], a (3, H, W) float tensor
    on [0, 1], or an (H, W) grey image on the same scales (used as it is)."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().double().clamp(0, 1).permute(1, 2, 0).numpy()
    img = np.asarray(img)
    if img.dtype == np.uint8:
        scaled = img.astype(np.float64)
    elif img.dtype == np.uint16:
        scaled = img.astype(np.float64) / 257.0
    else:
        scaled = np.clip(img.astype(np.float64), 0, 1) * 255.0
    if scaled.ndim == 2:
        return np.round(scaled)
    if scaled.ndim != 3 or scaled.shape[-1] != 3:
        raise ValueError(f"NIQE expects an (H, W, 3) RGB or (H, W) grey image, got shape {scaled.shape}")
    return np.round(rgb_to_y(scaled)[..., 0])  # rounded like the MATLAB reference


def niqe(img: np.ndarray | torch.Tensor, crop_border: int = 0, model: PristineModel | None = None) -> float:
    """NIQE of an RGB image (see :func:`to_luma` for accepted inputs). Lower is better; our own scale.

    Needs at least one complete 96×96 block; with a single valid block the image's own covariance is unknown
    and taken as zero (only the pristine covariance weighs the distance)."""
    model = model or load_pristine_model()
    luma = to_luma(img)
    if crop_border:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    features, _ = image_block_features(luma)
    mu = np.nanmean(features, axis=0)
    valid = features[~np.isnan(features).any(axis=1)]
    cov = np.cov(valid, rowvar=False) if len(valid) > 1 else np.zeros_like(model.cov)
    diff = model.mu - mu
    if np.isnan(diff).any():
        raise ValueError("NIQE is undefined for this image: every block is flat (no contrast)")
    return float(np.sqrt(diff @ np.linalg.pinv((model.cov + cov) / 2) @ diff))


# ------------------------------------------------------------------------------------------ pristine fit
def fit_pristine_model(images: Iterable[np.ndarray], sharpness_fraction: float = SHARPNESS_FRACTION,
                       offsets: Sequence[tuple[int, int]] = ((0, 0), (BLOCK_SIZE // 2, BLOCK_SIZE // 2))
                       ) -> PristineModel:
    """Fit the pristine MVG on sharp blocks of pristine photographs.

    ``images``: RGB or grey images as accepted by :func:`to_luma`. Each ``offsets`` entry adds the blocks of a
    shifted grid (more sharp crops of the same photographs); per image and grid, blocks sharper than
    ``sharpness_fraction`` × the sharpest one are kept.
    """
    rows = []
    for img in images:
        luma = to_luma(img)
        for offset in offsets:
            if min(luma.shape[0] - offset[0], luma.shape[1] - offset[1]) < BLOCK_SIZE:
                continue
            features, sharpness = image_block_features(luma, offset)
            rows.append(features[sharpness > sharpness_fraction * sharpness.max()])
    if not rows:
        raise ValueError(f"no pristine image had a complete {BLOCK_SIZE}x{BLOCK_SIZE} block")
    features = np.concatenate(rows)
    features = features[~np.isnan(features).any(axis=1)]
    if len(features) <= NUM_FEATURES:
        raise ValueError(f"only {len(features)} sharp blocks; need more than {NUM_FEATURES} to fit a covariance")
    return PristineModel(features.mean(axis=0), np.cov(features, rowvar=False))


def sample_pristine_images(directory: str | os.PathLike | None = None) -> list[np.ndarray]:
    """scikit-image's natural photographs as RGB or grey uint8 arrays (read from disk; nothing downloads)."""
    if directory is None:
        import skimage.data

        directory = skimage.data.data_dir
    images = []
    for name in PRISTINE_SAMPLE_IMAGES:
        path = Path(directory) / name
        try:
            images.append(read_image(str(path), keep_gray=True))
        except SkipImage:
            raise FileNotFoundError(f"pristine sample image missing or unreadable: {path}") from None
    return images


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskdcpt.evaluation.niqe",
                                     description="Fit the NIQE pristine model, or score images.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit the pristine MVG on natural photographs")
    fit.add_argument("--out", required=True, help="output .npz (mu, cov)")
    fit.add_argument("--images", nargs="*", help="image files (default: scikit-image's sample photographs)")
    score = sub.add_parser("score", help="print the NIQE of image files")
    score.add_argument("images", nargs="+")
    score.add_argument("--model", help="pristine .npz (default: the shipped one)")
    args = parser.parse_args(argv)
    if args.command == "fit":
        images = [_read_rgb(p) for p in args.images] if args.images else sample_pristine_images()
        model = fit_pristine_model(images)
        model.save(args.out)
        print(f"wrote {args.out}: pristine MVG from {len(images)} images")
    else:
        model = load_pristine_model(args.model)
        for path in args.images:
            print(f"{path}\t{niqe(_read_rgb(path), model=model):.4f}")


def _read_rgb(path: str) -> np.ndarray:
    try:
        return read_image(path, keep_gray=True)
    except SkipImage as err:
        raise ValueError(f"cannot read image {path}: {err.reason}") from None


if __name__ == "__main__":
    _main()
