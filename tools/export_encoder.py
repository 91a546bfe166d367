#!/usr/bin/env python
"""Write the pre-trained backbone of a run as safetensors, for fine-tuning.

    python tools/export_encoder.py runs/pretrain_nafnet_tiny --out encoder.safetensors
"""
import argparse
import sys

from maskdcpt.cli import parse_args, tool_main
from maskdcpt.training.export import export_encoder


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a pre-training run folder (holding config.yaml and checkpoints/)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint file instead of checkpoints/last.ckpt")
    args = parse_args(parser, argv)
    path, n = export_encoder(args.run_dir, args.out, args.checkpoint)
    print(f"wrote {n} backbone tensors to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
