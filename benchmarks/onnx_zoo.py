"""Export every zoo cfg to ONNX and count what exports, matches and runs.

    python benchmarks/onnx_zoo.py [--size 96] [--steps 4] [--keep DIR]
                                  [--opencv5 PYTHON] [--only SUBSTR] [--skip-big N]

Each cfg of the conformance zoo is built at ``--size`` (random weights as
tests/test_zoo.py makes them), recurrent cfgs at ``[net] time_steps=--steps``,
and exported with ``export_onnx(check=True)``: onnxruntime against torch, per
layer when the whole graph differs (the manifest's rule: 1e-4 relative to the
layer's max |value|).  With ``--opencv5`` the graphs are also run by OpenCV 5's
``cv2.dnn.readNetFromONNX`` in that interpreter (tools/opencv5_runner.py) and
compared with torch under the same rule.  Prints one line per cfg and the counts.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.onnx_zoo import export_one  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4, help="time_steps for recurrent cfgs")
    ap.add_argument("--keep", type=Path, help="keep the .onnx files (and inputs) here")
    ap.add_argument("--opencv5", help="python of a venv with opencv-python-headless>=5")
    ap.add_argument("--only", default="", help="only cfgs whose name contains this")
    ap.add_argument("--skip-big", type=int, default=None,
                    help="skip cfgs with more parameters than this (time)")
    args = ap.parse_args(argv)
    from tests.conftest import CONFORMANCE
    cfgs = sorted((CONFORMANCE / "zoo").glob("*/*.cfg"))
    cfgs = [c for c in cfgs if args.only in f"{c.parent.name}/{c.name}"]
    counts: collections.Counter = collections.Counter()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="onnx_zoo_"))
    keep.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for cfg in cfgs:
        key = f"{cfg.parent.name}/{cfg.name}"
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = keep / (key.replace("/", "__").removesuffix(".cfg") + ".onnx")
            res = export_one(cfg, out, size=args.size, steps=args.steps, max_params=args.skip_big,
                             opencv_python=args.opencv5)
        if not args.keep:
            out.unlink(missing_ok=True)
        counts[res.outcome] += 1
        if res.opencv:
            counts["opencv " + res.opencv.split(":")[0].split(" (")[0]] += 1
        print(f"{key:45s} {res.outcome:14s} {time.time() - t:6.1f}s  {res.detail}"
              + (f"  | opencv: {res.opencv}" if res.opencv else ""), flush=True)
    print(f"\nonnx zoo ({len(cfgs)} cfgs, size {args.size}, time_steps {args.steps}, "
          f"{time.time() - t0:.0f}s):")
    for k, n in sorted(counts.items()):
        print(f"  {n:4d} {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
