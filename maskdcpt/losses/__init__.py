"""Losses of MaskDCPT pre-training and fine-tuning; the table of pre-training's terms is :mod:`.registry`."""
from .focal import focal_loss
from .reconstruction import masked_l1
from .registry import (
    LOSS_TERMS, LossConfig, LossInputs, LossTerm, check_weights, loss_weights, register_loss_term, total_loss,
)
from .restoration import RestorationLossConfig, frequency_l1, psnr_loss, restoration_loss
from .supcon import supervised_contrastive_loss

__all__ = ["focal_loss", "masked_l1", "supervised_contrastive_loss", "LOSS_TERMS", "LossConfig", "LossInputs",
           "LossTerm", "check_weights", "loss_weights", "register_loss_term", "total_loss", "RestorationLossConfig",
           "frequency_l1", "psnr_loss", "restoration_loss"]
