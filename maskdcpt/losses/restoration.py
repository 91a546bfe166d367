"""The fine-tuning loss: a weighted sum of L1, a per-sample PSNR term and a frequency L1 (``loss.*`` of
:class:`~maskdcpt.training.finetune.FinetuneConfig`). Why three terms: an all-in-one batch mixes tasks whose errors
differ by an order of magnitude; what each term measured is in ``configs/experiments/transfer_cpu.yaml``'s header.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_ranges, ranged
from ..errors import ConfigError
from .reconstruction import masked_l1

__all__ = ["RestorationLossConfig", "psnr_loss", "frequency_l1", "restoration_loss"]


@dataclass
class RestorationLossConfig:
    l1: float = ranged(1.0, ge=0)  # mean absolute error over the batch's pixels
    psnr: float = ranged(0.0, ge=0)  # minus each sample's PSNR in dB, averaged over the batch
    frequency: float = ranged(0.0, ge=0)  # L1 of the 2-D spectra (real and imaginary parts)

    def __post_init__(self) -> None:
        check_ranges(self, "loss")
        if self.l1 == self.psnr == self.frequency == 0:
            raise ConfigError("loss.l1, loss.psnr and loss.frequency are all 0: nothing to train")


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over the batch of ``10·log10(MSE_i + eps)``: −PSNR in dB for images in [0, 1]; (B, C, H, W).

    Each sample counts by its relative error: 1 dB lost on a lightly degraded crop costs what 1 dB lost on a
    heavily degraded one does. Under L1 alone the heavy samples' large errors (low light, haze) dominate the
    gradient, and a small restorer learns their global corrections (brighten, add contrast) at the expense of
    the light ones (σ 15 noise, thin rain), which then end below their input.
    """
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(mse + eps).mean()


def frequency_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the images' 2-D FFTs (real and imaginary parts, orthonormal scaling).

    Every frequency counts alike, so the high frequencies that blur removes weigh as much as the low ones that
    carry most of the pixel error (the frequency loss of deblurring networks such as MIMO-UNet)."""
    diff = torch.fft.rfft2(pred.float() - target.float(), norm="ortho")
    return torch.view_as_real(diff).abs().mean()


def restoration_loss(pred: torch.Tensor, target: torch.Tensor,
                     weights: RestorationLossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ weight · term over the terms weighted above 0, {"loss/<term>": term, …, "loss/total": the sum})."""
    fns = {"l1": lambda: masked_l1(pred, target),
           "psnr": lambda: psnr_loss(pred, target), "frequency": lambda: frequency_l1(pred, target)}
    terms: dict[str, torch.Tensor] = {}
    total = pred.new_zeros((), dtype=torch.float32)
    for name, fn in fns.items():
        weight = getattr(weights, name)
        if weight > 0:
            terms[f"loss/{name}"] = fn()
            total = total + weight * terms[f"loss/{name}"]
    terms["loss/total"] = total
    return total, terms
