#!/usr/bin/env python
"""Scan image trees into a compact, memory-mappable corpus index.

    python tools/index_corpus.py /data/LSDIR --out lsdir.index                      # clean images
    python tools/index_corpus.py /data/Rain13K /data/SIDD --type rain_streaks camera_noise --out real.index
    python tools/index_corpus.py /data/GoPro --type motion_blur --meta gopro_pairs.txt --out gopro.index

A root holding LQ and GT folders (lq/gt, input/target, …) is indexed as pairs, matched by
name up to the extension or by a meta file; any other root as clean images.
"""
import argparse
import sys
import time

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.data.index import build_index
from maskdcpt.data.mixture import per_root_options
from maskdcpt.errors import ConfigError


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="image trees (one source each)")
    parser.add_argument("--out", required=True, help="index file to write")
    parser.add_argument("--type", nargs="+", default=None,
                        help="per root: degradation type name or id of a pair tree (- for none)")
    parser.add_argument("--meta", nargs="+", default=None, help="per root: pair meta file (- for none)")
    parser.add_argument("--names", nargs="+", default=None, help="per root: source name (default: folder name)")
    args = parse_args(parser, argv)
    try:
        types, metas = per_root_options(len(args.roots), args.type, args.meta, args.names)
    except ConfigError as err:
        parser.error(str(err))
    start = time.perf_counter()
    index = build_index(args.roots, args.out, type_ids=types, metas=metas, names=args.names)
    seconds = time.perf_counter() - start
    for path, reason in index.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for info in index.sources:
        print(f"  {info.name}: {len(info)} {'pairs' if info.kind == 'paired' else 'images'}, type id {info.type_id}")
    skipped = f"; skipped {len(index.skipped)} path(s), named above" if index.skipped else ""
    print(f"indexed {len(index)} entries in {seconds:.1f} s → {args.out} ({index.nbytes() / 2**20:.1f} MiB){skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
