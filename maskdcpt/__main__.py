"""``python -m maskdcpt``: the command-line tools, one line each; ``python -m maskdcpt TOOL [args]`` runs one.

The tools are the scripts in the repository's ``tools/`` folder (thin shells over the library); this entry point
finds them beside the package, so that a user who tries ``python -m maskdcpt`` learns where the commands are.
"""
from __future__ import annotations

import ast
import re
import runpy
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _summary(doc: str, width: int = 88) -> str:
    """The first sentence of a docstring's first paragraph, without its usage (``…``), cut to ``width``."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = re.split(r"(?<=[a-z)])[.:;] ", first + " ", maxsplit=1)[0].split(": ``")[0].rstrip(". ")
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def tools() -> dict[str, str]:
    """Tool name → what it does (its docstring's first sentence)."""
    return {path.stem: _summary(ast.get_docstring(ast.parse(path.read_text())) or "")
            for path in sorted(TOOLS.glob("*.py"))}


def main(argv: list[str]) -> int:
    if not TOOLS.is_dir():
        print("maskdcpt's command-line tools are the scripts in the repository's tools/ folder "
              "(python tools/pretrain.py --help, …); this installation has none beside it", file=sys.stderr)
        return 2
    available = tools()
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, available))
        print("usage: python -m maskdcpt TOOL [ARGS]   (the same as python tools/TOOL.py [ARGS])\n\ntools:")
        for name, about in available.items():
            print(f"  {name:<{width}}  {about}")
        print("\n`python -m maskdcpt TOOL --help` (or python tools/TOOL.py --help) gives a tool's options.")
        return 0
    name = argv[0].removesuffix(".py")
    if name not in available:
        print(f"error: no tool {argv[0]!r}; tools: {', '.join(available)}", file=sys.stderr)
        return 2
    sys.argv = [str(TOOLS / f"{name}.py"), *argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")  # a tool ends with sys.exit(main())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
