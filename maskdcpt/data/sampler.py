"""Deterministic, sharded, resumable batch sampler over a weighted mixture of sources.

Every key it yields is a pure function of (seed, global sample position), so a run resumed at
step k yields exactly the batches k, k+1, … of an uninterrupted run, on every rank.

Positions. At step t, rank r of W takes the global sample positions
``q = (t·W + r)·B + i`` for i < B. Position q is crop ``q % K`` of *group* ``g = q // K``: a
group is one image and its K crops (decoded once, cropped K times).

Sources. Group g draws its source from the mixture probabilities at its step (the
progressive schedule moves probability from synthetic to real sources over steps). The draw
uses a counter-based hash of (seed, g), so it needs no RNG state. Source s keeps its own
stream: the c-th group that chose s takes item ``perm(seed, s, c // N_s)[c % N_s]``; hence
each source's items are covered once per source epoch, and since ranks partition the global
positions, the union over ranks covers every sample of an epoch once and none twice.

Sharded sources (``maskdcpt.data.shards``) are read front to back by *lanes*, one per rank and DataLoader
worker: the group's lane is ``(t % P)·W + r`` for the step t and rank r of its first position (P workers per
rank), and its item is the c-th of that lane's stream (``LanePlan.locate``), c counting the earlier groups of
the same source and lane. The key keeps its shape; its epoch is the lane's.

Key = (source, epoch, item, crop, position): the data set derives every random draw of the
sample (crop window, flip/rot90, degradation) from (seed, source, epoch, item, crop); the
position is the sample's global index (the same for any number of ranks at a fixed global
batch), which the trainer uses to seed per-sample masks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from degradations.rng import make_rng

from .schedule import MixingSchedule

if TYPE_CHECKING:
    from .shards import LanePlan

SampleKey = tuple[int, int, int, int, int]  # (source, epoch, item, crop, global position)
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def hash_uniform(seed: int, positions: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from (seed, position) by SplitMix64: stateless and vectorised."""
    with np.errstate(over="ignore"):
        x = np.asarray(positions, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x = x + np.uint64((int(seed) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class MixtureSampler:
    """Yields, per step, the list of ``B`` sample keys of this rank (an infinite batch sampler).

    sizes:    items per source (images, or pairs).
    kinds:    "synthetic" or "paired" per source (the schedule splits between the two kinds).
    weights:  relative weight of each source within its kind (or overall, without a schedule).
    schedule: None → constant probabilities ∝ weights; else the synthetic share per step.
    plans:    per source, None (random access: an index) or the :class:`LanePlan` of a sharded source, whose
              lanes must be ``world_size × lanes_per_rank``.
    lanes_per_rank: readers per rank of the sharded sources (the DataLoader's workers, at least 1).
    """

    def __init__(self, sizes: Sequence[int], kinds: Sequence[str], weights: Sequence[float], *, seed: int,
                 batch_size: int, crops_per_image: int = 1, rank: int = 0, world_size: int = 1,
                 schedule: MixingSchedule | None = None, start_step: int = 0, chunk_groups: int = 1 << 16,
                 plans: Sequence["LanePlan | None"] | None = None, lanes_per_rank: int = 1):
        if not (len(sizes) == len(kinds) == len(weights)) or not sizes:
            raise ValueError(f"sampler: need equal, non-empty sizes/kinds/weights, got {len(sizes)}/{len(kinds)}/{len(weights)}")
        if any(int(n) <= 0 for n in sizes):
            raise ValueError(f"sampler: every source needs at least one item, got sizes {list(sizes)}")
        if any(k not in ("synthetic", "paired") for k in kinds):
            raise ValueError(f"sampler: kinds must be 'synthetic' or 'paired', got {list(kinds)}")
        if any(not float(w) >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"sampler: weights must be >= 0 with a positive sum, got {list(weights)}")
        if batch_size <= 0 or crops_per_image <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"sampler: bad batch_size={batch_size}, crops_per_image={crops_per_image}, "
                             f"rank={rank}, world_size={world_size}")
        if seed < 0 or start_step < 0:
            raise ValueError(f"sampler: seed and start_step must be >= 0, got {seed}, {start_step}")
        self.sizes = [int(n) for n in sizes]
        self.kinds = list(kinds)
        self.weights = np.asarray(weights, np.float64)
        self.seed, self.batch_size, self.crops = int(seed), int(batch_size), int(crops_per_image)
        self.rank, self.world_size = int(rank), int(world_size)
        self.schedule = schedule
        self.start_step = int(start_step)
        self._chunk = int(chunk_groups)
        self._is_syn = np.array([k == "synthetic" for k in kinds])
        # Within-kind normalised weights; a kind without weight gets no share from the schedule.
        self._w_kind = np.zeros(len(sizes))
        for mask in (self._is_syn, ~self._is_syn):
            total = self.weights[mask].sum()
            if total > 0:
                self._w_kind[mask] = self.weights[mask] / total
        self._has = (self.weights[self._is_syn].sum() > 0, self.weights[~self._is_syn].sum() > 0)
        self.plans = list(plans) if plans is not None else [None] * len(sizes)
        self.lanes_per_rank = int(lanes_per_rank)
        self._streamed = np.array([p is not None for p in self.plans])
        self._lanes = self.world_size * self.lanes_per_rank if self._streamed.any() else 1
        if self._streamed.any():
            if len(self.plans) != len(sizes) or self.lanes_per_rank < 1:
                raise ValueError(f"sampler: need one plan (or None) per source and lanes_per_rank >= 1")
            if any(p is not None and p.lanes != self._lanes for p in self.plans):
                raise ValueError(f"sampler: sharded sources must be split into {self._lanes} lanes "
                                 f"({self.world_size} ranks × {self.lanes_per_rank} readers)")
            if self.batch_size % self.crops:
                # a group (one image, K crops) must stay in one batch, hence with one reader
                raise ValueError(f"sharded sources need the per-rank batch ({self.batch_size}) to be a multiple "
                                 f"of data.crops_per_image ({self.crops})")
        # counts of earlier groups per (source, lane) before chunk c
        self._chunk_counts: list[np.ndarray] = [np.zeros(len(sizes) * self._lanes, np.int64)]
        self._chunks: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # ---- mixture probabilities ------------------------------------------------------
    def step_of_group(self, groups: np.ndarray) -> np.ndarray:
        return (np.asarray(groups, np.int64) * self.crops) // (self.world_size * self.batch_size)

    def probabilities(self, step) -> np.ndarray:
        """Source probabilities at ``step`` (shape (S,), or (n, S) for an array of steps)."""
        steps = np.atleast_1d(np.asarray(step, np.int64))
        if self.schedule is None or not all(self._has):
            p = np.broadcast_to(self.weights / self.weights.sum(), (len(steps), len(self.sizes))).copy()
        else:
            syn = np.asarray(self.schedule.synthetic_share(steps), np.float64)[:, None]
            p = np.where(self._is_syn[None, :], syn, 1.0 - syn) * self._w_kind[None, :]
        return p[0] if np.ndim(step) == 0 else p

    # ---- groups → (source, count within source and lane, lane) ------------------------
    def lane_of_group(self, groups: np.ndarray) -> np.ndarray:
        """The reader (lane) of each group: ``(t % P)·W + r`` for the step t and rank r of its first position."""
        if self._lanes == 1:
            return np.zeros(len(groups), np.int64)
        first = np.asarray(groups, np.int64) * self.crops
        global_batch = self.world_size * self.batch_size
        step, offset = first // global_batch, first % global_batch
        return (step % self.lanes_per_rank) * self.world_size + offset // self.batch_size

    def _compute_chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        groups = np.arange(c * self._chunk, (c + 1) * self._chunk, dtype=np.int64)
        if len(self.sizes) == 1:
            source = np.zeros(len(groups), np.int64)
        else:
            cdf = np.cumsum(self.probabilities(self.step_of_group(groups)), axis=1)
            u = hash_uniform(self.seed, groups)[:, None] * cdf[:, -1:]
            source = np.minimum((u >= cdf).sum(axis=1), len(self.sizes) - 1)
        lane = np.where(self._streamed[source], self.lane_of_group(groups), 0)
        key = source * self._lanes + lane
        # the rank of each group among the earlier groups of its (source, lane), vectorised
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        first_of_key = np.searchsorted(sorted_keys, sorted_keys, side="left")
        count = np.empty(len(groups), np.int64)
        count[order] = self._chunk_counts[c][sorted_keys] + np.arange(len(groups)) - first_of_key
        return source, count, lane

    def _chunk_arrays(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if c in self._chunks:
            self._chunks.move_to_end(c)
            return self._chunks[c]
        while len(self._chunk_counts) <= c:  # prefix counts: computed once, in order
            k = len(self._chunk_counts) - 1
            source, _, lane = self._chunks.get(k) or self._compute_chunk(k)
            self._chunk_counts.append(self._chunk_counts[k] + np.bincount(
                source * self._lanes + lane, minlength=len(self.sizes) * self._lanes))
        arrays = self._compute_chunk(c)
        self._chunks[c] = arrays
        while len(self._chunks) > 2:
            self._chunks.popitem(last=False)
        return arrays

    def group_source_count(self, g: int) -> tuple[int, int]:
        """(source, how many earlier groups chose that source, in the same lane for a sharded one) for group ``g``."""
        source, count, _ = self._chunk_arrays(g // self._chunk)
        return int(source[g % self._chunk]), int(count[g % self._chunk])

    def permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            self._perms[key] = make_rng((self.seed, source, epoch)).permutation(self.sizes[source])
            while len(self._perms) > 2 * len(self.sizes):
                self._perms.popitem(last=False)
        return self._perms[key]

    def key_at(self, position: int) -> SampleKey:
        """The sample key at global sample position ``position``."""
        group, crop = divmod(int(position), self.crops)
        sources, counts, lanes = self._chunk_arrays(group // self._chunk)
        at = group % self._chunk
        source, count = int(sources[at]), int(counts[at])
        plan = self.plans[source]
        if plan is not None:  # the count-th sample of this group's lane
            epoch, item = plan.locate(int(lanes[at]), count)
            return source, epoch, item, crop, int(position)
        epoch, j = divmod(count, self.sizes[source])
        return source, epoch, int(self.permutation(source, epoch)[j]), crop, int(position)

    # ---- batches --------------------------------------------------------------------
    def positions(self, step: int) -> range:
        first = (int(step) * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def batch_keys(self, step: int) -> list[SampleKey]:
        return [self.key_at(q) for q in self.positions(step)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while True:
            yield self.batch_keys(step)
            step += 1

    @property
    def epoch_samples(self) -> int:
        """Samples in one pass over every source (sum of items × crops)."""
        return sum(self.sizes) * self.crops
