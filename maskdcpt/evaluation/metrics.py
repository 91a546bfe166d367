"""PSNR and SSIM with the definitions every restoration paper reports (BasicSR's ``psnr_ssim.py``).

Two layers:

* ``calculate_psnr`` / ``calculate_ssim``: BasicSR's semantics on numpy images whose values are on the
  [0, 255] scale (uint8 or float). Colour images are in **BGR** order there, as BasicSR reads them with cv2;
  pass ``channel_order='rgb'`` for RGB arrays. Only the Y channel depends on the order.
* ``psnr`` / ``ssim``: our entry points for restored outputs in [0, 1] (numpy (H, W, 3) or torch
  (3, H, W) / (B, 3, H, W), **RGB**). ``data_range='float'`` computes on the clamped floats without
  quantisation (MaskDCPT configs, ``image_range: 1.0``); ``data_range='uint8'`` first rounds to 8 bits
  exactly like BasicSR's ``tensor2img`` (clamp, ``*255``, ``round``) — the ``image_range: 255`` path.

Scales: PSNR in dB, higher is better (identical images: ``inf``); SSIM at most 1 (identical), higher is better.

Definitions (facts of BasicSR):
* Y channel: ITU-R BT.601 "studio swing" luma, Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in
  [0, 1], so Y lies in [16, 235]; it is not rounded.
* PSNR = 10 log10(255² / MSE) on the [0, 255] scale (MSE in float64); identical images give ``inf``.
* SSIM: 11×11 Gaussian window, σ = 1.5, C1 = (0.01·255)², C2 = (0.03·255)², local statistics kept only
  where the window lies fully inside the image ('valid': a 5-pixel frame is dropped), mean of the SSIM map,
  per channel, then the channel mean.
"""
from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# BT.601 luma weights for R, G, B in [0, 1] giving Y on the [0, 255] scale, plus the +16 offset.
_Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0

_SSIM_WINDOW_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2

DataRange = Literal["float", "uint8"]


# --------------------------------------------------------------------------------------------- numpy core
def reorder_image(img: np.ndarray, input_order: str = "HWC") -> np.ndarray:
    """Return ``img`` as (H, W, C); a 2-D image becomes (H, W, 1)."""
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"input_order must be 'HWC' or 'CHW', got {input_order!r}")
    if img.ndim == 2:
        return img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {img.shape}")
    return img.transpose(1, 2, 0) if input_order == "CHW" else img


def rgb_to_y(img: np.ndarray, scale: float = 255.0) -> np.ndarray:
    """BT.601 luma of an (..., 3) RGB image whose values lie in [0, ``scale``].

    Returns (..., 1) float64 on the same scale: 16/255·scale for black, 235/255·scale for white.
    """
    if img.shape[-1] != 3:
        raise ValueError(f"Y channel needs 3 colour channels in the last axis, got shape {img.shape}")
    rgb01 = img.astype(np.float64) / scale
    y = rgb01 @ _Y_WEIGHTS_RGB + _Y_OFFSET  # [16, 235]
    return (y * (scale / 255.0))[..., None]


def _prepare(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool,
             input_order: str, channel_order: str) -> tuple[np.ndarray, np.ndarray]:
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img.shape} vs {img2.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    a = reorder_image(np.asarray(img), input_order).astype(np.float64)
    b = reorder_image(np.asarray(img2), input_order).astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and a.shape[-1] == 3:
        if channel_order == "bgr":
            a, b = a[..., ::-1], b[..., ::-1]
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False,
                   input_order: str = "HWC", channel_order: str = "bgr") -> float:
    """PSNR in dB of two images on the [0, 255] scale (BasicSR's ``calculate_psnr``)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, input_order, channel_order)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def _gaussian_window() -> np.ndarray:
    k = cv2.getGaussianKernel(_SSIM_WINDOW_SIZE, _SSIM_SIGMA)
    return k @ k.T


def _ssim_single_channel(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) float64 images on the [0, 255] scale, 'valid' window positions only."""
    if min(a.shape) < _SSIM_WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW_SIZE}x{_SSIM_WINDOW_SIZE}, got {a.shape}")
    window = _gaussian_window()
    r = _SSIM_WINDOW_SIZE // 2
    # cv2 pads the borders, but dropping the r-pixel frame leaves exactly the 'valid' positions.
    def local_mean(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[r:-r, r:-r]

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a ** 2
    var_b = local_mean(b * b) - mu_b ** 2
    cov_ab = local_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + _SSIM_C1) * (2 * cov_ab + _SSIM_C2)) / (
        (mu_a ** 2 + mu_b ** 2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2))
    return float(ssim_map.mean())


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, test_y_channel: bool = False,
                   input_order: str = "HWC", channel_order: str = "bgr") -> float:
    """SSIM of two images on the [0, 255] scale (BasicSR's ``calculate_ssim``): per channel, then mean."""
    a, b = _prepare(img, img2, crop_border, test_y_channel, input_order, channel_order)
    return float(np.mean([_ssim_single_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])]))


# ------------------------------------------------------------------------------------ [0, 1] entry points
def to_255_scale(img: np.ndarray | torch.Tensor, data_range: DataRange) -> np.ndarray:
    """A [0, 1] RGB image ((H, W, 3) numpy, or (3, H, W) torch) → (H, W, 3) float64 on [0, 255].

    Values are clamped to [0, 1] first; ``'uint8'`` then rounds to 8 bits (BasicSR's ``tensor2img``).
    """
    if data_range not in ("float", "uint8"):
        raise ValueError(f"data_range must be 'float' or 'uint8', got {data_range!r}")
    if isinstance(img, torch.Tensor):
        if img.ndim != 3:
            raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(img.shape)}")
        img = img.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    x = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0
    return np.round(x) if data_range == "uint8" else x


def to_unit_array(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any image the no-reference metrics accept → float64 numpy on [0, 1]: (H, W, 3) RGB or (H, W) grey.

    uint8 is divided by 255, uint16 by 65535, floats are clamped to [0, 1]; a torch tensor is (3, H, W) or
    (H, W) on [0, 1]."""
    if isinstance(img, torch.Tensor):
        img = img.detach().to("cpu", torch.float64).clamp(0, 1)
        img = img.permute(1, 2, 0) if img.ndim == 3 else img
        img = img.numpy()
    img = np.asarray(img)
    if img.dtype == np.uint8:
        unit = img.astype(np.float64) / 255.0
    elif img.dtype == np.uint16:
        unit = img.astype(np.float64) / 65535.0
    else:
        unit = np.clip(img.astype(np.float64), 0.0, 1.0)
    if not (unit.ndim == 2 or (unit.ndim == 3 and unit.shape[-1] == 3)):
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) grey image (or a (3, H, W) tensor), got shape "
                         f"{unit.shape}")
    return unit


def _batched(pred, gt) -> list[tuple]:
    if isinstance(pred, torch.Tensor) and pred.ndim == 4:
        if not isinstance(gt, torch.Tensor) or gt.shape != pred.shape:
            raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(getattr(gt, 'shape', ()))}")
        return list(zip(pred, gt))
    return [(pred, gt)]


def psnr(pred, gt, crop_border: int = 0, y_channel: bool = False, data_range: DataRange = "float"):
    """PSNR (dB) of restored ``pred`` against ``gt``, both RGB in [0, 1].

    Accepts (H, W, 3) numpy arrays, (3, H, W) tensors (→ float) or (B, 3, H, W) tensors (→ list of B floats).
    """
    values = [calculate_psnr(to_255_scale(p, data_range), to_255_scale(g, data_range), crop_border,
                             y_channel, channel_order="rgb") for p, g in _batched(pred, gt)]
    return values if isinstance(pred, torch.Tensor) and pred.ndim == 4 else values[0]


def ssim(pred, gt, crop_border: int = 0, y_channel: bool = False, data_range: DataRange = "float"):
    """SSIM of restored ``pred`` against ``gt``, both RGB in [0, 1]; shapes as for :func:`psnr`."""
    values = [calculate_ssim(to_255_scale(p, data_range), to_255_scale(g, data_range), crop_border,
                             y_channel, channel_order="rgb") for p, g in _batched(pred, gt)]
    return values if isinstance(pred, torch.Tensor) and pred.ndim == 4 else values[0]


# ------------------------------------------------------------------------------------------ torch batch
def psnr_torch(pred: torch.Tensor, gt: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR (B,) of (B, 3, H, W) float tensors in [0, 1] (clamped, no quantisation), on their device.

    Same definition as ``psnr(..., data_range='float')``; computed in float64 for agreement with numpy.
    """
    a, b = _torch_prepare(pred, gt, crop_border, y_channel)
    return psnr_from_mse(((a - b) ** 2).mean(dim=(1, 2, 3)))  # mse == 0 → inf, as in the numpy path


def psnr_from_mse(mse: torch.Tensor, min_mse: float = 0.0) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] from their mean squared errors. ``min_mse`` > 0 caps it (1e-10: 100 dB) where
    training logs must stay finite for an image reproduced exactly; 0 gives ``inf`` there."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(min_mse))


def ssim_torch(pred: torch.Tensor, gt: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, 3, H, W) float tensors in [0, 1]; same definition as :func:`ssim`."""
    a, b = _torch_prepare(pred, gt, crop_border, y_channel)
    a, b = a * 255.0, b * 255.0
    channels = a.shape[1]
    # the window is the outer product of a 1-D Gaussian: two 1-D passes give the same means (to float64 rounding)
    # at a fifth of the cost of the 11×11 convolution
    k = torch.from_numpy(cv2.getGaussianKernel(_SSIM_WINDOW_SIZE, _SSIM_SIGMA)[:, 0]).to(a)
    rows, cols = k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), k.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)  # no padding: 'valid' positions

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a ** 2
    var_b = local_mean(b * b) - mu_b ** 2
    cov_ab = local_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + _SSIM_C1) * (2 * cov_ab + _SSIM_C2)) / (
        (mu_a ** 2 + mu_b ** 2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


def _torch_prepare(pred: torch.Tensor, gt: torch.Tensor, crop_border: int, y_channel: bool):
    if pred.ndim != 4 or pred.shape != gt.shape:
        raise ValueError(f"expected two (B, C, H, W) tensors of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    a = pred.detach().double().clamp(0, 1)
    b = gt.detach().double().clamp(0, 1)
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        w = torch.tensor(_Y_WEIGHTS_RGB / 255.0, dtype=a.dtype, device=a.device).view(1, 3, 1, 1)
        a = (a * w).sum(1, keepdim=True) + _Y_OFFSET / 255.0
        b = (b * w).sum(1, keepdim=True) + _Y_OFFSET / 255.0
    return a, b
