"""Evaluation: full-reference metrics (PSNR, SSIM, LPIPS), no-reference metrics (NIQE, PIQE), tiled restoration,
the evaluate loop and the standard benchmarks.

``niqe`` and ``piqe`` here are the functions (``from maskdcpt.evaluation import piqe; piqe(img)``); their
modules stay importable by their full names (``from maskdcpt.evaluation.piqe import CONVENTIONS``).
"""
from .metrics import calculate_psnr, calculate_ssim, psnr, rgb_to_y, ssim
from .niqe import niqe
from .piqe import piqe

__all__ = ["calculate_psnr", "calculate_ssim", "psnr", "ssim", "rgb_to_y", "niqe", "piqe"]
