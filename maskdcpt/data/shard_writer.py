"""Write a corpus (a saved index, or folders scanned like ``tools/index_corpus.py``) to tar shards.

The format is WebDataset's: a shard is a plain tar whose members are grouped into samples by the name before the
first dot. Each indexed source gets its own series of shards ``OUT/<source>/<source>-000000.tar``, and a sample
``<item>`` (10 digits: its position in the source, the same in every shard) holds

* ``<item>.json``: ``{"path": ..., "lq": ...}``, the file(s) it was made from, relative to the source's root;
* ``<item>.<ext>`` for a clean image, or ``<item>.gt.<ext>`` and ``<item>.lq.<ext>`` for a pair (LQ and GT in
  one sample), with the original file's bytes: nothing is decoded or re-encoded.

Samples are written in a random order (from ``seed``), so that a shard is a random draw of its source rather
than one folder of it: the reader then only shuffles within a small window. A shard is closed before it would
grow past ``shard_bytes`` (a sample larger than that gets a shard of its own).

``OUT/manifest.json`` lists per source its kind, type id and shards (file, samples, bytes, sha256), and what
was skipped, by path and reason: files that cannot be read or are empty, and files whose first bytes are no
image format's; with ``verify`` every image is decoded too (too small, truncated, undecodable, LQ and GT sizes
that differ).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import DataError
from ..io import atomic_write
from .decode import SkipImage, read_bytes, read_image
from .index import CorpusIndex

MANIFEST = "manifest.json"
FORMAT = "maskdcpt-shards/1"
KEY_DIGITS = 10

# The first bytes of every format decode.py reads: a file that starts otherwise is not an image.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
               b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(sig) for sig in _SIGNATURES)


def parse_size(text: str | int) -> int:
    """``"512MB"``, ``"1GiB"``, ``"300k"`` or a number of bytes → bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not match:
        raise DataError(f"shard size {text!r}: expected bytes or a number with k/M/G/T (e.g. 512MB)")
    number, unit, binary = match.groups()
    base = 1024 if binary.startswith("i") else 1000
    value = int(float(number) * base ** " kmgt".index(unit or " "))
    if value <= 0:
        raise DataError(f"shard size {text!r} must be positive")
    return value


@dataclass
class ShardInfo:
    file: str  # relative to the manifest's folder
    samples: int
    bytes: int
    sha256: str


@dataclass
class WrittenSource:
    name: str
    kind: str  # "clean" | "paired"
    type_id: int
    samples: int = 0
    bytes: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class ShardReport:
    out: Path
    sources: list[WrittenSource]
    skipped: list[tuple[str, str]]
    seconds: float

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.sources)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sources)


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o444, 0, 0, 0, "", ""
    return info, io.BytesIO(data)


class _ShardSeries:
    """The shards of one source, opened and closed as they fill."""

    def __init__(self, out: Path, name: str, shard_bytes: int, record: WrittenSource):
        self.folder = out / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.shard_bytes, self.record = name, shard_bytes, record
        self.tar: tarfile.TarFile | None = None
        self.path: Path | None = None
        self.count = 0

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)  # tar header + padded data
        # the archive ends with two zero blocks, padded to tar's 10 kB record
        closed = -(-(self.tar.offset + size + 1024) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE if self.tar else 0
        if self.tar is not None and self.count and closed > self.shard_bytes:
            self.close()
        if self.tar is None:
            self.path = self.folder / f"{self.name}-{len(self.record.shards):06d}.tar"
            self.tar = tarfile.open(self.path.with_suffix(".tar.partial"), "w", format=tarfile.USTAR_FORMAT)
            self.count = 0
        for suffix, data in members:
            self.tar.addfile(*_member(f"{key}.{suffix}", data))
        self.count += 1

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        partial = self.path.with_suffix(".tar.partial")
        digest = hashlib.sha256()
        with open(partial, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        os.replace(partial, self.path)  # a shard that exists is whole
        size = self.path.stat().st_size
        self.record.shards.append(ShardInfo(f"{self.name}/{self.path.name}", self.count, size, digest.hexdigest()))
        self.record.samples += self.count
        self.record.bytes += size
        self.tar = None


def _safe_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("._") or "source"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    taken.add(candidate)
    return candidate


def _read_bytes(path: str) -> bytes:
    data = read_bytes(path)
    if not data:
        raise SkipImage(path, "empty")
    if not looks_like_image(data[:16]):
        raise SkipImage(path, "not an image (unknown file signature)")
    return data


def _verify(path: str, min_size: int) -> tuple[int, ...]:
    return read_image(path, min_size).shape


def write_shards(index: CorpusIndex, out: str | Path, *, shard_bytes: int = 512 * 10**6, seed: int = 0,
                 verify: bool = False, min_size: int = 1, progress: Callable[[str], None] | None = None) -> ShardReport:
    """Write every source of ``index`` to shards under ``out`` (which must not hold a manifest yet)."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise DataError(f"{out / MANIFEST} exists: write the shards to a new folder (or delete that one)")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[str, str]] = [tuple(s) for s in index.skipped]  # what the scan left out
    written: list[WrittenSource] = []
    taken: set[str] = set()
    for sid, info in enumerate(index.sources):
        view = index.source_view(sid)
        name = _safe_name(info.name, taken)
        record = WrittenSource(name, info.kind, int(info.type_id))
        series = _ShardSeries(out, name, shard_bytes, record)
        order = np.random.default_rng([seed, sid]).permutation(len(view)) if len(view) else []
        done = 0
        for row in order:
            row = int(row)
            gt_path = view.path(row)
            paired = info.kind == "paired"
            try:
                gt = _read_bytes(gt_path)
                lq = _read_bytes(view.lq_path(row)) if paired else b""
                if verify:
                    gt_shape = _verify(gt_path, min_size)
                    if paired and _verify(view.lq_path(row), min_size) != gt_shape:
                        raise SkipImage(view.lq_path(row), "LQ size differs from GT")
            except SkipImage as skip:
                skipped.append((skip.path, skip.reason))
                continue
            key = f"{done:0{KEY_DIGITS}d}"  # the sample's position in its source's shards, counted from 0
            meta = {"path": view.relpath(row)}
            ext = os.path.splitext(gt_path)[1].lower().lstrip(".") or "img"
            if paired:
                lq_rel = view.lq_path(row)
                meta["lq"] = os.path.relpath(lq_rel, info.root)
                lq_ext = os.path.splitext(lq_rel)[1].lower().lstrip(".") or "img"
                members = [("json", json.dumps(meta).encode()), (f"gt.{ext}", gt), (f"lq.{lq_ext}", lq)]
            else:
                members = [("json", json.dumps(meta).encode()), (ext, gt)]
            series.add(key, members)
            done += 1
            if progress is not None and done % 10000 == 0:
                progress(f"{name}: {done}/{len(view)} samples")
        series.close()
        if record.samples == 0:
            raise DataError(f"source {info.name!r}: every file was skipped ({len(view)}); nothing to write")
        written.append(record)
    seconds = time.perf_counter() - start
    manifest = {
        "format": FORMAT, "seed": seed, "shard_bytes": shard_bytes, "verified": verify,
        "sources": [
            {"name": s.name, "kind": s.kind, "type_id": s.type_id, "samples": s.samples, "bytes": s.bytes,
             "shards": [{"file": sh.file, "samples": sh.samples, "bytes": sh.bytes, "sha256": sh.sha256}
                        for sh in s.shards]}
            for s in written
        ],
        "skipped_count": len(skipped),
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    text = json.dumps(manifest, indent=1)
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(text))  # the shards count only once it exists
    return ShardReport(out, written, skipped, seconds)


def index_for(roots: Sequence[str], index_file: str | None, type_ids=None, metas=None, names=None) -> CorpusIndex:
    """The corpus to shard: a saved index, or ``roots`` scanned now."""
    if index_file:
        return CorpusIndex.load(index_file)
    return CorpusIndex.build(roots, type_ids, metas, names)


def verify_shards(manifest_path: str | Path) -> list[tuple[str, str]]:
    """Check every shard of a manifest against its size and sha256: [(file, problem)], empty when all are whole."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    problems = []
    for source in manifest["sources"]:
        for shard in source["shards"]:
            path = manifest_path.parent / shard["file"]
            if not path.is_file():
                problems.append((str(path), "missing"))
                continue
            size = path.stat().st_size
            if size != shard["bytes"]:
                problems.append((str(path), f"{size} bytes, the manifest says {shard['bytes']}"))
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != shard["sha256"]:
                problems.append((str(path), "sha256 differs from the manifest's (the shard was changed or damaged)"))
    return problems

