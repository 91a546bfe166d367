#!/usr/bin/env python
"""Write a corpus to tar shards (WebDataset format) for a cluster file system, or check shards against their manifest.

    python tools/shard_corpus.py --index uir.index --out /lustre/uir_shards --shard-size 1GB
    python tools/shard_corpus.py /data/LSDIR /data/Rain13K --type - rain_streaks --out shards/
    python tools/shard_corpus.py --verify shards/manifest.json

Roots are scanned as tools/index_corpus.py scans them (a root with LQ and GT folders as pairs). The files' own
bytes go into the shards, never re-encoded; each source gets its own shards, and OUT/manifest.json lists them
(samples, bytes, sha256) with what was skipped and why. Train on them with a data source
``{kind: shards, shards: OUT/manifest.json}``.
"""
import argparse
import sys

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.data.mixture import per_root_options
from maskdcpt.data.shard_writer import index_for, parse_size, verify_shards, write_shards
from maskdcpt.errors import ConfigError


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", help="image trees (one source each), unless --index is given")
    parser.add_argument("--index", default=None, help="a saved corpus index (tools/index_corpus.py) to shard")
    parser.add_argument("--out", default=None, help="folder for the shards and manifest.json (new or empty)")
    parser.add_argument("--shard-size", default="512MB", help="largest shard (bytes, or e.g. 256MB, 1GiB)")
    parser.add_argument("--seed", type=int, default=0, help="the order the samples are written in")
    parser.add_argument("--decode-check", action="store_true",
                        help="decode every image while writing (skips truncated, undecodable, too small and mismatched "
                             "pairs at the cost of a decode per file)")
    parser.add_argument("--min-size", type=int, default=32, help="with --decode-check: the smallest side kept")
    parser.add_argument("--type", nargs="+", default=None, help="per root: degradation type of a pair tree (- for none)")
    parser.add_argument("--meta", nargs="+", default=None, help="per root: pair meta file (- for none)")
    parser.add_argument("--names", nargs="+", default=None, help="per root: source name (default: folder name)")
    parser.add_argument("--verify", metavar="MANIFEST", default=None,
                        help="check every shard of MANIFEST against its size and sha256, and write nothing")
    args = parse_args(parser, argv)
    if args.verify:
        problems = verify_shards(args.verify)
        for path, problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        print(f"{args.verify}: {'all shards whole' if not problems else f'{len(problems)} shard(s) damaged, named above'}")
        return 1 if problems else 0
    if not args.out:
        parser.error("--out is required (or --verify MANIFEST)")
    if bool(args.roots) == bool(args.index):
        parser.error("give image roots or --index FILE, not both")
    try:
        types, metas = per_root_options(len(args.roots), args.type, args.meta, args.names)
    except ConfigError as err:
        parser.error(str(err))
    index = index_for(args.roots, args.index, types, metas, args.names)
    report = write_shards(index, args.out, shard_bytes=parse_size(args.shard_size), seed=args.seed,
                          verify=args.decode_check, min_size=args.min_size,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for source in report.sources:
        unit = "pairs" if source.kind == "paired" else "images"
        print(f"  {source.name}: {source.samples} {unit} in {len(source.shards)} shard(s), {source.bytes / 1e6:.1f} MB")
    skipped = f"; skipped {len(report.skipped)} file(s), named above" if report.skipped else ""
    print(f"wrote {report.samples} samples ({report.bytes / 1e6:.1f} MB) in {report.seconds:.1f} s → "
          f"{report.out / 'manifest.json'}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
