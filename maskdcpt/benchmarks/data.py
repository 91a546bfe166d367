"""Data-path benchmark: samples/s through a DataLoader per worker core, and corpus-index cost.

    python tools/benchmark.py data --workers 2                    # throughput, 19-type mix at 128²
    python tools/benchmark.py data --workers 1 --sources index,shards  # file index against tar shards: a ratio
    python tools/benchmark.py data --workers 0 --breakdown        # + per-stage / per-type costs in-process
    python tools/benchmark.py data --index-files 2500000 --no-loader   # index time and RAM at UIR-2.5M scale
    python tools/benchmark.py data --shard-files 50000 --no-loader     # time and size to shard, extrapolated
    strace -f -c -e trace=%file python tools/benchmark.py data --workers 1 --sources shards --samples 2000 ...

Photos: ``--photos`` 2K-size images (2048×1536 and 1536×2048, half JPEG q 92, half PNG)
are generated once into ``--work-dir`` from scikit-image's sample photos, upscaled and given
fine texture and grain so that they decode like camera photos rather than flat upscales.
Index tree: ``--index-files`` empty files named like images, 1,000 per folder (deleted
afterwards unless ``--keep-tree``).

Shards: ``--sources shards`` writes the same photos to tar shards (``--shard-size``) in ``--work-dir`` and reads
them through a ``kind: shards`` source; ``--samples N`` measures exactly N samples after the warm-up (for counting
system calls: the difference of two runs with N and 2N samples, divided by N, leaves out the start-up's).

"samples per CPU-second" counts the CPU time of the loader process and of every process below it over the
measuring window (the DataLoader workers are started by a fork server, a child of this process: they are its
grandchildren): on a shared machine it is the load-independent figure for "per worker core".
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

PHOTO_SIZE = (1536, 2048)  # H, W of a "2K" photo


# ---------------------------------------------------------------- generated inputs ----
def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 2K photos (JPEG and PNG alternately); existing ones are kept."""
    from ..data.decode import read_image
    from ..data.default import DEFAULT_PHOTOS, default_photo_dir

    folder.mkdir(parents=True, exist_ok=True)
    sources = [os.path.join(default_photo_dir(), n) for n in DEFAULT_PHOTOS
               if os.path.isfile(os.path.join(default_photo_dir(), n))]
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:04d}.{'jpg' if i % 2 == 0 else 'png'}"
        paths.append(path)
        if path.exists():
            continue
        h, w = PHOTO_SIZE if i % 4 < 2 else PHOTO_SIZE[::-1]
        base = read_image(sources[i % len(sources)]).astype(np.float32)
        base = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        # Fine texture: another photo at native scale, tiled, as high-pass detail; plus grain.
        detail = read_image(sources[(i * 7 + 3) % len(sources)]).astype(np.float32)
        detail = detail - cv2.GaussianBlur(detail, (0, 0), 2.0)
        reps = (-(-h // detail.shape[0]), -(-w // detail.shape[1]), 1)
        detail = np.tile(detail, reps)[:h, :w]
        grain = rng.normal(0.0, 3.0, (h, w, 1)).astype(np.float32)
        image = np.clip(base + 0.6 * detail + grain, 0, 255).astype(np.uint8)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        if not cv2.imwrite(str(path), bgr, params):
            raise RuntimeError(f"could not write {path}")
    return paths


def make_tiny_tree(root: Path, count: int, per_folder: int = 1000) -> None:
    """``count`` empty files named like images; a marker file makes a rerun reuse the tree.

    Empty, not one-byte: an empty file costs an inode but no data block, so 2.5 M of them take
    ~0 bytes of disk instead of ~10 GB of 4 KiB blocks; scanning and stat cost the same.
    """
    marker = root / f".complete_{count}"
    if marker.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for start in range(0, count, per_folder):
        folder = root / f"{start // per_folder:06d}"
        folder.mkdir(exist_ok=True)
        base = str(folder) + "/img_"
        for i in range(start, min(start + per_folder, count)):
            os.close(os.open(f"{base}{i:08d}.png", flags, 0o644))
    marker.write_text("ok")


# ---------------------------------------------------------------- measurements --------
def available_types() -> list[str]:
    import degradations

    return [t.name for t in degradations.all_types()]


def cpu_seconds_of_tree(root: int | None = None) -> float:
    """CPU time (user + system, seconds) of process ``root`` (default: this one) and every live descendant.

    The DataLoader's workers are not this process's children: the fork server that starts them is, so a sum over
    direct children missed them (and counted a few tenths of a second for a loader that had burnt minutes).
    On a shared machine wall-clock rates depend on other people's load; samples per CPU-second is what one
    dedicated worker core would deliver.
    """
    root = os.getpid() if root is None else root
    tick = os.sysconf("SC_CLK_TCK")
    parent_of: dict[int, int] = {}
    cpu_of: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        # fields after "comm)": state, ppid, ..., utime (index 11), stime (12)
        parent_of[int(entry)] = int(fields[1])
        cpu_of[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += time.process_time() if pid == os.getpid() else cpu_of.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


def shard_photos(photo_dir: Path, work: Path, shard_bytes: int) -> Path:
    """The photos as tar shards (written once per shard size); returns the manifest."""
    from ..data.index import CorpusIndex
    from ..data.shard_writer import MANIFEST, write_shards

    out = work / f"shards_{photo_dir.name}_{shard_bytes}"
    files = sorted(p.name for p in photo_dir.iterdir())
    marker = out / ".photos"
    if not (out / MANIFEST).exists() or not marker.exists() or marker.read_text() != "\n".join(files):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        write_shards(CorpusIndex.build([photo_dir]), out, shard_bytes=shard_bytes)
        marker.write_text("\n".join(files))
    return out / MANIFEST


def measure_loader(photo_dir: Path, workers: int, batch: int, crop: int, crops_per_image: int, seconds: float,
                   types: list[str], shards: Path | None = None, samples: int = 0) -> dict:
    """Samples/s of the loader over ``seconds`` (or exactly ``samples`` samples) after a warm-up; from the photo
    folder (a file index) or, with ``shards``, from their tar shards."""
    from degradations import EngineConfig

    from ..data import DataConfig, build_train_loader

    source = {"kind": "shards", "shards": str(shards)} if shards else {"kind": "synthetic", "root": str(photo_dir)}
    cfg = DataConfig(sources=[source], crop_size=crop, crops_per_image=crops_per_image, engine=EngineConfig(types=types))
    loader = build_train_loader(cfg, seed=0, batch_size=batch, num_workers=workers)
    it = iter(loader)
    for _ in range(max(2, 2 * workers)):  # worker start-up and first decodes are not throughput
        next(it)
    done, start, cpu_start = 0, time.perf_counter(), cpu_seconds_of_tree()
    while (done < samples) if samples else (time.perf_counter() - start < seconds):
        done += len(next(it)["lq"])
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds_of_tree() - cpu_start
    del it
    rate = done / elapsed
    return {"samples": done, "seconds": elapsed, "rate": rate, "per_core": rate / max(workers, 1),
            "per_cpu_second": done / max(cpu, 1e-9), "cpu": cpu}


def breakdown(photo_dir: Path, crop: int, types: list[str], repeats: int = 3) -> None:
    """In-process cost of each stage: decode per photo, crop, and each degradation type."""
    from degradations import DegradationEngine, EngineConfig

    from ..data.decode import read_image, to_float

    files = sorted(photo_dir.iterdir())[:6]
    for suffix in (".jpg", ".png"):
        chosen = [f for f in files if f.suffix == suffix]
        start = time.perf_counter()
        for f in chosen:
            image = read_image(str(f))
        print(f"  decode {suffix[1:]:4s} 2K: {1000 * (time.perf_counter() - start) / len(chosen):7.1f} ms/photo")
    gt = to_float(image[:crop, :crop])
    print(f"  per-type degradation of one {crop}² crop (ms):")
    for name in types:
        engine = DegradationEngine(EngineConfig(types=[name]))
        start = time.perf_counter()
        for r in range(repeats):
            engine.sample(gt, (0, r))
        print(f"    {name:28s} {1000 * (time.perf_counter() - start) / repeats:8.1f}")


def ram_probe(index_file: str) -> None:
    """Run in a fresh process: RSS of the loaded data set with every page touched, and pickle size."""
    from ..data.index import CorpusIndex
    from ..data.synthetic import SyntheticSource

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

    before = rss()
    start = time.perf_counter()
    index = CorpusIndex.load(index_file)
    source = SyntheticSource(index, {"types": available_types()[:1] or None}, source_id=0, seed=0)
    load_s = time.perf_counter() - start
    loaded = rss()
    for array in index._arrays.values():  # read one byte per page: the worst case, all resident
        int(np.asarray(array).view(np.uint8)[::4096].sum())
    _ = index.relpath(len(index) - 1), index.path(len(index) // 2)
    full = rss()
    size = len(pickle.dumps(source))
    print(f"  load {load_s * 1000:.1f} ms; RSS +{(loaded - before) / 2**20:.1f} MiB after load, "
          f"+{(full - before) / 2**20:.1f} MiB with every page touched ("
          f"arrays {index.nbytes() / 2**20:.1f} MiB, file-backed and shared between workers)")
    print(f"  pickled data set sent to each worker: {size} bytes")


def measure_index(count: int, work_dir: Path, keep_tree: bool = False) -> None:
    from ..data.index import build_index

    tree = work_dir / f"tiny_tree_{count}"
    start = time.perf_counter()
    make_tiny_tree(tree, count)
    print(f"index tree: {count:,} files in {tree} (generated/checked in {time.perf_counter() - start:.1f} s)")
    out = work_dir / f"tiny_{count}.index"
    start = time.perf_counter()
    index = build_index([tree], out)
    seconds = time.perf_counter() - start
    print(f"  index built in {seconds:.1f} s ({len(index) / seconds:,.0f} files/s), file {out.stat().st_size / 2**20:.1f} MiB")
    subprocess.run([sys.executable, "-m", "maskdcpt.benchmarks.data", "--ram-probe", str(out)], check=True)
    if not keep_tree:  # 2.5 M inodes are a shared resource
        import shutil

        shutil.rmtree(tree)
        out.unlink()


def measure_sharding(count: int, work: Path, file_kb: int, pairs_to_extrapolate: int = 2_500_000,
                     shard_bytes: int = 512 * 10**6, keep_tree: bool = False) -> None:
    """Time and size to shard ``count`` files of ``file_kb`` kB (JPEG-signed, incompressible bytes: the writer
    copies bytes and never decodes), and the same per file extrapolated to UIR-2.5M's pairs (two files each)."""
    from ..data.index import CorpusIndex
    from ..data.shard_writer import write_shards

    tree = work / f"shard_tree_{count}_{file_kb}k"
    marker = tree / ".complete"
    start = time.perf_counter()
    if not marker.exists():
        tree.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        block = rng.integers(0, 256, file_kb * 1000 + 4096, dtype=np.uint8).tobytes()
        for i in range(count):
            folder = tree / f"{i // 1000:04d}"
            folder.mkdir(exist_ok=True)
            offset = (i * 4099) % 4096  # each file's bytes differ
            with open(folder / f"img_{i:07d}.jpg", "wb") as f:
                f.write(b"\xff\xd8\xff\xe0" + block[offset:offset + file_kb * 1000 - 4])
        marker.write_text("ok")
    print(f"shard input: {count:,} files of {file_kb} kB in {tree} (made/checked in {time.perf_counter() - start:.1f} s)")
    out = work / f"shards_of_{count}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    index = CorpusIndex.build([tree])
    scanned = time.perf_counter() - start
    report = write_shards(index, out, shard_bytes=shard_bytes)
    seconds = time.perf_counter() - start
    inputs = sum(int(index.sizes[i]) for i in range(len(index)))
    print(f"  scan {scanned:.1f} s + write {seconds - scanned:.1f} s = {seconds:.1f} s: {count / seconds:,.0f} files/s, "
          f"{inputs / seconds / 1e6:.0f} MB/s in; {len(report.sources[0].shards)} shards, {report.bytes / 1e9:.2f} GB "
          f"({100 * (report.bytes / inputs - 1):.2f} % over the files' {inputs / 1e9:.2f} GB: tar headers, json members)")
    files = 2 * pairs_to_extrapolate  # LQ + GT
    print(f"  extrapolated, one process, files of this size: {pairs_to_extrapolate:,} pairs ({files:,} files) in "
          f"{files / (count / seconds) / 3600:.1f} h, {files / count * report.bytes / 1e12:.2f} TB "
          f"(time and size scale with the bytes: divide by the shard writers run in parallel, one per source)")
    shutil.rmtree(out)
    if not keep_tree:  # count × file_kb of disk
        shutil.rmtree(tree)


# ---------------------------------------------------------------- command line --------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader workers (0 = in-process)")
    parser.add_argument("--photos", type=int, default=24, help="2K photos to generate")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--crops-per-image", type=int, default=8, help="crops per decoded photo (DataConfig default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per worker count")
    parser.add_argument("--types", default="all", help="comma-separated types (default: all registered)")
    parser.add_argument("--breakdown", action="store_true", help="also time decode and each type in-process")
    parser.add_argument("--index-files", type=int, default=0, help="also index a tree of this many tiny files")
    parser.add_argument("--no-loader", action="store_true", help="skip the throughput measurement")
    parser.add_argument("--keep-tree", action="store_true", help="keep the generated index / shard input trees for reruns")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "maskdcpt_bench_data"))
    parser.add_argument("--sources", default="index", help="index, shards, or index,shards (one run, a ratio)")
    parser.add_argument("--shard-size", default="64MB", help="shard size for --sources shards")
    parser.add_argument("--samples", type=int, default=0, help="measure exactly this many samples (not --seconds)")
    parser.add_argument("--shard-files", type=int, default=0, help="also time sharding this many files")
    parser.add_argument("--shard-file-kb", type=int, default=400, help="size of each file for --shard-files")
    parser.add_argument("--ram-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = args.sources.split(",")
    if not set(kinds) <= {"index", "shards"}:
        parser.error(f"--sources: expected index and/or shards, got {args.sources!r}")
    if args.ram_probe:
        ram_probe(args.ram_probe)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    work = Path(args.work_dir)
    types = available_types() if args.types == "all" else args.types.split(",")
    if not args.no_loader:
        photo_dir = work / "photos_2k"
        start = time.perf_counter()
        make_photos(photo_dir, args.photos)
        print(f"photos: {args.photos} 2K JPEG/PNG in {photo_dir} (ready in {time.perf_counter() - start:.1f} s)")
        print(f"types ({len(types)}): {', '.join(types)}; crop {args.crop}², {args.crops_per_image} crops per decode, "
              f"batch {args.batch}, {os.cpu_count()} CPU cores on this machine")
        if args.breakdown:
            breakdown(photo_dir, args.crop, types)
        shards = None
        if "shards" in kinds:
            from ..data.shard_writer import parse_size

            shards = shard_photos(photo_dir, work, parse_size(args.shard_size))
            print(f"shards: {shards.parent} ({args.shard_size} each)")
        print(f"{'source':>7} {'workers':>8} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'per worker (wall)':>18} "
              f"{'CPU s':>7} {'samples per CPU-second':>23}")
        for workers in args.workers:
            rates = {}
            for kind in kinds:
                r = measure_loader(photo_dir, workers, args.batch, args.crop, args.crops_per_image, args.seconds,
                                   types, shards=shards if kind == "shards" else None, samples=args.samples)
                rates[kind] = r["per_cpu_second"]
                print(f"{kind:>7} {workers:>8} {r['samples']:>8} {r['seconds']:>8.1f} {r['rate']:>10.1f} "
                      f"{r['per_core']:>18.1f} {r['cpu']:>7.1f} {r['per_cpu_second']:>23.1f}", flush=True)
            if len(rates) == 2:
                print(f"{'':>7} {workers:>8} shards / index, samples per CPU-second: {rates['shards'] / rates['index']:.3f}")
    if args.shard_files:
        measure_sharding(args.shard_files, work, args.shard_file_kb, keep_tree=args.keep_tree)
    if args.index_files:
        measure_index(args.index_files, work, args.keep_tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
