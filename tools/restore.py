#!/usr/bin/env python
"""Restore images with a trained restorer: any size, optionally in overlapping tiles to bound memory.

    python tools/restore.py --model runs/nafnet_5d photo.png restored.png
    python tools/restore.py --model nafnet.pth --arch nafnet_5d --tile 512 --overlap 32 inputs/ outputs/

INPUT is an image or a folder; a folder (or an OUTPUT without an image suffix) writes OUTPUT/<same names>.
16-bit PNG/TIFF inputs give 16-bit outputs. Inputs that cannot be read are skipped and named at the end;
the exit status is then 1 (2 for an error that stops everything, such as a missing model).
"""
import argparse
import sys

import torch

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.evaluation.restore import restore_path
from maskdcpt.models.checkpoint import load_restorer


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="restorer checkpoint (file or run folder)")
    parser.add_argument("--arch", help="registered model name, for checkpoints without restorer metadata")
    parser.add_argument("--any-format", action="store_true",
                        help="run weights whose metadata says they are not a restorer (e.g. an encoder export)")
    parser.add_argument("--tile", type=int, help="tile size in pixels (default: whole image at once)")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prior", help="folder of generative restorations (by name), for a prior-conditioned model")
    parser.add_argument("input", help="image file or folder")
    parser.add_argument("output", help="image file or folder")
    args = parse_args(parser, argv)
    model = load_restorer(args.model, device=args.device, arch=args.arch, any_format=args.any_format)
    skipped: list = []
    written = restore_path(model, args.input, args.output, tile=args.tile, overlap=args.overlap, prior=args.prior,
                           device=args.device, skipped=skipped)
    print(f"wrote {len(written)} image(s) to {args.output}")
    if skipped:
        for path, reason in skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"error: {len(skipped)} of {len(skipped) + len(written)} input(s) could not be restored (named above); "
              "exit status 1", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
