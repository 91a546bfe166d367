#!/usr/bin/env python
"""Evaluate a restorer: PSNR/SSIM (BasicSR definitions), LPIPS if its weights are on disk, NIQE of the outputs.

    python tools/evaluate.py --model runs/nafnet_5d --data data/test/5d.yaml --out results/nafnet_5d
    python tools/evaluate.py --model nafnet.pth --arch nafnet_5d --data data/Rain100L --uint8 --y-channel
    python tools/evaluate.py --model runs/nafnet_5d --data data/test/5d.yaml --config eval.yaml tile=512

--model: a restorer .safetensors, a run folder holding restorer.safetensors, or a release .pth with --arch.
--data: a folder with LQ/ and GT/, a folder of such folders, or a YAML {tasks: [{name, lq, gt}, ...]}.
Settings (maskdcpt.evaluation.evaluate.EvalConfig): --config YAML, then the flags, then key=value overrides.
"""
import argparse
import sys
from pathlib import Path

import torch

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.config import format_override, load_config
from maskdcpt.evaluation.evaluate import EvalConfig, evaluate
from maskdcpt.launch import add_launcher_args, launch_tool
from maskdcpt.models.checkpoint import load_restorer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="restorer checkpoint (file or run folder)")
    parser.add_argument("--arch", help="registered model name, for checkpoints without restorer metadata")
    parser.add_argument("--data", required=True, help="paired folder or YAML task list")
    parser.add_argument("--out", help="folder for per_image.csv, per_task.csv, results.json")
    parser.add_argument("--config", help="YAML of EvalConfig settings (default: the defaults below)")
    parser.add_argument("--crop-border", type=int, help="pixels dropped at each border (default 0)")
    parser.add_argument("--y-channel", action="store_true", help="PSNR/SSIM on the BT.601 Y channel (default RGB)")
    parser.add_argument("--uint8", action="store_true",
                        help="round outputs to 8 bits first (BasicSR image_range 255); default: float [0, 1]")
    parser.add_argument("--tile", type=int, help="restore in overlapping tiles of this size")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default 32)")
    parser.add_argument("--no-niqe", action="store_true", help="skip NIQE")
    parser.add_argument("--lpips-weights", help="LPIPS weights file (default: $MASKDCPT_LPIPS_WEIGHTS)")
    parser.add_argument("--save-images", action="store_true", help="also write the restored images under --out")
    parser.add_argument("--prior", help="folder of generative restorations of the LQ images, for a prior-conditioned model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="EvalConfig overrides, e.g. crop_border=4")
    add_launcher_args(parser)
    return parser


@tool_main
def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    if launch_tool(__file__, sys.argv[1:] if argv is None else argv, args.out or "runs/evaluate", args) is not None:
        return 0  # submitted: the job runs this same command with --launcher none
    config = eval_config(args)
    if args.out:  # a folder that cannot be written fails now, not after the whole evaluation
        Path(args.out).mkdir(parents=True, exist_ok=True)
    model = load_restorer(args.model, device=args.device, arch=args.arch)
    evaluate(model, args.data, out_dir=args.out, config=config, device=args.device)
    return 0


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """``--config``, then the flags given (flags left out change nothing), then ``key=value`` overrides."""
    flags = {"crop_border": args.crop_border, "y_channel": args.y_channel or None,
             "data_range": "uint8" if args.uint8 else None, "tile": args.tile, "overlap": args.overlap,
             "compute_niqe": False if args.no_niqe else None, "lpips_weights": args.lpips_weights,
             "save_images": args.save_images or None, "prior": args.prior}
    given = [format_override(key, value) for key, value in flags.items() if value is not None]
    return load_config(EvalConfig, args.config, [*given, *args.overrides])


if __name__ == "__main__":
    sys.exit(main())
