"""Backbones (dense and masked), the degradation classifier, the MaskDCPT wrapper and weight files.

Every module of this package is imported here, so that each backbone file's ``@register_model`` factories are
registered without a list to edit: a new backbone is one new file in this folder.
"""
import importlib
import pkgutil

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


def _import_every_module() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")  # registers the backbones it defines


_import_every_module()
