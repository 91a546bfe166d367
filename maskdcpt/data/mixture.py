"""A mixture of sources built from a :class:`DataConfig`, with class-balanced paired weights."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from torch.utils.data import Dataset

from degradations import TYPE_NAMES, DegradationEngine

from ..errors import ConfigError, DataError, MissingFileError
from .config import DataConfig, SourceConfig
from .default import default_index
from .index import CorpusIndex
from .paired import PairedSource
from .source import CroppingSource
from .synthetic import SyntheticSource

log = logging.getLogger(__name__)


class MixtureDataset(Dataset):
    """Map-style data set whose keys are (source, epoch, item, crop, position) from the sampler."""

    def __init__(self, sources: Sequence[CroppingSource]):
        self.sources = list(sources)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, Any]:
        source = int(key[0])
        if not 0 <= source < len(self.sources):
            raise IndexError(f"source {source} out of range for {len(self.sources)} sources")
        return self.sources[source].sample(key)

    def __len__(self) -> int:  # one pass over every source's items (crops not counted)
        return sum(len(s) for s in self.sources)

    @property
    def decodes(self) -> int:
        """Files decoded by this process (the cache makes it less than the samples served)."""
        return sum(s.decodes for s in self.sources)


@dataclass
class Mixture:
    dataset: MixtureDataset
    kinds: list[str]
    weights: list[float]
    type_ids: list[int]  # -1 for synthetic sources (the engine draws the type per sample)
    plans: list[Any] | None = None  # per source: the LanePlan of a sharded source, else None

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.dataset.sources]


def type_id_of(value: str | int | None, names: Sequence[str] = TYPE_NAMES) -> int | None:
    """A type name or id → id, validated against ``names`` (the fixed table, or an engine's
    ``label_names`` with its extra types); no implementation needed."""
    if value is None:
        return None
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        if value not in names:
            raise ConfigError(f"unknown degradation type {value!r}; valid: {', '.join(names)}")
        return list(names).index(value)
    tid = int(value)
    if not 0 <= tid < len(names):
        raise ConfigError(f"degradation type id {tid} out of range 0..{len(names) - 1}")
    return tid


def per_root_options(n_roots: int, types: Sequence[str] | None, metas: Sequence[str] | None,
                     names: Sequence[str] | None) -> tuple[list[int] | None, list[str | None] | None]:
    """The per-root options of the corpus tools (``--type``, ``--meta``, ``--names``: one value per root, ``-`` for
    none) checked: (type ids, -1 for none; meta files, None for none). ConfigError naming the option otherwise."""
    for option, values in (("type", types), ("meta", metas), ("names", names)):
        if values is not None and len(values) != n_roots:
            raise ConfigError(f"--{option} needs one value per root ({n_roots}), got {len(values)}")
    try:
        type_ids = [(-1 if t == "-" else type_id_of(t)) for t in types] if types else None
    except ConfigError as err:
        raise ConfigError(f"--type: {err}") from None
    return type_ids, ([(None if m == "-" else m) for m in metas] if metas else None)


def class_balanced_weights(type_ids: Sequence[int], weights: Sequence[float]) -> list[float]:
    """Paired-source weights giving every present type the same total share.

    Within a type, sources share its share in proportion to their own weights. Entries with
    type id -1 (synthetic) keep their weight: the engine's type weights balance those.
    """
    out = [float(w) for w in weights]
    totals: dict[int, float] = {}
    for tid, w in zip(type_ids, weights):
        if tid >= 0:
            totals[tid] = totals.get(tid, 0.0) + float(w)
    present = [t for t, total in totals.items() if total > 0]
    for i, (tid, w) in enumerate(zip(type_ids, weights)):
        if tid >= 0:
            out[i] = float(w) / totals[tid] / len(present) if totals[tid] > 0 else 0.0
    return out


def _indices_of(src: SourceConfig, position: int) -> list[tuple[CorpusIndex, str]]:
    """(index view, name) per indexed source of one configured source."""
    try:
        if src.index:
            full = CorpusIndex.load(src.index)
        else:
            meta = [src.meta or None]
            full = CorpusIndex.build([src.root], metas=meta, names=[src.name] if src.name else None)
    except (DataError, MissingFileError) as err:
        raise type(err)(f"data.sources[{position}]: {err}") from None
    if full.skipped and not src.index:  # an index tool printed its own when it was built
        log.warning("data.sources[%d]: skipped %d path(s) while scanning %s: %s", position, len(full.skipped), src.root,
                    ", ".join(f"{p} ({why})" for p, why in full.skipped))
    views = []
    for sid, info in enumerate(full.sources):
        if len(info):
            views.append((full.source_view(sid), src.name or info.name or f"source{position}.{sid}"))
    if not views:
        raise DataError(f"data.sources[{position}]: no images in {src.index or src.root!r}")
    return views


def _shard_streams(src: SourceConfig, position: int, seed: int, first_id: int, lanes: int) -> list[Any]:
    """One :class:`ShardStream` per source of a shard manifest."""
    from .shards import ShardStream, load_manifest

    try:
        manifest = load_manifest(src.shards)
        return [ShardStream(m, seed=seed, source_id=first_id + i, lanes=lanes, block=src.shuffle_block)
                for i, m in enumerate(manifest)]
    except (DataError, MissingFileError) as err:
        raise type(err)(f"data.sources[{position}]: {err}") from None


def build_mixture(cfg: DataConfig, seed: int, lanes: int = 1) -> Mixture:
    """Every configured source (or the embedded default) as one :class:`MixtureDataset`. ``lanes``: the readers
    that split sharded sources (ranks × data-loader workers; see :mod:`maskdcpt.data.shards`)."""
    from .shards import ShardPairedSource, ShardSyntheticSource

    engine = None
    sources: list[CroppingSource] = []
    kinds: list[str] = []
    weights: list[float] = []
    type_ids: list[int] = []
    pseudo: list[bool] = []
    plans: list[Any] = []
    configured = cfg.sources or [None]
    for position, src in enumerate(configured):
        if src is not None and src.kind == "shards":
            streams = _shard_streams(src, position, seed, len(sources), lanes)
            synthetic_items = sum(len(s) for s in streams if s.source.kind == "clean")
            declared = type_id_of(src.type, cfg.engine.label_names)
            for stream in streams:
                sid = len(sources)
                common = dict(source_id=sid, seed=seed, crop_size=cfg.crop_size, min_size=cfg.effective_min_size,
                              name=src.name or stream.name)
                if stream.source.kind == "clean":
                    if engine is None:
                        engine = DegradationEngine(cfg.engine)
                    sources.append(ShardSyntheticSource(stream, engine, **common))
                    weights.append(src.weight * len(stream) / synthetic_items)
                    kinds.append("synthetic")
                    type_ids.append(-1)
                else:
                    tid = declared if declared is not None else stream.source.type_id
                    if tid < 0:
                        raise ValueError(f"data.sources[{position}] ({stream.name}): paired shards need their "
                                         "degradation 'type' (name or id), in the config or the manifest")
                    sources.append(ShardPairedSource(stream, tid, **common))
                    weights.append(src.weight)
                    kinds.append("paired")
                    type_ids.append(tid)
                pseudo.append(False)
                plans.append(stream.plan)
            continue
        if src is None:
            views, kind, weight, declared = [(default_index(), "skimage-default")], "synthetic", 1.0, None
        else:
            views, kind, weight, declared = _indices_of(src, position), src.kind, src.weight, type_id_of(src.type, cfg.engine.label_names)
        total_items = sum(len(v) for v, _ in views)
        for view, name in views:
            sid = len(sources)
            common = dict(source_id=sid, seed=seed, crop_size=cfg.crop_size, min_size=cfg.effective_min_size, name=name)
            if kind == "synthetic":
                if engine is None:
                    engine = DegradationEngine(cfg.engine)
                sources.append(SyntheticSource(view, engine, **common))
                # several indexed sources of one synthetic entry act as one corpus
                weights.append(weight * len(view) / total_items)
                type_ids.append(-1)
            else:
                tid = declared if declared is not None else int(view.type_id[0])
                if tid < 0:
                    raise ValueError(f"data.sources[{position}] ({name}): a paired source needs its degradation "
                                     "'type' (name or id), in the config or the index")
                sources.append(PairedSource(view, tid, prior_dir=src.prior, **common))
                weights.append(weight)
                type_ids.append(tid)
                pseudo.append(src.pseudo_gt)
            kinds.append(kind)
            plans.append(None)
            if kind == "synthetic":
                pseudo.append(False)
    if cfg.class_balanced:
        weights = class_balanced_weights(type_ids, weights)
    if cfg.pseudo_gt_ratio is not None:
        weights = pseudo_gt_weights(kinds, pseudo, weights, cfg.pseudo_gt_ratio)
    return Mixture(MixtureDataset(sources), kinds, weights, type_ids, plans)


def pseudo_gt_weights(kinds: Sequence[str], pseudo: Sequence[bool], weights: Sequence[float], ratio: float) -> list[float]:
    """Rescale paired weights so that pseudo-GT sources get ``ratio`` of the paired mass and
    true pairs the rest; relative weights within each group and synthetic weights are kept."""
    paired = [i for i, k in enumerate(kinds) if k == "paired"]
    fake = sum(weights[i] for i in paired if pseudo[i])
    true = sum(weights[i] for i in paired if not pseudo[i])
    mass = fake + true
    out = list(weights)
    for i in paired:
        group, share = (fake, ratio) if pseudo[i] else (true, 1.0 - ratio)
        out[i] = weights[i] / group * share * mass if group > 0 else 0.0
    return out
