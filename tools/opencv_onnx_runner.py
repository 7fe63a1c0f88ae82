"""Run ONNX graphs in OpenCV's DNN module, in an interpreter that need not have torch.

    python tools/opencv_onnx_runner.py JOBS.json
    python tools/opencv_onnx_runner.py --time MODEL.onnx INPUT.npy REPEAT THREADS

``JOBS.json`` is a list of ``{"onnx": path, "input": path.npy, "output": path.npz}``
(or ``"inputs": {name: path.npy}`` for a graph of several inputs).
For each job the graph is read with ``cv2.dnn.readNetFromONNX``, run on the
input (``float32 [N, C, H, W]``) and its outputs saved in ``output`` under
their output names (``cv2.dnn`` returns them in ``getUnconnectedOutLayersNames``
order).  A job OpenCV cannot read or run gets its first error line in
``output + ".err"`` instead.  Prints ``cv2.__version__`` and one line per job.
``--time`` prints ``{"seconds": median, "min": ...}`` (JSON) of REPEAT forward
passes after two warm-up passes, for benchmarks/bench_onnx.py.
Only numpy and cv2 are imported: the OpenCV 5 test runs this in its own venv.
"""
from __future__ import annotations

import json
import sys
import traceback

import cv2
import numpy as np


def run(job: dict) -> str:
    try:
        net = cv2.dnn.readNetFromONNX(job["onnx"])
        names = list(net.getUnconnectedOutLayersNames())
        if "inputs" in job:
            for name, path in job["inputs"].items():
                net.setInput(np.load(path), name)
        else:
            net.setInput(np.load(job["input"]))
        outs = net.forward(names)
        np.savez(job["output"], **{n: np.asarray(o) for n, o in zip(names, outs)})
        return "ok " + ",".join(names)
    except Exception as exc:   # noqa: BLE001 - reported to the caller, who decides
        text = (str(exc).strip() or type(exc).__name__)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        # OpenCV's messages end with the useful line ("... error: (-215) ... in function ...")
        msg = (lines[-1] if lines else text)[:400]
        with open(job["output"] + ".err", "w") as f:
            f.write(msg + "\n" + traceback.format_exc(limit=1))
        return "error " + msg


def time_forward(path: str, inp: str, repeat: int, threads: int) -> dict:
    import statistics
    import time

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(path)
    names = list(net.getUnconnectedOutLayersNames())
    x = np.load(inp)
    times = []
    for i in range(repeat + 2):
        t = time.perf_counter()
        net.setInput(x)
        net.forward(names)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "min": min(times), "version": cv2.__version__}


def main(argv: list[str]) -> int:
    if argv[1] == "--time":
        print(json.dumps(time_forward(argv[2], argv[3], int(argv[4]), int(argv[5]))))
        return 0
    with open(argv[1]) as f:
        jobs = json.load(f)
    print(f"cv2 {cv2.__version__}", flush=True)
    for job in jobs:
        print(f"{job['onnx']}: {run(job)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
