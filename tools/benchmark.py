#!/usr/bin/env python
"""Benchmarks that print tables: ``python tools/benchmark.py {degradations,models,data,pretrain,gpu} [options]``.

Each subject lives in a library module with a ``main(argv)``; ``--help`` after the subject lists its options.
"""
import importlib
import sys

from maskdcpt.cli import tool_main
from maskdcpt.errors import ConfigError

# subject → (its library module, what it measures)
SUBJECTS = {
    "degradations": ("degradations.benchmark", "ms per sample of every degradation type on one CPU core"),
    "models": ("maskdcpt.benchmarks.models", "parameters, GFLOPs and training img/s per backbone (dense, masked; fp32, bf16)"),
    "data": ("maskdcpt.benchmarks.data", "samples/s per worker core from a file index or shards; the index at 2.5 M files"),
    "pretrain": ("maskdcpt.benchmarks.pretrain", "the MaskDCPT step against the dense step; the data-wait fraction"),
    "gpu": ("maskdcpt.benchmarks.gpu", "every GPU figure in one run (--out DIR; --quick on a CPU)"),
}
USAGE = f"usage: python tools/benchmark.py {{{','.join(SUBJECTS)}}} [options]"


def describe() -> str:
    width = max(map(len, SUBJECTS))
    lines = [USAGE, "", "subjects:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in SUBJECTS.items()]
    lines += ["", "python tools/benchmark.py SUBJECT --help lists a subject's options."]
    return "\n".join(lines)


@tool_main
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(describe())
        return 0
    if not argv:
        print(describe(), file=sys.stderr)
        return 2
    if argv[0] not in SUBJECTS:
        raise ConfigError(f"unknown benchmark {argv[0]!r}; one of {', '.join(SUBJECTS)} ({USAGE.removeprefix('usage: ')})")
    module = importlib.import_module(SUBJECTS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
