"""The data path: corpus index → sources (synthetic / paired) → mixture → sampler → batches.

>>> from maskdcpt.data import DataConfig, build_train_loader
>>> loader = build_train_loader(DataConfig(), seed=0, batch_size=16, num_workers=4)
>>> batch = next(iter(loader))   # lq, gt (B, 3, 128, 128) in [0, 1], type_id, level, source, params
"""
from .config import DataConfig, SourceConfig
from .decode import SkipImage, read_image, to_float
from .index import CorpusIndex, build_index
from .loader import TrainLoader, build_train_loader, collate
from .mixture import MixtureDataset, build_mixture, class_balanced_weights
from .paired import PairedSource
from .sampler import MixtureSampler
from .schedule import MixingSchedule
from .synthetic import SyntheticSource

__all__ = [
    "CorpusIndex", "DataConfig", "MixingSchedule", "MixtureDataset", "MixtureSampler", "PairedSource",
    "SkipImage", "SourceConfig", "SyntheticSource", "TrainLoader", "build_index", "build_mixture",
    "build_train_loader", "class_balanced_weights", "collate", "read_image", "to_float",
]
