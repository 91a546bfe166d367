#!/usr/bin/env python
"""Fine-tune a (pre-trained) restorer for all-in-one restoration.

    python tools/finetune.py --pretrained runs/pretrain_nafnet_tiny/encoder.safetensors
    python tools/finetune.py --pretrained encoder.safetensors --config configs/finetune/nafnet_5d.yaml
    python tools/finetune.py --pretrained none --config configs/finetune/restormer_5d.yaml train.max_steps=30
"""
import argparse
import sys

from maskdcpt.cli import add_resume_args, parse_args, tool_main
from maskdcpt.launch import add_launcher_args, launch
from maskdcpt.training.finetune import load_finetune_config, run_finetuning


@tool_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: tiny NAFNet on the synthetic 5D set)")
    parser.add_argument("--pretrained", help="encoder .safetensors, a pre-training run folder, a release .pth, or none")
    add_resume_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=30")
    add_launcher_args(parser)
    args = parse_args(parser, argv)
    overrides = list(args.overrides)
    if args.pretrained is not None:
        overrides.append(f"pretrained={args.pretrained}")
    cfg = load_finetune_config(args.config, overrides)
    if launch("finetune", args.config, overrides, args) is not None:
        return 0  # submitted: the job runs the same fine-tuning
    run_finetuning(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
