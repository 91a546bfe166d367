#!/usr/bin/env python
"""Experiments made of several training runs.

    python tools/experiment.py transfer --preset smoke --out runs/experiments/smoke     # every arm, a few steps
    python tools/experiment.py transfer --preset cpu                                    # the small CPU experiment
    python tools/experiment.py transfer --preset gpu finetune_steps=3000 arms=[scratch,maskdcpt]
    python tools/experiment.py transfer --preset cluster launch.partition=gpu           # one SLURM job per arm
    python tools/experiment.py transfer --collect runs/experiments/transfer_cluster     # the report, from the runs
"""
import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from maskdcpt.cli import tool_main
from maskdcpt.experiments import plan
from maskdcpt.experiments.cluster import arm_statuses
from maskdcpt.experiments.report import write_report
from maskdcpt.experiments.run import run_experiment

TRANSFER = """Does pre-training help? Fine-tuning from scratch against fine-tuning from MaskDCPT and its ablations.

Every arm fine-tunes the same restorer with the same recipe, data, seeds and held-out set; the arms differ only
where ARMS (maskdcpt/experiments/plan.py) says. The experiment lives in one folder (--out); rerunning the same
command skips finished arms and resumes interrupted ones."""


def _transfer(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    if args.collect:
        results = write_report(args.collect, arm_statuses(Path(args.collect).resolve()))
        return 0 if all(a["status"] == "done" for a in results["arms"].values()) else 1
    if not (args.preset or args.config):
        parser.error("give --preset NAME or --config FILE (or --collect DIR)")
    path = plan.preset_path(args.preset) if args.preset else Path(args.config)
    cfg = plan.load_transfer_config(path, args.overrides)
    out = Path(args.out or Path("runs") / "experiments" / f"transfer_{args.preset or path.stem}").resolve()
    if args.dry_run:
        for key, arm in plan.plan_arms(cfg, out).items():
            print(f"# {plan.member_name(*key)}: {arm.arm.about}")
            for line in arm.commands():
                print(line)
        return 0
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"transfer experiment in {out} ({stamp}); arms: {', '.join(cfg.arms)}; seeds: "
          f"{', '.join(map(str, cfg.seeds))}", flush=True)
    results = run_experiment(cfg, out, command)
    return 0 if results is None or all(a["status"] == "done" for a in results["arms"].values()) else 1


@tool_main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="experiment", required=True)
    transfer = sub.add_parser("transfer", help=TRANSFER.splitlines()[0], description=TRANSFER,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    source = transfer.add_mutually_exclusive_group()
    source.add_argument("--preset", help=f"a preset of {plan.PRESET_DIR.relative_to(plan.REPO)} (smoke, cpu, gpu, cluster)")
    source.add_argument("--config", help="a TransferConfig YAML file")
    source.add_argument("--collect", metavar="DIR", help="write the report of DIR from its run folders; run nothing")
    transfer.add_argument("--out", help="the experiment folder (default: runs/experiments/transfer_<preset>)")
    transfer.add_argument("--dry-run", action="store_true", help="print each arm's runs as commands; run nothing")
    transfer.add_argument("overrides", nargs="*", metavar="key=value",
                          help="overrides of the preset, e.g. finetune_steps=200 arms=[scratch,maskdcpt]")
    args = parser.parse_args(argv)
    return _transfer(args, transfer, shlex.join(["python", "tools/experiment.py", *argv]))


if __name__ == "__main__":
    sys.exit(main())
