#!/usr/bin/env python
"""Degrade a folder of images and label every output: ``python tools/degrade.py --help``.

A thin shell over :mod:`degradations.cli`.
"""
import sys

from degradations.cli import main
from maskdcpt.cli import tool_main

if __name__ == "__main__":
    sys.exit(tool_main(main)(sys.argv[1:]))
