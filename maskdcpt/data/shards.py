"""Reading a sharded corpus (``tools/shard_corpus.py``; format in :mod:`maskdcpt.data.shard_writer`).

A parallel file system serves millions of small files slowly (an open and a stat per sample, on metadata servers
that everyone shares); tar shards are read front to back, a few hundred megabytes per open. The sampler's promise
stays: every sample is a function of (seed, global position) — here also of the *lanes*, the readers that
split the shards.

Lanes. A rank's DataLoader worker reads one lane: lane ``(t % P)·R + r`` serves the batches of step t on rank r
(R = ranks, P = workers per rank, at least 1), which the DataLoader hands out round robin, so each worker
meets the same lane at every batch. In lane-epoch e a source's shards are permuted from (seed, source, e) and
dealt to the lanes in turn (shard i of the permutation to lane i mod R·P); with fewer shards than lanes, the
samples are dealt instead (every lane reads every shard and keeps its share). A lane's samples, in shard order,
are cut into blocks of ``block`` samples and each block is permuted from (seed, source, e, lane, block): a shuffle
buffer whose content is known in advance, so that a resumed run reads the block again and goes on exactly where
an uninterrupted one would be. Each lane runs through its own epochs (lanes of unequal length drift apart).

Reading uses the ``webdataset`` package's tar iterator (``tar_file_expander`` + ``group_by_keys``); the split
and the shuffle are ours, because webdataset's shard split follows the process group and its shuffle buffer
draws from a random state that a killed job loses.

Bad data: a member that does not decode is skipped like a bad file of the index, by the source's deterministic
substitute (counted, named ``shard.tar:key``); a shard that ends early (truncated, damaged header) loses the
samples after the damage, each counted and named the same way; a shard that is missing (or a manifest that does
not parse) stops the run with an error naming it.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from degradations.rng import make_rng

from ..errors import DataError, MissingFileError
from .decode import SkipImage, decode_image
from .paired import PairedSource
from .shard_writer import FORMAT, MANIFEST
from .synthetic import SyntheticSource

log = logging.getLogger(__name__)

DEFAULT_BLOCK = 256  # samples per shuffle block: held as encoded bytes by each worker (~130 MB of 500 kB JPEGs)
_SHARD_TAG, _BLOCK_TAG = 0x5348, 0x424C  # separate the shard and block permutations of one (seed, source, epoch)


@dataclass
class ManifestSource:
    name: str
    kind: str  # "clean" | "paired"
    type_id: int
    files: list[Path]
    counts: np.ndarray  # samples per shard
    bytes: list[int]


def load_manifest(path: str | Path) -> list[ManifestSource]:
    """The sources of a shard manifest (a file, or the folder holding ``manifest.json``). Every shard must exist;
    one whose size differs from the manifest's is named in a warning (its damaged part is skipped when read)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"shard manifest {str(path)!r} does not exist (write one with tools/shard_corpus.py)")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise DataError(f"shard manifest {str(path)!r} has format {manifest.get('format')!r}, expected {FORMAT!r}")
        sources = []
        for s in manifest["sources"]:
            files = [path.parent / shard["file"] for shard in s["shards"]]
            counts = np.asarray([int(shard["samples"]) for shard in s["shards"]], np.int64)
            sources.append(ManifestSource(s["name"], s["kind"], int(s["type_id"]), files, counts,
                                          [int(shard["bytes"]) for shard in s["shards"]]))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"shard manifest {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None
    for source in sources:
        if not source.files or source.counts.min() <= 0:
            raise DataError(f"shard manifest {str(path)!r}: source {source.name!r} lists no samples")
        missing = [str(f) for f in source.files if not f.is_file()]
        if missing:
            raise MissingFileError(f"shard manifest {str(path)!r}: {len(missing)} shard(s) of source {source.name!r} "
                                   f"do not exist: {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        for file, size in zip(source.files, source.bytes):
            actual = file.stat().st_size
            if actual != size:
                log.warning("shard %s has %d bytes, the manifest says %d: its samples past the damage are skipped "
                            "(check all shards with tools/shard_corpus.py --verify)", file, actual, size)
    return sources


class LanePlan:
    """Which sample each lane reads, in which order, in each of its epochs (pure functions of the seed)."""

    def __init__(self, counts: np.ndarray, *, seed: int, source_id: int, lanes: int, block: int = DEFAULT_BLOCK,
                 name: str = "shards"):
        self.counts = np.asarray(counts, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.total = int(self.counts.sum())
        self.seed, self.source_id, self.lanes, self.block = int(seed), int(source_id), int(lanes), int(block)
        if self.lanes < 1 or self.block < 1:
            raise ValueError(f"lanes and block must be >= 1, got {lanes}, {block}")
        if self.total < self.lanes:
            raise DataError(f"shard source {name!r} has {self.total} samples, fewer than the {self.lanes} readers "
                            "(ranks × data-loader workers) that split it; use fewer workers or a larger source")
        self.by_shard = len(self.counts) >= self.lanes  # else the samples are dealt, not the shards
        self._natural: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._orders: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cumulative: dict[int, list[int]] = {}
        self._shard_orders: OrderedDict[int, np.ndarray] = OrderedDict()

    def shard_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._shard_orders:
            self._shard_orders[epoch] = make_rng((self.seed, self.source_id, epoch, _SHARD_TAG)).permutation(len(self.counts))
            while len(self._shard_orders) > 4:
                self._shard_orders.popitem(last=False)
        return self._shard_orders[epoch]

    def natural(self, lane: int, epoch: int) -> np.ndarray:
        """The lane's samples in epoch ``epoch`` in reading order (before the block shuffle)."""
        key = (lane, epoch)
        if key not in self._natural:
            order = self.shard_order(epoch)
            if self.by_shard:
                mine = order[lane::self.lanes]
                items = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.counts[s]) for s in mine])
            else:
                every = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.counts[s]) for s in order])
                items = every[lane::self.lanes]
            self._natural[key] = items
            while len(self._natural) > 2 * self.lanes + 2:
                self._natural.popitem(last=False)
        return self._natural[key]

    def order(self, lane: int, epoch: int) -> np.ndarray:
        """The lane's samples in the order they are served in epoch ``epoch``."""
        key = (lane, epoch)
        if key not in self._orders:
            items = self.natural(lane, epoch)
            served = np.empty_like(items)
            for b, lo in enumerate(range(0, len(items), self.block)):
                hi = min(lo + self.block, len(items))
                served[lo:hi] = items[lo:hi][make_rng((self.seed, self.source_id, epoch, lane, b, _BLOCK_TAG))
                                             .permutation(hi - lo)]
            self._orders[key] = served
            while len(self._orders) > 2 * self.lanes + 2:
                self._orders.popitem(last=False)
        return self._orders[key]

    def lane_length(self, lane: int, epoch: int) -> int:
        if self.by_shard:
            return int(self.counts[self.shard_order(epoch)[lane::self.lanes]].sum())
        return len(range(lane, self.total, self.lanes))

    def locate(self, lane: int, count: int) -> tuple[int, int]:
        """The ``count``-th sample served by ``lane`` (over its epochs) → (epoch, sample id)."""
        cumulative = self._cumulative.setdefault(lane, [0])
        while cumulative[-1] <= count:
            cumulative.append(cumulative[-1] + self.lane_length(lane, len(cumulative) - 1))
        epoch = int(np.searchsorted(cumulative, count, side="right")) - 1
        return epoch, int(self.order(lane, epoch)[count - cumulative[epoch]])

    def block_of(self, item: int, epoch: int) -> tuple[int, int, np.ndarray]:
        """(lane, block number, the block's samples in reading order) of sample ``item`` in epoch ``epoch``."""
        shard = int(np.searchsorted(self.starts, item, side="right")) - 1
        order = self.shard_order(epoch)
        if self.by_shard:
            place = int(np.flatnonzero(order == shard)[0])
            lane = place % self.lanes
            before = self.counts[order[lane:place:self.lanes]].sum()
            index = int(before + item - self.starts[shard])
        else:
            offsets = np.concatenate([[0], np.cumsum(self.counts[order])[:-1]])
            position = int(offsets[int(np.flatnonzero(order == shard)[0])] + item - self.starts[shard])
            lane, index = position % self.lanes, position // self.lanes
        b = index // self.block
        return lane, b, self.natural(lane, epoch)[b * self.block:(b + 1) * self.block]


class ShardReader:
    """Reads samples of one source's shards as raw bytes, front to back, with webdataset's tar iterator.

    ``read(items, lane)``: items in reading order (ascending runs within shards) → {item: {suffix: bytes}} and
    {item: ("shard:item", reason)} for those the shards do not deliver. A lane whose reader stopped in the same shard
    before the first wanted sample goes on from there; otherwise the shard is opened and read up to it (a resume,
    a substitute).
    """

    def __init__(self, files: list[Path], counts: np.ndarray):
        self.files = files
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.counts = np.asarray(counts, np.int64)
        self.opens = 0  # shard files opened by this process
        self._cursors: dict[int, _Cursor] = {}  # lane → where its reading stopped

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cursors"] = {}  # open files stay with the process that opened them
        return state

    def _open(self, shard: int) -> "_Cursor":
        import webdataset as wds

        path = self.files[shard]
        f = open(path, "rb", buffering=1 << 20)  # tarfile reads 10 kB at a time: one system call per MB instead
        self.opens += 1
        cursor = _Cursor(shard, f, None, int(self.starts[shard]), [])

        def handler(exn: Exception) -> bool:
            cursor.errors.append(f"{type(exn).__name__}: {str(exn).split(' @ ')[0]}")
            return False  # the rest of this shard cannot be read

        cursor.samples = wds.tariterators.group_by_keys(
            wds.tariterators.tar_file_expander([{"url": str(path), "stream": f}], handler=handler), handler=handler)
        return cursor

    def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.file.close()
        self._cursors = {}

    def read(self, items: np.ndarray, lane: int) -> tuple[dict[int, dict[str, bytes]], dict[int, tuple[str, str]]]:
        found: dict[int, dict[str, bytes]] = {}
        lost: dict[int, tuple[str, str]] = {}
        items = np.asarray(items, np.int64)
        shards = np.searchsorted(self.starts, items, side="right") - 1
        for run in np.split(np.arange(len(items)), np.flatnonzero(np.diff(shards)) + 1):
            shard, first, last = int(shards[run[0]]), int(items[run[0]]), int(items[run[-1]])
            wanted = set(items[run].tolist())
            cursor = self._cursors.pop(lane, None)
            if cursor is None or cursor.shard != shard or cursor.next_item > first:
                if cursor is not None:
                    cursor.file.close()
                cursor = self._open(shard)  # else the lane goes on reading where it stopped
            for sample in cursor.samples:
                try:
                    item = int(sample["__key__"].rsplit("/", 1)[-1])
                except ValueError:
                    continue  # a member that is not one of ours
                cursor.next_item = item + 1
                if item not in wanted:
                    continue  # before the block, or another lane's (samples dealt, not shards)
                if cursor.errors:  # the sample the damage cut short: its members are incomplete
                    break
                found[item] = {k: v for k, v in sample.items() if not k.startswith("__")}
                if item >= last:
                    break
            for item in items[run].tolist():
                if item not in found:
                    # the loader splits "path: reason" at the last ": ", so the reason holds none
                    why = (cursor.errors[-1] if cursor.errors else "the shard ends before it").replace(": ", " - ")
                    lost[item] = (f"{self.files[shard]}:{item:010d}", f"missing from the shard ({why})")
            if not cursor.errors and cursor.next_item == last + 1 and \
                    cursor.next_item < self.starts[shard] + self.counts[shard]:
                self._cursors[lane] = cursor  # the lane's next block starts at or after here
            else:
                cursor.file.close()
        return found, lost


@dataclass
class _Cursor:
    shard: int
    file: Any
    samples: Any
    next_item: int
    errors: list[str]


class ShardStream:
    """One manifest source as the sources below see it: ``len()`` samples, ``fetch(epoch, item)`` → its members."""

    def __init__(self, source: ManifestSource, *, seed: int, source_id: int, lanes: int, block: int = DEFAULT_BLOCK):
        self.source = source
        self.name = source.name
        self.plan = LanePlan(source.counts, seed=seed, source_id=source_id, lanes=lanes, block=block, name=source.name)
        self.reader = ShardReader(source.files, source.counts)
        self._blocks: OrderedDict[tuple[int, int, int], tuple[dict, dict]] = OrderedDict()
        self._capacity = 2 * lanes + 2

    def __len__(self) -> int:
        return self.plan.total

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_blocks"] = OrderedDict()
        return state

    def shard_of(self, item: int) -> Path:
        return self.source.files[int(np.searchsorted(self.plan.starts, item, side="right")) - 1]

    def fetch(self, epoch: int, item: int) -> dict[str, bytes]:
        """The members of sample ``item`` (``{"json": …, "png": …}``); :class:`SkipImage` when the shard lost it."""
        lane, b, members = self.plan.block_of(item, epoch)
        key = (lane, epoch, b)
        if key not in self._blocks:
            self._blocks[key] = self.reader.read(members, lane)
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(key)
        found, lost = self._blocks[key]
        if item in lost:
            raise SkipImage(*lost[item])
        return found[item]


def _image(stream: ShardStream, sample: dict[str, bytes], item: int, role: str, min_size: int) -> np.ndarray:
    """Decode the member of ``role`` ("" for a clean image, "gt" / "lq" for a pair)."""
    name = f"{stream.shard_of(item)}:{item:010d}"
    if role:
        member = next((k for k in sample if k.startswith(f"{role}.")), None)
    else:
        member = next((k for k in sample if k != "json" and "." not in k), None)
    if member is None:
        raise SkipImage(name, f"no {role or 'image'} member in the sample")
    return decode_image(sample[member], f"{name}.{member}", min_size)


class ShardSyntheticSource(SyntheticSource):
    """Clean images from shards, degraded on the fly (as :class:`SyntheticSource`)."""

    def _read(self, item: int, epoch: int = 0) -> np.ndarray:
        return _image(self.index, self.index.fetch(epoch, item), item, "", self.min_size)


class ShardPairedSource(PairedSource):
    """LQ/GT pairs from shards, one sample holding both (as :class:`PairedSource`)."""

    def check_index(self) -> None:
        if self.index.source.kind != "paired":
            raise ValueError(f"paired source {self.name!r}: its shards hold clean images, not LQ/GT pairs")

    def _read(self, item: int, epoch: int = 0) -> tuple[np.ndarray, ...]:
        sample = self.index.fetch(epoch, item)
        gt = _image(self.index, sample, item, "gt", self.min_size)
        lq = _image(self.index, sample, item, "lq", self.min_size)
        if lq.shape != gt.shape:
            raise SkipImage(f"{self.index.shard_of(item)}:{item:010d}",
                            f"LQ size {lq.shape[1]}x{lq.shape[0]} differs from GT {gt.shape[1]}x{gt.shape[0]}")
        return lq, gt

    def describe(self, item: int) -> str:
        return f"{self.index.shard_of(item).name}:{item:010d}"


__all__ = ["LanePlan", "ManifestSource", "ShardPairedSource", "ShardReader", "ShardStream", "ShardSyntheticSource",
           "load_manifest"]
