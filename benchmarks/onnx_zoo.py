"""Export every zoo cfg to ONNX and count what exports, matches and runs.

    python benchmarks/onnx_zoo.py [--size 96] [--steps 4] [--keep DIR]
                                  [--opencv5 PYTHON] [--only SUBSTR] [--after CFG]
                                  [--skip-big N] [--memory-gb 8] [--timeout 1200]

Each cfg of the conformance zoo is built at ``--size`` (random weights as
tests/test_zoo.py makes them), recurrent cfgs at ``[net] time_steps=--steps``,
and exported with ``export_onnx(check=True)`` (onnxruntime against torch, per
layer when the whole graph differs), then every layer is checked teacher-forced
within the manifest's per-layer rule (tests/onnx_zoo.py).  With ``--opencv5`` the graphs are also run by OpenCV 5's
``cv2.dnn.readNetFromONNX`` in that interpreter (tools/opencv_onnx_runner.py) and
compared with torch end to end (tests/onnx_zoo.py states the rule).  Each cfg
runs in its own process under an address-space limit (``--memory-gb``, the
largest nets need several copies of their weights while exporting and
checking).  Prints one line per cfg and the counts.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(args) -> int:
    """``--one CFG OUT``: one cfg in this process; prints its result as JSON."""
    import json

    from tests.onnx_zoo import export_one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_one(Path(args.one[0]), Path(args.one[1]), size=args.size, steps=args.steps,
                         max_params=args.skip_big, opencv_python=args.opencv5)
    print(json.dumps(dataclasses.asdict(res)))
    return 0


def _limit_memory(gb: float):
    import resource

    def set_limit():   # a cfg that needs more fails with MemoryError instead of waking the OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2 ** 30), int(gb * 2 ** 30)))
    return set_limit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4, help="time_steps for recurrent cfgs")
    ap.add_argument("--keep", type=Path, help="keep the .onnx files here")
    ap.add_argument("--opencv5", help="python of a venv with opencv-python-headless>=5")
    ap.add_argument("--only", default="", help="only cfgs whose name contains this")
    ap.add_argument("--after", default="", help="only cfgs after this one (resume)")
    ap.add_argument("--skip-big", type=int, default=None,
                    help="skip cfgs with more parameters than this (time)")
    ap.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit per cfg")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per cfg")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        return _one(args)
    import json
    import subprocess

    from tests.conftest import CONFORMANCE
    cfgs = sorted((CONFORMANCE / "zoo").glob("*/*.cfg"))
    cfgs = [c for c in cfgs if args.only in f"{c.parent.name}/{c.name}"
            and f"{c.parent.name}/{c.name}" > args.after]
    counts: collections.Counter = collections.Counter()
    keep = args.keep or Path(tempfile.mkdtemp(prefix="onnx_zoo_"))
    keep.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for cfg in cfgs:
        key = f"{cfg.parent.name}/{cfg.name}"
        t = time.time()
        out = keep / (key.replace("/", "__").removesuffix(".cfg") + ".onnx")
        cmd = [sys.executable, __file__, "--one", str(cfg), str(out), "--size", str(args.size),
               "--steps", str(args.steps)]
        cmd += ["--opencv5", args.opencv5] if args.opencv5 else []
        cmd += ["--skip-big", str(args.skip_big)] if args.skip_big else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  preexec_fn=_limit_memory(args.memory_gb))
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and lines:
                res = json.loads(lines[-1])
            else:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                what = "out of memory" if "MemoryError" in proc.stderr or "alloc" in err else "crashed"
                res = {"outcome": what, "detail": f"{args.memory_gb:g} GB limit: {err[:150]}", "opencv": ""}
        except subprocess.TimeoutExpired:
            res = {"outcome": "timed out", "detail": f"> {args.timeout:.0f}s", "opencv": ""}
        if not args.keep:
            out.unlink(missing_ok=True)
        counts[res["outcome"]] += 1
        if res["opencv"]:
            counts["opencv " + res["opencv"].split(":")[0].split(" (")[0]] += 1
        print(f"{key:45s} {res['outcome']:14s} {time.time() - t:6.1f}s  {res['detail']}"
              + (f"  | opencv: {res['opencv']}" if res["opencv"] else ""), flush=True)
    print(f"\nonnx zoo ({len(cfgs)} cfgs, size {args.size}, time_steps {args.steps}, "
          f"{time.time() - t0:.0f}s):")
    for k, n in sorted(counts.items()):
        print(f"  {n:4d} {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
