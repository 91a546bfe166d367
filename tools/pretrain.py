#!/usr/bin/env python
"""MaskDCPT pre-training.

    python tools/pretrain.py                                   # tiny NAFNet, embedded photos, CPU
    python tools/pretrain.py --config configs/pretrain/nafnet_uir.yaml train.max_steps=20
    python tools/pretrain.py model.name=restormer_tiny loss.w_con=0 --resume
    python tools/pretrain.py --launcher slurm --nodes 1 --gpus-per-node 4 --partition gpu --timeout-min 4320 \
        --config configs/pretrain/nafnet_uir.yaml
"""
import argparse
import sys

from maskdcpt.cli import add_resume_args, parse_args, tool_main
from maskdcpt.launch import add_launcher_args, launch
from maskdcpt.training.pretrain import load_pretrain_config, run_pretraining


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults: the tiny CPU run)")
    add_resume_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=20")
    add_launcher_args(parser)
    args = parse_args(parser, argv)
    cfg = load_pretrain_config(args.config, args.overrides)
    if launch("pretrain", args.config, args.overrides, args) is not None:
        return 0  # submitted: the job runs the same training
    run_pretraining(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
