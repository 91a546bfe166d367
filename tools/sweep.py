#!/usr/bin/env python
"""Ablation sweeps: ``python tools/sweep.py configs/sweeps/<name>.yaml [key=value ...] [launch options]``
submits one job array; ``python tools/sweep.py --collect SWEEP_DIR`` prints and writes the results table."""
import sys

from maskdcpt.launch.sweep import main

if __name__ == "__main__":
    sys.exit(main())
