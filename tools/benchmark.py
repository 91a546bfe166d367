#!/usr/bin/env python
"""Benchmarks that print tables: ``python tools/benchmark.py {degradations,models,data,pretrain,gpu} [options]``.

Each subject lives in a library module with a ``main(argv)``; ``--help`` after the subject lists its options.
"""
import importlib
import sys

SUBJECTS = {
    "degradations": "degradations.benchmark",
    "models": "maskdcpt.benchmarks.models",
    "data": "maskdcpt.benchmarks.data",
    "pretrain": "maskdcpt.benchmarks.pretrain",
    "gpu": "maskdcpt.benchmarks.gpu",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBJECTS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}", file=sys.stderr)
        print(f"usage: python tools/benchmark.py {{{','.join(SUBJECTS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBJECTS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
