#!/usr/bin/env python3
"""Fine-tune a darknet model from its cfg the darknet way; see darknet_py/cli/train.py.

    python tools/train.py --data DATA --cfg CFG [--weights W] [--clear] [--max-batches N]
                          [--backup DIR] [--map] [--device cpu|cuda] [--workers K]
    python tools/train.py            # built-in job: synthetic shapes, cfg/tiny-shapes.cfg
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from darknet_py.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
