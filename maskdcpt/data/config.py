"""Typed configuration of the training data: sources, crops, degradation engine, mixing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from degradations import NUM_TYPES, EngineConfig

from ..config import check_ranges, ranged


@dataclass
class SourceConfig:
    """One corpus in the mixture.

    kind:    "synthetic" — clean images degraded on the fly by the engine;
             "paired"    — LQ/GT folders of one degradation type (Rain13K, SIDD, GoPro, …);
             "shards"    — a sharded corpus (``tools/shard_corpus.py``): each of its sources is synthetic
                           (clean images) or paired (LQ and GT in one sample) as written.
    shards:  shards only: the shard manifest (or the folder holding ``manifest.json``).
    shuffle_block: shards only: samples per shuffle block (each data-loader worker holds one block of encoded
             files in memory; a resumed run re-reads at most one block per worker).
    root:    a folder to scan (a clean tree, or a pair tree with LQ and GT folders), or
    index:   a saved corpus index (``tools/index_corpus.py``); an index with several sources
             contributes one mixture source per indexed source (each with its own type id).
    meta:    pair meta file (paired only; see ``maskdcpt.data.index.match_pairs``).
    type:    degradation type name or id of a paired source (overrides the index's type id).
    weight:  relative weight within its kind (synthetic / paired).
    prior:   paired only: a folder of generative-model restorations of the LQ images, matched
             by file name (same name, or same stem with another image extension); they reach
             the model as extra input channels (fine-tuning's ``model.prior_channels``).
    pseudo_gt: paired only: the GT folder holds generative outputs used as pseudo targets for
             real LQ images without ground truth (see ``DataConfig.pseudo_gt_ratio``).
    """

    kind: Literal["synthetic", "paired", "shards"] = "synthetic"
    root: str = ""
    index: str = ""
    shards: str = ""
    shuffle_block: int = ranged(256, ge=1)
    meta: str = ""
    type: str | int | None = ranged(None, ge=0, lt=NUM_TYPES)  # a name, or an id
    weight: float = ranged(1.0, ge=0)
    name: str = ""
    prior: str = ""
    pseudo_gt: bool = False


@dataclass
class DataConfig:
    """The data path of pre-training.

    sources:         empty → the embedded default (scikit-image's sample photos, synthetic).
    crop_size:       side of the square training crops (pixels).
    crops_per_image: crops taken from each decoded image. Decoding a 2K photo costs ~10× a
                     128² degradation, so 8 crops per decode keep a worker core above ~60
                     samples/s; a group of crops stays in one batch (and one worker) when
                     batch_size is a multiple of it.
    min_size:        images with a side under this are skipped (0 → crop_size).
    engine:          the degradation engine of the synthetic sources (types, weights, level range,
                     parameter ranges); in YAML a mapping of its keys, e.g. ``data.engine.level_range=[0.2,1]``.
    schedule:        progressive mixing rows [step, synthetic, real], linear between rows,
                     e.g. [[0, 100, 0], [50000, 20, 80]]; empty → constant source weights.
    class_balanced:  paired sources: share each type's probability equally among types
                     (then among the sources of a type by weight) instead of by weight alone.
    num_workers:     DataLoader worker processes (the trainer passes it to build_train_loader).
    pseudo_gt_ratio: share of the paired draws that go to pseudo-GT sources (``pseudo_gt: true``);
                     None → by weight like any other source.
    """

    sources: list[SourceConfig] = field(default_factory=list)
    crop_size: int = ranged(128, ge=32, fixed=True)  # 32: the engine's minimum
    crops_per_image: int = ranged(8, ge=1)
    min_size: int = ranged(0, ge=0)
    engine: EngineConfig = field(default_factory=EngineConfig)
    schedule: list[list[float]] = field(default_factory=list)
    class_balanced: bool = True
    num_workers: int = ranged(0, ge=0)
    pseudo_gt_ratio: float | None = ranged(None, ge=0, le=1)

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceConfig) else SourceConfig(**s) for s in self.sources]
        check_ranges(self, "data")
        for i, src in enumerate(self.sources):
            check_ranges(src, f"data.sources[{i}]")
            if src.kind not in ("synthetic", "paired", "shards"):
                raise ValueError(f"data.sources[{i}].kind must be 'synthetic', 'paired' or 'shards', got {src.kind!r}")
            if src.kind == "shards":
                if not src.shards or src.root or src.index:
                    raise ValueError(f"data.sources[{i}]: a 'shards' source takes 'shards' (its manifest), "
                                     "not 'root' or 'index'")
                if src.meta or src.prior or src.pseudo_gt:
                    raise ValueError(f"data.sources[{i}]: 'meta', 'prior' and 'pseudo_gt' do not apply to shards")
            elif src.shards:
                raise ValueError(f"data.sources[{i}]: 'shards' needs kind: shards")
            elif bool(src.root) == bool(src.index):
                raise ValueError(f"data.sources[{i}]: give exactly one of 'root' or 'index'")
            if src.meta and src.kind != "paired":
                raise ValueError(f"data.sources[{i}]: 'meta' applies to paired sources only")
            if (src.prior or src.pseudo_gt) and src.kind != "paired":
                raise ValueError(f"data.sources[{i}]: 'prior' and 'pseudo_gt' apply to paired sources only")
        with_prior = [bool(s.prior) for s in self.sources]
        if any(with_prior) and not all(with_prior):
            # every sample of a batch must carry the same input channels
            missing = [i for i, has in enumerate(with_prior) if not has]
            raise ValueError(f"data.sources{missing}: when one source has a 'prior' folder, all sources need one")
        if self.pseudo_gt_ratio is not None:
            kinds = {s.pseudo_gt for s in self.sources if s.kind == "paired"}
            if kinds != {True, False}:
                raise ValueError("data.pseudo_gt_ratio needs paired sources both with and without 'pseudo_gt: true'")

    @property
    def effective_min_size(self) -> int:
        return self.min_size or self.crop_size
