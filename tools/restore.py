#!/usr/bin/env python
"""Restore images with a trained restorer: any size, optionally in overlapping tiles to bound memory.

    python tools/restore.py --model runs/nafnet_5d photo.png restored.png
    python tools/restore.py --model nafnet.pth --arch nafnet_5d --tile 512 --overlap 32 inputs/ outputs/

INPUT is an image or a folder; a folder (or an OUTPUT without an image suffix) writes OUTPUT/<same names>.
16-bit PNG/TIFF inputs give 16-bit outputs.
"""
import argparse
import sys

import torch

from maskdcpt.evaluation.restore import restore_path
from maskdcpt.models.checkpoint import load_restorer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="restorer checkpoint (file or run folder)")
    parser.add_argument("--arch", help="registered model name, for checkpoints without restorer metadata")
    parser.add_argument("--tile", type=int, help="tile size in pixels (default: whole image at once)")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prior", help="folder of generative restorations (by name), for a prior-conditioned model")
    parser.add_argument("input", help="image file or folder")
    parser.add_argument("output", help="image file or folder")
    args = parser.parse_args(argv)
    try:
        model = load_restorer(args.model, device=args.device, arch=args.arch)
        written = restore_path(model, args.input, args.output, tile=args.tile, overlap=args.overlap, prior=args.prior,
                               device=args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
