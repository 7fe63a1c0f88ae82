"""CPU latency of an exported ONNX graph in every engine, next to darknet_py's torch
forward and OpenCV 4's darknet importer.  Not a test.

    python benchmarks/bench_onnx.py [--threads 2] [--repeat 10] [--batches 1,8]
                                    [--opencv5 PYTHON]

yolov3-tiny with the official weights (conformance/real_yolov3-tiny) at 416x416,
exported once with ``export_onnx`` (head outputs).  Engines, each timed alone in
its own subprocess (median and min of ``--repeat`` forward passes after two
warm-ups, ``--threads`` threads):

* ``torch``: darknet_py with BN folded and channels_last (what detect runs);
* ``opencv4-darknet``: ``cv2.dnn.readNetFromDarknet`` of the .cfg/.weights (OpenCV < 5);
* ``onnxruntime``: CPUExecutionProvider;
* ``openvino``: CPU plugin at f32 (``INFERENCE_PRECISION_HINT``), as the detect engine;
* ``opencv5-onnx``: ``cv2.dnn.readNetFromONNX`` in the ``--opencv5`` interpreter
  (default ``$DARKNET_PY_OPENCV5_PYTHON``), via tools/opencv_onnx_runner.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = Path(os.environ.get("DARKNET_PY_CONFORMANCE", REPO.parent / "shared" / "conformance"))
CFG = CONF / "real_yolov3-tiny" / "yolov3-tiny.cfg"
WEIGHTS = CONF / "real_yolov3-tiny" / "yolov3-tiny.weights"
ENGINES = ["torch", "opencv4-darknet", "onnxruntime", "openvino", "opencv5-onnx"]


def _runner(engine: str, onnx: str, threads: int):
    """A function running one forward pass of ``engine`` on a numpy batch."""
    if engine == "torch":
        import torch

        from darknet_py import Darknet
        from darknet_py.fuse import inference_model
        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Darknet(str(CFG))
        model.load_weights(str(WEIGHTS))
        net = inference_model(model.eval(), fuse_bn=True, channels_last=True)

        def run(x):
            with torch.inference_mode():
                net(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        return run
    if engine == "opencv4-darknet":
        import cv2
        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromDarknet(str(CFG), str(WEIGHTS))
        names = net.getUnconnectedOutLayersNames()

        def run(x):
            net.setInput(x)
            net.forward(names)
        return run
    if engine == "onnxruntime":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"input": x})
    if engine == "openvino":
        import openvino as ov
        compiled = ov.Core().compile_model(onnx, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                          "INFERENCE_NUM_THREADS": threads})
        return lambda x: compiled(x)
    raise SystemExit(f"unknown engine {engine}")


def _time_here(engine: str, onnx: str, inp: str, repeat: int, threads: int) -> dict:
    import numpy as np
    run = _runner(engine, onnx, threads)
    x = np.load(inp)
    times = []
    for i in range(repeat + 2):
        t = time.perf_counter()
        run(x)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "min": min(times)}


def _measure(engine: str, onnx: str, inp: str, args) -> dict:
    if engine == "opencv5-onnx":
        if not args.opencv5:
            return {"error": "no --opencv5 interpreter (or DARKNET_PY_OPENCV5_PYTHON)"}
        cmd = [args.opencv5, str(REPO / "tools" / "opencv_onnx_runner.py"), "--time", onnx, inp,
               str(args.repeat), str(args.threads)]
    else:
        cmd = [sys.executable, __file__, "--timing", engine, onnx, inp, "--repeat", str(args.repeat),
               "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--opencv5", default=os.environ.get("DARKNET_PY_OPENCV5_PYTHON"))
    p.add_argument("--timing", nargs=3, metavar=("ENGINE", "ONNX", "INPUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timing:
        print(json.dumps(_time_here(*args.timing, args.repeat, args.threads)))
        return 0
    import numpy as np

    sys.path.insert(0, str(REPO))
    from darknet_py import Darknet
    from darknet_py.onnx_export import export_onnx
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Darknet(str(CFG))
        model.load_weights(str(WEIGHTS))
        onnx = os.path.join(tmp, "yolov3-tiny.onnx")
        export_onnx(model, onnx, check=False)
        print(f"yolov3-tiny (official weights) 416x416, threads={args.threads}, repeat={args.repeat}, "
              f"load average {os.getloadavg()[0]:.1f}; each engine alone in a subprocess")
        for batch in (int(b) for b in args.batches.split(",")):
            inp = os.path.join(tmp, f"x{batch}.npy")
            np.save(inp, np.random.default_rng(0).random((batch, 3, 416, 416), dtype=np.float32))
            print(f"\nbatch {batch}\n  {'engine':18s} {'ms/batch':>10s} {'min':>8s} {'ms/image':>10s}")
            for e in args.engines.split(","):
                r = _measure(e, onnx, inp, args)
                if "error" in r:
                    print(f"  {e:18s} unavailable: {r['error']}")
                    continue
                print(f"  {e:18s} {r['seconds'] * 1e3:10.1f} {r['min'] * 1e3:8.1f} "
                      f"{r['seconds'] * 1e3 / batch:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
