"""Losses of MaskDCPT pre-training and fine-tuning."""
from .focal import focal_loss
from .reconstruction import masked_l1
from .supcon import supervised_contrastive_loss

__all__ = ["focal_loss", "masked_l1", "supervised_contrastive_loss"]
