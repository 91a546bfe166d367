#!/usr/bin/env python
"""Experiments made of several training runs.

    python tools/experiment.py transfer --preset smoke --out runs/experiments/smoke     # every arm, a few steps
    python tools/experiment.py transfer --preset cpu                                    # the small CPU experiment
    python tools/experiment.py transfer --preset gpu finetune_steps=3000 arms=[scratch,maskdcpt]
    python tools/experiment.py transfer --preset cluster launch.partition=gpu           # one SLURM job per arm
    python tools/experiment.py transfer --collect runs/experiments/transfer_cluster     # the report, from the runs
"""
import argparse
import shlex
import sys

from maskdcpt.experiments import transfer

EXPERIMENTS = {"transfer": transfer}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="experiment", required=True)
    parsers = {}
    for name, module in EXPERIMENTS.items():
        parsers[name] = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parsers[name])
    args = parser.parse_args(argv)
    try:
        return EXPERIMENTS[args.experiment].main(args, shlex.join(["python", "tools/experiment.py", *argv]))
    except ValueError as err:
        parsers[args.experiment].error(str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
