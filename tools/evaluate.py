#!/usr/bin/env python
"""Evaluate a restorer: PSNR/SSIM (BasicSR definitions), LPIPS if its weights are on disk, NIQE of the outputs.

    python tools/evaluate.py --model runs/nafnet_5d --data data/test/5d.yaml --out results/nafnet_5d
    python tools/evaluate.py --model nafnet.pth --arch nafnet_5d --data data/Rain100L --uint8 --y-channel

--model: a restorer .safetensors, a run folder holding restorer.safetensors, or a release .pth with --arch.
--data: a folder with LQ/ and GT/, a folder of such folders, or a YAML {tasks: [{name, lq, gt}, ...]}.
"""
import argparse
import sys

import torch

from maskdcpt.evaluation.evaluate import EvalConfig, evaluate
from maskdcpt.launch import add_launcher_args, launch_tool
from maskdcpt.models.checkpoint import load_restorer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="restorer checkpoint (file or run folder)")
    parser.add_argument("--arch", help="registered model name, for checkpoints without restorer metadata")
    parser.add_argument("--data", required=True, help="paired folder or YAML task list")
    parser.add_argument("--out", help="folder for per_image.csv, per_task.csv, results.json")
    parser.add_argument("--crop-border", type=int, default=0, help="pixels dropped at each border (default 0)")
    parser.add_argument("--y-channel", action="store_true", help="PSNR/SSIM on the BT.601 Y channel (default RGB)")
    parser.add_argument("--uint8", action="store_true",
                        help="round outputs to 8 bits first (BasicSR image_range 255); default: float [0, 1]")
    parser.add_argument("--tile", type=int, help="restore in overlapping tiles of this size")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels (default 32)")
    parser.add_argument("--no-niqe", action="store_true", help="skip NIQE")
    parser.add_argument("--lpips-weights", help="LPIPS weights file (default: $MASKDCPT_LPIPS_WEIGHTS)")
    parser.add_argument("--save-images", action="store_true", help="also write the restored images under --out")
    parser.add_argument("--prior", help="folder of generative restorations of the LQ images, for a prior-conditioned model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_launcher_args(parser)
    args = parser.parse_args(argv)
    if launch_tool(__file__, sys.argv[1:] if argv is None else argv, args.out or "runs/evaluate", args) is not None:
        return 0  # submitted: the job runs this same command with --launcher none
    try:
        config = EvalConfig(crop_border=args.crop_border, y_channel=args.y_channel,
                            data_range="uint8" if args.uint8 else "float", tile=args.tile, overlap=args.overlap,
                            compute_niqe=not args.no_niqe, lpips_weights=args.lpips_weights,
                            save_images=args.save_images, prior=args.prior)
        model = load_restorer(args.model, device=args.device, arch=args.arch)
        evaluate(model, args.data, out_dir=args.out, config=config, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
