#!/usr/bin/env python
"""Benchmarks that print tables: ``python tools/benchmark.py {degradations,models,data,pretrain,gpu} [options]``.

Each subject lives in a library module with a ``main(argv)``; ``--help`` after the subject lists its options.
"""
import importlib
import sys

from maskdcpt.cli import tool_main
from maskdcpt.errors import ConfigError

SUBJECTS = {
    "degradations": "degradations.benchmark",
    "models": "maskdcpt.benchmarks.models",
    "data": "maskdcpt.benchmarks.data",
    "pretrain": "maskdcpt.benchmarks.pretrain",
    "gpu": "maskdcpt.benchmarks.gpu",
}
USAGE = f"usage: python tools/benchmark.py {{{','.join(SUBJECTS)}}} [options]"


@tool_main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] not in SUBJECTS:
        raise ConfigError(f"unknown benchmark {argv[0]!r}; one of {', '.join(SUBJECTS)} ({USAGE.removeprefix('usage: ')})")
    module = importlib.import_module(SUBJECTS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
