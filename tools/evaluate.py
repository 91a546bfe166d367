#!/usr/bin/env python
"""Evaluate a restorer: PSNR/SSIM (BasicSR definitions) beside the input's own PSNR/SSIM and the gain, LPIPS if
its weights are on disk, NIQE of the outputs; the standard benchmarks; no-reference scores of real photos.

    python tools/evaluate.py --model runs/nafnet_5d --data data/test/5d.yaml --out results/nafnet_5d
    python tools/evaluate.py --model nafnet.pth --arch nafnet_5d --data data/Rain100L --uint8 --y-channel
    python tools/evaluate.py --model runs/nafnet_5d --benchmark 5d --datasets /data/all_in_one --out results/5d
    python tools/evaluate.py --no-reference restored/ --inputs real_photos/ --out results/real

--model: a restorer .safetensors, a run folder holding restorer.safetensors, or a release .pth with --arch.
--data: a folder with LQ/ and GT/, a folder of such folders, or a YAML {tasks: [{name, lq, gt}, ...]}.
--benchmark 5d|12d --datasets ROOT: the published test sets found under ROOT by their usual layouts, run with
the release's protocol (maskdcpt.evaluation.benchmarks); missing sets are named with the layout expected.
--no-reference OUTPUTS: NIQE and PIQE of restored images without ground truth; with --inputs, the inputs' own
scores and LPIPS(output, input) as well.
Settings (maskdcpt.evaluation.evaluate.EvalConfig): --config YAML, then the flags, then key=value overrides.
"""
import argparse
import sys
from pathlib import Path

import torch

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.config import format_override, load_config
from maskdcpt.errors import ConfigError
from maskdcpt.evaluation.benchmarks import BENCHMARKS, evaluate_benchmark
from maskdcpt.evaluation.evaluate import EvalConfig, evaluate
from maskdcpt.evaluation.no_reference import score_folder
from maskdcpt.evaluation.piqe import CONVENTIONS
from maskdcpt.launch import add_launcher_args, launch_tool
from maskdcpt.models.checkpoint import load_restorer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="restorer checkpoint (file or run folder); needed with --data / --benchmark")
    parser.add_argument("--arch", help="registered model name, for checkpoints without restorer metadata")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="paired folder or YAML task list")
    what.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="a standard benchmark (with --datasets)")
    what.add_argument("--no-reference", metavar="OUTPUTS", help="folder of restored images without ground truth")
    parser.add_argument("--datasets", metavar="ROOT", help="folder holding the benchmark's test sets")
    parser.add_argument("--inputs", help="with --no-reference: the degraded inputs of the outputs (same names)")
    parser.add_argument("--piqe-convention", choices=CONVENTIONS, default="matlab",
                        help="with --no-reference: PIQE as MATLAB defines it (default) or as pyiqa computes it")
    parser.add_argument("--out", help="folder for the CSV and JSON files")
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
    if args.no_reference:
        score_folder(args.no_reference, args.inputs, lpips_weights=config.lpips_weights, out_dir=args.out,
                     crop_border=config.crop_border, piqe_convention=args.piqe_convention, device=args.device)
        return 0
    if args.inputs:
        raise ConfigError("--inputs goes with --no-reference")
    if not args.model:
        raise ConfigError(f"--model is needed with --{'data' if args.data else 'benchmark'}")
    if args.benchmark and not args.datasets:
        raise ConfigError("--benchmark needs --datasets ROOT, the folder holding the test sets")
    model = load_restorer(args.model, device=args.device, arch=args.arch)
    if args.benchmark:
        evaluate_benchmark(model, args.benchmark, args.datasets, out_dir=args.out, config=config, device=args.device)
    else:
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
