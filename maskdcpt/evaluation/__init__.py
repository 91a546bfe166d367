"""Evaluation: full-reference metrics (PSNR, SSIM, LPIPS), NIQE, tiled restoration and the evaluate loop."""
from .metrics import calculate_psnr, calculate_ssim, psnr, rgb_to_y, ssim

__all__ = ["calculate_psnr", "calculate_ssim", "psnr", "ssim", "rgb_to_y"]
