"""degradations: a standalone on-the-fly engine for the 19 UIR-2.5M degradation types.

It imports nothing of ``maskdcpt`` and works on NumPy images (H×W×3 float32 in [0, 1]). An engine
config may add types beyond the 19 (``EngineConfig.extra_types``: albumentations transforms or a user's
function, ids 19, 20, …; see :mod:`degradations.extra_types`).

>>> from degradations import DegradationEngine, EngineConfig, degrade
>>> engine = DegradationEngine(EngineConfig(types="all"))
>>> sample = engine.sample(image, seed=(0, epoch, index))   # lq, gt, type_id, type_name, level, params
"""
from .config import EngineConfig
from .engine import DegradationEngine, DegradedSample, degrade
from .extra_types import ExtraTypeConfig
from .registry import NUM_TYPES, TYPE_IDS, TYPE_NAMES, TYPE_TABLE, DegradationType, all_types, register, resolve

__all__ = [
    "DegradationEngine",
    "DegradedSample",
    "DegradationType",
    "EngineConfig",
    "ExtraTypeConfig",
    "NUM_TYPES",
    "TYPE_IDS",
    "TYPE_NAMES",
    "TYPE_TABLE",
    "all_types",
    "degrade",
    "register",
    "resolve",
]
