"""Backbones (dense and masked), the degradation classifier, the MaskDCPT wrapper and weight files."""
from .base import Backbone
from .checkpoint import LoadReport, load_pretrained, load_restorer, save_restorer
from .classifier import DegradationClassifier
from .maskdcpt import MaskDCPT, MaskDCPTOutput, ReconstructionHead, build_maskdcpt
from .registry import ModelCfg, create_model, get_model_cfg, list_models, register_model

__all__ = [
    "Backbone",
    "ModelCfg",
    "create_model",
    "get_model_cfg",
    "list_models",
    "register_model",
    "load_pretrained",
    "load_restorer",
    "save_restorer",
    "LoadReport",
    "MaskDCPT",
    "MaskDCPTOutput",
    "ReconstructionHead",
    "build_maskdcpt",
    "DegradationClassifier",
]
