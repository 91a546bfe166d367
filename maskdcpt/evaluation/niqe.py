"""NIQE, the no-reference "Natural Image Quality Evaluator" (Mittal et al., 2013), on the scale papers report.

**Scale.** Lower is better; a sharp, clean photograph scores about 3–5, visibly blurred or noisy ones 6–15.
By default the quality is measured against the authors' pristine model (the mean and covariance of their
125 pristine photographs, from the MATLAB release; ``evaluation/data/niqe_pris_params.npz``, see the
``NOTICE`` beside it), so values are those of MATLAB's ``niqe`` release code and of BasicSR's
``calculate_niqe(img, crop_border, convert_to='y')``: within 0.01 of BasicSR on the images in ``tests/data``;
BasicSR's check image ``baboon.png`` gives 5.7296 here, as in MATLAB R2021a (5.72957).

**Conventions** (those of BasicSR's ``calculate_niqe`` with ``convert_to='y'``, which the papers use):

* the image is reduced to its BT.601 luma Y on [16, 235] (``rgb_to_y``), ``crop_border`` pixels are dropped
  at each side, and Y is **rounded** to integers (as MATLAB reads 8-bit images);
* Y is cut to whole 96×96 blocks (the remainder at the right and bottom is dropped); at least **two** blocks
  are needed (an image of at least 96×192 after cropping), else :class:`ValueError`;
* per block and at two scales (full; then ½ by MATLAB's antialiased bicubic ``imresize``, see
  :mod:`.imresize`), the MSCN coefficients ``(I − μ) / (σ + 1)`` (μ, σ from a 7×7 Gaussian window, σ_w = 7/6,
  replicated borders) give 18 features: an AGGD fit of the coefficients (shape α, mean of the two scales
  β_l, β_r) and, for the products of each coefficient with its neighbour in four directions (0,1), (1,0),
  (1,1), (1,−1) (cyclic shift within the block), an AGGD fit (α, (β_r − β_l)·Γ(2/α)/Γ(1/α), β_l, β_r);
* the quality is ``sqrt((μ_p − μ_d)ᵀ pinv((Σ_p + Σ_d)/2) (μ_p − μ_d))`` between the pristine MVG (μ_p, Σ_p)
  and the MVG of the image's block features (μ_d: NaN-ignoring mean, Σ_d: covariance of the blocks without
  NaN features). A flat block (no negative or no positive coefficient) has NaN scales and shape 0.2, as in
  MATLAB, whose ``min`` over NaNs picks the first candidate.

Our own pristine model: :func:`fit_pristine_model` fits the MVG on photographs you choose, like MATLAB's
``fitniqe``, for a domain the authors' photographs do not represent (microscopy, remote sensing, …); pass it
as ``niqe(img, model=...)``. Values against such a model are on that model's own scale, not the papers'.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from scipy.ndimage import convolve
from scipy.special import gamma

from ..data.decode import SkipImage, read_image
from .imresize import imresize
from .metrics import rgb_to_y, to_unit_array

BLOCK_SIZE = 96
NUM_FEATURES = 36  # 18 per scale, 2 scales
DEFAULT_PRISTINE_PATH = Path(__file__).with_name("data") / "niqe_pris_params.npz"
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
    """Load a pristine MVG from an ``.npz`` file: the authors' model shipped with the package (default), a
    file with MATLAB's names (``mu_pris_param``, ``cov_pris_param``) or one written by :meth:`PristineModel.save`
    (``mu``, ``cov``)."""
    path = Path(path) if path is not None else DEFAULT_PRISTINE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"NIQE pristine model not found: {path}")
    return _load_cached(str(path.resolve()), path.stat().st_mtime)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, _mtime: float) -> PristineModel:
    try:
        with np.load(path) as data:
            keys = ("mu_pris_param", "cov_pris_param") if "mu_pris_param" in data.files else ("mu", "cov")
            mu, cov = (np.asarray(data[k], np.float64) for k in keys)
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a NIQE pristine model (.npz with 'mu' and 'cov', or 'mu_pris_param' "
                         f"and 'cov_pris_param'): {err}") from err
    mu = mu.reshape(-1) if mu.size == NUM_FEATURES else mu
    if mu.shape != (NUM_FEATURES,) or cov.shape != (NUM_FEATURES, NUM_FEATURES):
        raise ValueError(f"{path}: expected a mean of 36 values and a (36, 36) covariance, got {mu.shape} and "
                         f"{cov.shape}")
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

    Without negative (positive) values β_l (β_r) is NaN and α is the first candidate, 0.2, as in MATLAB."""
    x = x.ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.mean(x[x < 0] ** 2)) if np.any(x < 0) else np.nan
        right_std = np.sqrt(np.mean(x[x > 0] ** 2)) if np.any(x > 0) else np.nan
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x ** 2)
        r_hat_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    alphas, ratio = _aggd_lookup()
    alpha = alphas[np.argmin((ratio - r_hat_norm) ** 2)] if np.isfinite(r_hat_norm) else alphas[0]
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
        features += [alpha, (beta_r - beta_l) * gamma(2 / alpha) / gamma(1 / alpha), beta_l, beta_r]
    return features


@functools.lru_cache(maxsize=1)
def _mscn_window() -> np.ndarray:
    # MATLAB's fspecial('gaussian', 7, 7/6): sampled Gaussian, normalised to sum 1.
    r = np.arange(-3, 4)
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (7 / 6) ** 2))
    return g / g.sum()


def mscn(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients of an (H, W) image on [0, 255], and local σ; float32.

    In single precision on purpose: MATLAB's ``niqe`` and BasicSR filter in single precision, and σ² = E[I²] − μ²
    loses digits there; matching them moves baboon.png from 5.72996 (float64) to their 5.72957."""
    window = _mscn_window().astype(np.float32)
    luma = np.asarray(luma, np.float32)
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
    blocks = [(i, j) for j in range(cols) for i in range(rows)]
    per_scale, sharpness = [], None
    for scale in (1, 2):
        coeffs, sigma = mscn(img)
        size = BLOCK_SIZE // scale
        per_scale.append(np.array([block_features(coeffs[i * size:(i + 1) * size, j * size:(j + 1) * size])
                                   for i, j in blocks]))
        if scale == 1:
            sharpness = np.array([sigma[i * size:(i + 1) * size, j * size:(j + 1) * size].mean() for i, j in blocks])
            img = imresize(img, 0.5)  # MATLAB's antialiased bicubic, as the release code resizes
    return np.concatenate(per_scale, axis=1), sharpness


def to_luma(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """RGB image → BT.601 Y on [16, 235], (H, W) float64, not yet rounded; a grey (H, W) image is only scaled
    to [0, 255]. Accepts what :func:`~maskdcpt.evaluation.metrics.to_unit_array` accepts (uint8, uint16, float
    on [0, 1], (3, H, W) tensors)."""
    unit = to_unit_array(img)
    return unit * 255.0 if unit.ndim == 2 else rgb_to_y(unit * 255.0)[..., 0]


def niqe(img: np.ndarray | torch.Tensor, crop_border: int = 0, model: PristineModel | None = None) -> float:
    """NIQE of an RGB image (see :func:`to_luma` for accepted inputs); lower is better. On MATLAB's scale with
    the default ``model`` (the conventions are in the module docstring).

    Raises ValueError for an image with fewer than two whole 96×96 blocks after ``crop_border``, where the
    image's feature covariance is undefined, and for one whose blocks are all flat."""
    model = model or load_pristine_model()
    luma = to_luma(img)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    luma = np.round(luma)  # after the crop, as BasicSR does; MATLAB reads integer 8-bit values
    blocks = (luma.shape[0] // BLOCK_SIZE) * (luma.shape[1] // BLOCK_SIZE)
    if blocks < 2:
        raise ValueError(f"NIQE needs at least two whole {BLOCK_SIZE}x{BLOCK_SIZE} blocks (an image of at least "
                         f"{BLOCK_SIZE}x{2 * BLOCK_SIZE} after crop_border={crop_border}); got "
                         f"{luma.shape[0]}x{luma.shape[1]} with {blocks}")
    features, _ = image_block_features(luma)
    valid = features[~np.isnan(features).any(axis=1)]
    if len(valid) < 2:
        raise ValueError(f"NIQE is undefined for this image: {blocks - len(valid)} of its {blocks} blocks are "
                         "flat (no contrast), fewer than two are left")
    mu = np.nanmean(features, axis=0)
    diff = model.mu - mu
    cov = np.cov(valid, rowvar=False)
    return float(np.sqrt(diff @ np.linalg.pinv((model.cov + cov) / 2) @ diff))


# ------------------------------------------------------------------------------------------ pristine fit
def fit_pristine_model(images: Iterable[np.ndarray], sharpness_fraction: float = SHARPNESS_FRACTION,
                       offsets: Sequence[tuple[int, int]] = ((0, 0), (BLOCK_SIZE // 2, BLOCK_SIZE // 2))
                       ) -> PristineModel:
    """Fit a pristine MVG on sharp blocks of photographs you consider pristine (MATLAB's ``fitniqe``).

    ``images``: RGB or grey images as accepted by :func:`to_luma`. Each ``offsets`` entry adds the blocks of a
    shifted grid (more sharp crops of the same photographs); per image and grid, blocks sharper than
    ``sharpness_fraction`` × the sharpest one are kept. Needs more than 36 such blocks.
    """
    rows = []
    for img in images:
        luma = np.round(to_luma(img))
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


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m maskdcpt.evaluation.niqe",
                                     description="Score images with NIQE, or fit a pristine model of your own.")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="print the NIQE of image files")
    score.add_argument("images", nargs="+")
    score.add_argument("--crop-border", type=int, default=0)
    score.add_argument("--model", help="pristine .npz (default: the authors' model, MATLAB's scale)")
    fit = sub.add_parser("fit", help="fit a pristine MVG on photographs you choose (like MATLAB's fitniqe)")
    fit.add_argument("--out", required=True, help="output .npz (mu, cov)")
    fit.add_argument("images", nargs="+", help="pristine image files")
    args = parser.parse_args(argv)
    if args.command == "fit":
        model = fit_pristine_model(_read_rgb(p) for p in args.images)
        model.save(args.out)
        print(f"wrote {args.out}: pristine MVG from {len(args.images)} images")
    else:
        model = load_pristine_model(args.model)
        for path in args.images:
            print(f"{path}\t{niqe(_read_rgb(path), crop_border=args.crop_border, model=model):.4f}")


def _read_rgb(path: str) -> np.ndarray:
    try:
        return read_image(path, keep_gray=True)
    except SkipImage as err:
        raise ValueError(f"cannot read image {path}: {err.reason}") from None


if __name__ == "__main__":
    _main()
