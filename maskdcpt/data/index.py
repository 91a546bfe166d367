"""The columnar corpus index: millions of image paths in a few NumPy arrays, memory-mapped.

At UIR-2.5M scale a Python list of 2.5 M path strings costs ~250 MB per process and is pickled
to every DataLoader worker. Here the paths live in one byte blob (UTF-8, each path ended by a
NUL byte) plus an int64 offset array; sizes, source ids and type ids are columns beside them.
A saved index is memory-mapped, so workers share its pages, and pickling an index sends only
its file name.

File layout (``*.index``): 8-byte magic ``MDCIDX01``, an 8-byte little-endian header length,
a JSON header (sources and the dtype/shape/offset of each array), then the raw arrays, each
aligned to 64 bytes.

A *source* is one scanned root: a tree of clean images (``kind="clean"``) or a pair tree with
an LQ and a GT folder (``kind="paired"``). Entries are grouped by source and sorted by path,
so a source is a contiguous row range and ``index.source_view(s)`` is a zero-copy slice.

What a scan could not follow (symlink loops, dangling links, unreadable folders) is left out, named
and counted: ``index.skipped`` lists (path, reason), and the header keeps the list.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError, MissingFileError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}
)
# Folder names accepted for the two halves of a pair tree (matched case-insensitively).
LQ_DIR_NAMES = ("lq", "input", "inputs", "degraded", "low")
GT_DIR_NAMES = ("gt", "target", "targets", "groundtruth", "clean", "high")
MAGIC = b"MDCIDX01"
_ALIGN = 64
_COLUMNS = ("path_blob", "path_offsets", "lq_blob", "lq_offsets", "sizes", "source", "type_id")


@dataclass
class SourceInfo:
    """One scanned root. ``start:end`` is its row range; ``type_id`` is -1 for clean images."""

    name: str
    root: str
    kind: str  # "clean" | "paired"
    type_id: int
    start: int
    end: int
    lq_dir: str = ""
    gt_dir: str = ""

    def __len__(self) -> int:
        return self.end - self.start


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _link_problem(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "dangling symlink (its target does not exist)"
    if err.errno == errno.ELOOP:
        return "symlink loop (the link resolves to itself)"
    return f"unreadable symlink ({err.strerror})"


def scan_images(root: str | Path, skipped: list[tuple[str, str]] | None = None) -> tuple[list[str], list[int]]:
    """Relative paths (``/``-separated, sorted) and byte sizes of every image under ``root``.

    Symlinks are followed, each folder once: a link back into a folder being scanned (a loop) or to a
    folder already scanned (a second path to it) is not entered again. Those, links that do not resolve
    (dangling, loops of file links) and folders that cannot be read are appended to ``skipped`` as
    (path, reason) and the scan goes on.
    """
    root = str(root)
    if not os.path.isdir(root):
        raise DataError(f"corpus root {root!r} is not a directory")
    skip = skipped.append if skipped is not None else (lambda item: None)
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino): root}  # folder identity → the path it was first scanned at
    paths: list[str] = []
    sizes: list[int] = []
    stack = [("", root)]
    while stack:  # iterative scandir: no os.walk list building, no relpath per file
        prefix, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)  # which of two paths to a folder is kept: the same each time
        except OSError as err:
            skip((folder, f"unreadable folder ({err.strerror})"))
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError as err:
                skip((entry.path, _link_problem(err) if entry.is_symlink() else f"unreadable ({err.strerror})"))
                continue
            if stat.S_ISDIR(info.st_mode):
                first = seen.setdefault((info.st_dev, info.st_ino), entry.path)
                if first != entry.path:
                    inside = entry.path.startswith(first.rstrip(os.sep) + os.sep)
                    skip((entry.path, f"symlink loop back to {first}" if inside
                          else f"second path to {first}, which is indexed once"))
                    continue
                stack.append((prefix + entry.name + "/", entry.path))
            elif _is_image(entry.name):
                paths.append(prefix + entry.name)
                sizes.append(info.st_size)
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return [paths[i] for i in order], [sizes[i] for i in order]


def find_pair_dirs(root: str | Path) -> tuple[str, str] | None:
    """(lq_dir, gt_dir) folder names if ``root`` is a pair tree, else None."""
    try:
        names = {n.lower(): n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))}
    except OSError:
        return None
    lq = next((names[n] for n in LQ_DIR_NAMES if n in names), None)
    gt = next((names[n] for n in GT_DIR_NAMES if n in names), None)
    return (lq, gt) if lq and gt else None


def _stem(path: str) -> str:
    return os.path.splitext(path)[0]


def match_pairs(root: str, lq_dir: str, gt_dir: str, meta: str | None = None,
                skipped: list[tuple[str, str]] | None = None) -> tuple[list[str], list[str], list[int]]:
    """Pair LQ and GT files: by a meta file, or by equal relative path up to the extension.

    Meta file: one pair per line, either ``name`` (the same relative path in both folders) or
    ``lq_path gt_path`` (whitespace- or comma-separated, relative to the LQ / GT folder);
    ``#`` starts a comment. Returns (lq paths, gt paths, gt sizes), relative to ``root``; what a scan skips is
    appended to ``skipped`` (see :func:`scan_images`).
    """
    lq_root, gt_root = os.path.join(root, lq_dir), os.path.join(root, gt_dir)
    if meta:
        lq_rel, gt_rel = [], []
        with open(meta) as f:
            for number, line in enumerate(f, 1):
                line = line.split("#", 1)[0].replace(",", " ").split()
                if not line:
                    continue
                if len(line) > 2:
                    raise DataError(f"meta file {meta!r} line {number}: expected 'name' or 'lq gt', got {line}")
                lq_rel.append(line[0])
                gt_rel.append(line[-1])
        sizes = []
        for lq, gt in zip(lq_rel, gt_rel):
            for folder, rel in ((lq_root, lq), (gt_root, gt)):
                if not os.path.isfile(os.path.join(folder, rel)):
                    raise DataError(f"meta file {meta!r}: {os.path.join(folder, rel)!r} does not exist")
            sizes.append(os.path.getsize(os.path.join(gt_root, gt)))
    else:
        lq_all, _ = scan_images(lq_root, skipped)
        gt_all, gt_sizes = scan_images(gt_root, skipped)
        lq_by_stem = {_stem(p): p for p in lq_all}
        missing = [p for p in gt_all if _stem(p) not in lq_by_stem]
        extra = sorted(set(lq_by_stem) - {_stem(p) for p in gt_all})
        if missing or extra:
            raise DataError(
                f"pair tree {root!r}: {len(missing)} GT file(s) without LQ (e.g. {missing[:3]}) and "
                f"{len(extra)} LQ file(s) without GT (e.g. {extra[:3]}); names must match up to the extension "
                "or a meta file must list the pairs"
            )
        gt_rel, sizes = gt_all, gt_sizes
        lq_rel = [lq_by_stem[_stem(p)] for p in gt_all]
    prefix_lq, prefix_gt = lq_dir + "/", gt_dir + "/"
    return [prefix_lq + p for p in lq_rel], [prefix_gt + p for p in gt_rel], sizes


def _pack(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Paths → (uint8 blob with NUL terminators, int64 offsets of length n + 1)."""
    if not paths:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    blob = np.frombuffer(("\0".join(paths) + "\0").encode("utf-8"), dtype=np.uint8)
    ends = np.flatnonzero(blob == 0)
    if len(ends) != len(paths):
        raise ValueError("a path contains a NUL byte")
    offsets = np.empty(len(paths) + 1, np.int64)
    offsets[0] = 0
    offsets[1:] = ends + 1
    return blob, offsets


class CorpusIndex:
    """Read-only columnar index of one or more sources. ``len(index)`` = number of entries.

    Columns (all NumPy, memory-mapped when loaded from a file): ``sizes`` (bytes of the GT /
    clean file), ``source`` (int16 source id), ``type_id`` (int16, -1 for clean images).
    ``path(i)`` / ``lq_path(i)`` give absolute paths; ``relpath(i)`` the stored one. ``skipped``: (path, reason)
    of what the scan left out (symlink loops, dangling links, unreadable folders).
    """

    def __init__(self, sources: list[SourceInfo], arrays: dict[str, np.ndarray], file: str | None = None,
                 rows: tuple[int, int] | None = None, skipped: Sequence[tuple[str, str]] = ()):
        self.sources = sources
        self.file = file
        self.skipped = [tuple(item) for item in skipped]
        self._arrays = arrays
        self._rows = rows or (0, len(arrays["sizes"]))
        lo, hi = self._rows
        self.sizes = arrays["sizes"][lo:hi]
        self.source = arrays["source"][lo:hi]
        self.type_id = arrays["type_id"][lo:hi]
        self._path_blob, self._path_offsets = arrays["path_blob"], arrays["path_offsets"]
        self._lq_blob, self._lq_offsets = arrays["lq_blob"], arrays["lq_offsets"]
        self._roots = [s.root for s in sources]

    # ---- construction -------------------------------------------------------------
    @classmethod
    def build(cls, roots: Sequence[str | Path], type_ids: Sequence[int] | None = None,
              metas: Sequence[str | None] | None = None, names: Sequence[str] | None = None) -> "CorpusIndex":
        """Scan ``roots`` (each a clean tree or a pair tree) into an in-memory index.

        type_ids: per root, the degradation type id of a pair tree (-1 = unknown / clean).
        metas:    per root, an optional pair meta file (see :func:`match_pairs`).
        """
        n = len(roots)
        type_ids = list(type_ids) if type_ids is not None else [-1] * n
        metas = list(metas) if metas is not None else [None] * n
        names = list(names) if names is not None else [Path(r).name or str(r) for r in roots]
        if not (len(type_ids) == len(metas) == len(names) == n):
            raise ValueError(f"build: {n} roots but {len(type_ids)} type ids / {len(metas)} meta files / {len(names)} names")
        sources: list[SourceInfo] = []
        skipped: list[tuple[str, str]] = []
        gt_paths: list[str] = []
        lq_paths: list[str] = []
        sizes: list[int] = []
        source_col, type_col = [], []
        any_paired = False
        for s, (root, tid, meta, name) in enumerate(zip(roots, type_ids, metas, names)):
            root = os.path.abspath(str(root))
            if not os.path.isdir(root):
                raise DataError(f"corpus root {root!r} is not a directory")
            pair_dirs = find_pair_dirs(root)
            if pair_dirs is None and meta:
                raise DataError(f"meta file {meta!r} given for {root!r}, which has no LQ/GT folders")
            start = len(gt_paths)
            if pair_dirs is not None:
                any_paired = True
                lq, gt, sz = match_pairs(root, *pair_dirs, meta=meta, skipped=skipped)
                info = SourceInfo(name, root, "paired", int(tid), start, start + len(gt), *pair_dirs)
            else:
                gt, sz = scan_images(root, skipped)
                lq = [""] * len(gt)
                info = SourceInfo(name, root, "clean", int(tid), start, start + len(gt))
            if not gt:
                raise DataError(f"corpus root {root!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            gt_paths += gt
            lq_paths += lq
            sizes += sz
            source_col.append(np.full(len(gt), s, np.int16))
            type_col.append(np.full(len(gt), tid, np.int16))
            sources.append(info)
        path_blob, path_offsets = _pack(gt_paths)
        lq_blob, lq_offsets = _pack(lq_paths) if any_paired else _pack([])
        arrays = {
            "path_blob": path_blob, "path_offsets": path_offsets,
            "lq_blob": lq_blob, "lq_offsets": lq_offsets,
            "sizes": np.asarray(sizes, np.int64),
            "source": np.concatenate(source_col), "type_id": np.concatenate(type_col),
        }
        return cls(sources, arrays, skipped=skipped)

    @classmethod
    def from_files(cls, root: str | Path, relpaths: Sequence[str], name: str = "") -> "CorpusIndex":
        """A one-source clean index of the listed files under ``root`` (missing files raise)."""
        root = os.path.abspath(str(root))
        relpaths = sorted(str(p).replace(os.sep, "/") for p in relpaths)
        if not relpaths:
            raise DataError(f"from_files: no files given under {root!r}")
        sizes = []
        for rel in relpaths:
            full = os.path.join(root, rel)
            if not os.path.isfile(full):
                raise DataError(f"from_files: {full!r} does not exist")
            sizes.append(os.path.getsize(full))
        blob, offsets = _pack(relpaths)
        lq_blob, lq_offsets = _pack([])
        arrays = {
            "path_blob": blob, "path_offsets": offsets, "lq_blob": lq_blob, "lq_offsets": lq_offsets,
            "sizes": np.asarray(sizes, np.int64), "source": np.zeros(len(relpaths), np.int16),
            "type_id": np.full(len(relpaths), -1, np.int16),
        }
        return cls([SourceInfo(name or Path(root).name, root, "clean", -1, 0, len(relpaths))], arrays)

    def save(self, file: str | Path) -> None:
        """Write the index (whole, not a view) to ``file`` in the format described above."""
        if self._rows != (0, len(self._arrays["sizes"])):
            raise ValueError("save: cannot save a source view; save the full index")
        header = {"sources": [asdict(s) for s in self.sources], "arrays": {}, "skipped": [list(s) for s in self.skipped]}
        offset = 0
        for name in _COLUMNS:
            a = np.ascontiguousarray(self._arrays[name])
            header["arrays"][name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
            offset += -(-a.nbytes // _ALIGN) * _ALIGN
        head = json.dumps(header).encode()
        data_start = -(-(16 + len(head)) // _ALIGN) * _ALIGN
        tmp = f"{file}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(MAGIC + len(head).to_bytes(8, "little") + head)
            f.write(b"\0" * (data_start - f.tell()))
            for name in _COLUMNS:
                a = np.ascontiguousarray(self._arrays[name])
                f.seek(data_start + header["arrays"][name]["offset"])
                f.write(a.tobytes())
        os.replace(tmp, file)  # atomic: a reader never sees a half-written index

    @classmethod
    def load(cls, file: str | Path) -> "CorpusIndex":
        """Memory-map an index file; nothing is read into RAM until it is touched."""
        file = os.path.abspath(str(file))
        if not os.path.isfile(file):
            raise MissingFileError(f"corpus index {file!r} does not exist; build it with tools/index_corpus.py")
        with open(file, "rb") as f:
            magic = f.read(8)
            if magic != MAGIC:
                raise DataError(f"{file!r} is not a corpus index (magic {magic!r})")
            head_len = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(head_len))
            except ValueError:
                raise DataError(f"corpus index {file!r} is damaged (unreadable header); build it again") from None
        data_start = -(-(16 + head_len) // _ALIGN) * _ALIGN
        arrays = {}
        for name in _COLUMNS:
            spec = header["arrays"][name]
            shape = tuple(spec["shape"])
            if int(np.prod(shape)) == 0:
                arrays[name] = np.zeros(shape, np.dtype(spec["dtype"]))
            else:
                arrays[name] = np.memmap(file, dtype=np.dtype(spec["dtype"]), mode="r",
                                         offset=data_start + spec["offset"], shape=shape)
        return cls([SourceInfo(**s) for s in header["sources"]], arrays, file=file, skipped=header.get("skipped", ()))

    def __reduce__(self):
        # A file-backed index travels to DataLoader workers as its file name and row range;
        # each worker memory-maps the same pages. In-memory indices pickle their arrays
        # (a few compact buffers, still no per-file Python objects).
        if self.file is not None:
            return (_reload, (self.file, self._rows))
        return (CorpusIndex, (self.sources, self._arrays, None, self._rows))

    # ---- access ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self._rows[1] - self._rows[0]

    def _get(self, blob: np.ndarray, offsets: np.ndarray, i: int) -> str:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index entry {i} out of range for {n} entries")
        row = self._rows[0] + (i % n)
        return bytes(blob[offsets[row]:offsets[row + 1] - 1]).decode("utf-8")

    def relpath(self, i: int) -> str:
        return self._get(self._path_blob, self._path_offsets, i)

    def path(self, i: int) -> str:
        """Absolute path of the clean / GT file of entry ``i``."""
        return os.path.join(self._roots[int(self.source[i])], self.relpath(i))

    def lq_path(self, i: int) -> str:
        """Absolute path of the LQ file of entry ``i`` (paired sources only)."""
        info = self.sources[int(self.source[i])]
        if info.kind != "paired":
            raise ValueError(f"entry {i} of source {info.name!r} is a clean image and has no LQ file")
        return os.path.join(info.root, self._get(self._lq_blob, self._lq_offsets, i))

    def source_view(self, source_id: int) -> "CorpusIndex":
        """The rows of one source, sharing the same (memory-mapped) arrays."""
        if not 0 <= source_id < len(self.sources):
            raise ValueError(f"source id {source_id} out of range; index has {len(self.sources)} sources")
        info = self.sources[source_id]
        lo = self._rows[0]
        if not (lo <= info.start and info.end <= self._rows[1]):
            raise ValueError(f"source {info.name!r} lies outside this view")
        return CorpusIndex(self.sources, self._arrays, self.file, (info.start, info.end))

    def nbytes(self) -> int:
        """Bytes of the arrays behind this index (mapped, not necessarily resident)."""
        return int(sum(a.nbytes for a in self._arrays.values()))

    def iter_relpaths(self) -> Iterable[str]:
        for i in range(len(self)):
            yield self.relpath(i)


def _reload(file: str, rows: tuple[int, int]) -> CorpusIndex:
    full = CorpusIndex.load(file)
    return CorpusIndex(full.sources, full._arrays, full.file, tuple(rows))


def build_index(roots: Sequence[str | Path], out: str | Path, type_ids: Sequence[int] | None = None,
                metas: Sequence[str | None] | None = None, names: Sequence[str] | None = None) -> CorpusIndex:
    """Scan ``roots`` and save the index to ``out``; returns the memory-mapped saved index."""
    CorpusIndex.build(roots, type_ids, metas, names).save(out)
    return CorpusIndex.load(out)
