"""int8 post-training quantization of yolov3-tiny through ONNX Runtime: latency next
to ORT fp32, our fast fp32 path and OpenCV DNN 4.x, and detection agreement with
the fp32 path on the real photos.  Not a test.

    python benchmarks/bench_int8.py [--threads 2] [--repeat 10] [--batches 1,8]
                                    [--omp-wait-policy passive]

* model: cfg/yolov3-tiny.cfg with the official weights (conformance/real_yolov3-tiny),
  416x416, exported with :func:`~darknet_py.onnx_export.export_onnx` (head outputs):
  ``ort-fp32`` is the graph ``darknet-py convert`` writes (batch norm as darknet's
  normalize ops, leaky as a max); ``ort-fp32-fold`` the same export of the BN-folded
  model (:func:`~darknet_py.fuse.fuse`: Conv with bias + LeakyRelu), the graph
  every int8 variant is made from.
* ``ort-int8``: ``quant_pre_process`` then ``quantize_static``: QDQ, per-channel
  int8 weights, uint8 activations (``--activations int8``: int8), MinMax calibration
  on the real photos letterboxed exactly as :class:`~darknet_py.detect.Detector`
  prepares them (``load_image``, ``prepare`` at its network size and resize mode),
  one image per calibration batch.  Not quantized: the stride-1 maxpool's Pad (darknet
  pads with -FLT_MAX, which a MinMax range turns into a scale that zeroes everything
  after it) and that MaxPool.  ``ort-int8-dyn``: ``quantize_dynamic``
  (ConvInteger, per-channel uint8 weights, activations quantized at run time).
  Every graph and ORT's calibration files live in one temporary directory.
* latency: bench_inference.py's ``run_timing`` (every engine in one fresh process
  per batch size, ``--repeat`` interleaved rounds after a warm-up, median and min
  ms per batch), with the ORT sessions added as engines: ``fast`` is
  ``model.for_inference()`` (fp32), ``opencv`` is ``cv2.dnn.readNetFromDarknet`` of
  the same cfg/weights; torch, OpenCV and ORT (intra-op threads, its own pool,
  inter-op 1) all on ``--threads`` threads.
* agreement: ``Detector`` (fp32 fast path) vs ``EngineDetector(onnxruntime)`` on each
  graph, thresh 0.25, bench_speed.py's greedy one-to-one ``_match`` (class equal,
  box within 2 px, probability within 0.02): fp32 detections matched, engine
  detections left unmatched; how far off: the largest box / probability difference
  when matching on the class alone (same greedy matching, no tolerance).
  The calibration photos are the evaluation photos (the only real ones we have),
  so the agreement is an optimistic one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_inference as bi  # noqa: E402
import bench_speed as bs  # noqa: E402

CFG = bi.REPO / "cfg" / "yolov3-tiny.cfg"
WEIGHTS = bi.CONF / "real_yolov3-tiny" / "yolov3-tiny.weights"
#: engine -> ONNX file name in the work directory
GRAPHS = {"ort-fp32": "fp32.onnx", "ort-fp32-fold": "fp32_fold.onnx", "ort-int8": "int8.onnx",
          "ort-int8-dyn": "int8_dyn.onnx"}
ENGINES = [*GRAPHS, "fast", "opencv"]
THRESH = 0.25


def _load_model():
    from darknet_py import Darknet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(str(CFG))
    model.load_weights(str(WEIGHTS))
    return model


def _photos() -> list[str]:
    real = json.loads((bi.CONF / "manifest.json").read_text())["real"]
    return [str(bi.CONF / "real_yolov3-tiny" / im["file"]) for im in real["images"]]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------ graphs

def _float_pads(path: Path) -> list[str]:
    """Names of the Pad nodes and the MaxPools they feed (darknet's -FLT_MAX padding)."""
    import onnx
    nodes = onnx.load(str(path)).graph.node
    pads = {o: n.name for n in nodes if n.op_type == "Pad" for o in n.output}
    return [*pads.values(), *(n.name for n in nodes if n.op_type == "MaxPool" and n.input[0] in pads)]


def build_graphs(workdir: Path, activations: str) -> None:
    """Export the fp32 graphs and quantize the folded one into ``workdir``."""
    import numpy as np
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from darknet_py.detect import Detector
    from darknet_py.fuse import fuse
    from darknet_py.image import load_image, prepare, to_float
    from darknet_py.onnx_export import export_onnx

    model = _load_model()
    export_onnx(model, workdir / GRAPHS["ort-fp32"])
    folded = fuse(model)
    for layer in folded.module_list:
        if hasattr(layer, "use_onednn"):
            layer.use_onednn = False   # conv2d + activation: what ONNX tracing can express
    export_onnx(folded, workdir / GRAPHS["ort-fp32-fold"])

    det = Detector(model)   # the Detector's own network size and resize mode
    inputs = [prepare(to_float(load_image(p)), det.net_w, det.net_h, det.resize)[None].numpy()
              for p in _photos()]

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {"input": x}

    old_tmp = tempfile.tempdir
    tempfile.tempdir = str(workdir)   # ORT's augmented calibration model and pre-process files
    try:
        pre = workdir / "fp32_fold_pre.onnx"
        quant_pre_process(str(workdir / GRAPHS["ort-fp32-fold"]), str(pre))
        act = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
        quantize_static(str(pre), str(workdir / GRAPHS["ort-int8"]), Photos(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                        nodes_to_exclude=_float_pads(pre))
        quantize_dynamic(str(pre), str(workdir / GRAPHS["ort-int8-dyn"]), per_channel=True,
                         weight_type=QuantType.QUInt8)
    finally:
        tempfile.tempdir = old_tmp


# ------------------------------------------------------------------ timing

_WORKDIR: Path | None = None
_base_make_engine = bi._make_engine


def _make_engine(engine: str, cfg: str, weights: str, x_np, threads: int):
    """bench_inference's engine factory, plus the ORT sessions of :data:`GRAPHS`."""
    if engine not in GRAPHS:
        return _base_make_engine(engine, cfg, weights, x_np, threads)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(_WORKDIR / GRAPHS[engine]), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x_np})


def run_timing(engines: list[str], workdir: Path, batch: int, threads: int, repeat: int) -> dict:
    global _WORKDIR
    _WORKDIR = workdir
    bi._make_engine = _make_engine   # run_timing builds its engines through this name
    return bi.run_timing(engines, str(CFG), str(WEIGHTS), batch, threads, repeat)


# ------------------------------------------------------------------ agreement

def run_agreement(workdir: Path, threads: int) -> dict:
    """Each ORT graph's detections against the fp32 fast path's on the real photos."""
    import torch
    torch.set_num_threads(threads)
    from darknet_py.detect import Detector
    from darknet_py.engines import detector

    paths = _photos()

    def dets(det) -> list[list[dict]]:
        return [[d.to_json() for d in r.detections if d.prob > THRESH] for r in det(paths)]

    fp32 = dets(Detector(_load_model(), thresh=THRESH))
    out = {}
    for engine, file in GRAPHS.items():
        got = dets(detector("onnxruntime", workdir / file, thresh=THRESH))
        matched = sum(bs._match(a, b, bs.BOX_PX, bs.PROB)[0] for a, b in zip(fp32, got))
        loose = [bs._match(a, b, float("inf"), float("inf")) for a, b in zip(fp32, got)]
        out[engine] = {"matched": matched, "fp32": sum(map(len, fp32)), "found": sum(map(len, got)),
                       "unmatched": sum(map(len, got)) - matched, "max_box_px": max(x[1] for x in loose),
                       "max_prob": max(x[2] for x in loose)}
    return out


# ------------------------------------------------------------------ report

def _cell(r: dict | None) -> str:
    return f"{r['seconds'] * 1e3:.1f} ({r['min'] * 1e3:.1f})" if r and "seconds" in r else "n/a"


def _ratio(a: dict | None, b: dict | None) -> str:
    ok = a and b and "seconds" in a and "seconds" in b
    return f"{a['seconds'] / b['seconds']:.2f}x" if ok else "n/a"


def _report(args, workdir: Path) -> None:
    import cv2
    import onnxruntime
    import torch
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_WAIT_POLICY=args.omp_wait_policy.upper(),
               PYTHONPATH=os.pathsep.join(filter(None, [str(bi.REPO), os.environ.get("PYTHONPATH")])))
    load0 = os.getloadavg()
    build_graphs(workdir, args.activations)
    batches = [int(b) for b in args.batches.split(",")]
    rows = {b: bs._run([sys.executable, __file__, "--timing", ",".join(ENGINES), str(workdir), str(b),
                        "--threads", str(args.threads), "--repeat", str(args.repeat)], env) for b in batches}
    agree = bs._run([sys.executable, __file__, "--agreement", str(workdir), "--threads", str(args.threads)], env)
    load1 = os.getloadavg()

    print(f"yolov3-tiny int8, {_cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}")
    print(f"OMP settings: OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, torch.set_num_threads({args.threads}), "
          f"cv2.setNumThreads({args.threads}), ORT intra_op_num_threads={args.threads} inter_op=1; "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print(f"int8: static QDQ, per-channel int8 weights, {args.activations} activations, MinMax calibration "
          f"on {len(_photos())} letterboxed photos; dyn: quantize_dynamic (ConvInteger, uint8 weights)")
    print(f"latency: median ms per batch (min) over {args.repeat} interleaved rounds, 416x416; "
          f"agreement vs fast fp32 on the real photos: class, box +-{bs.BOX_PX:g} px, prob +-{bs.PROB:g}, "
          f"thresh {THRESH}\n")
    head = ["engine"]
    for b in batches:
        head += [f"b{b} ms", f"b{b}/OpenCV", f"b{b}/fast"]
    head += ["matched", "unmatched", "same-class max box px", "same-class max prob"]
    table = []
    for e in ENGINES:
        row = [e]
        for b in batches:
            r = rows[b]
            if "error" in r:
                row += [f"failed: {r['error'][:40]}", "", ""]
                continue
            row += [_cell(r.get(e)), _ratio(r.get(e), r.get("opencv")), _ratio(r.get(e), r.get("fast"))]
        a = agree.get(e)
        if e == "fast":
            row += ["(reference)", "", "", ""]
        elif a and "matched" in a:
            row += [f"{a['matched']}/{a['fp32']}", str(a["unmatched"]), f"{a['max_box_px']:.2f}",
                    f"{a['max_prob']:.4f}"]
        else:
            row += ["-", "", "", ""]
        table.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(str(x).rjust(w) if i else str(x).ljust(w)
                                for i, (x, w) in enumerate(zip(row, widths))) + " |")
    if "error" in agree:
        print(f"\nagreement failed: {agree['error']}")
    for e in ("ort-int8", "ort-int8-dyn"):
        times = [rows[b].get(e, {}).get("seconds") for b in batches]
        faster = all(t is not None and t < rows[b].get(ref, {}).get("seconds", 0.0)
                     for b, t in zip(batches, times) for ref in ("opencv", "fast"))
        a = agree.get(e, {})
        agrees = bool(a) and a.get("matched") == a.get("fp32") and a.get("unmatched") == 0
        print(f"{e}: faster than OpenCV and fast at every batch: {'yes' if faster else 'no'}; "
              f"every fp32 detection matched, none extra: {'yes' if agrees else 'no'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--activations", default="uint8", choices=["uint8", "int8"])
    p.add_argument("--omp-wait-policy", default="passive", choices=["active", "passive"])
    p.add_argument("--timing", nargs=3, metavar=("ENGINES", "WORKDIR", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--agreement", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timing:
        engines, workdir, batch = args.timing
        print(json.dumps(run_timing(engines.split(","), Path(workdir), int(batch), args.threads, args.repeat)))
        return 0
    if args.agreement:
        print(json.dumps(run_agreement(Path(args.agreement), args.threads)))
        return 0
    with tempfile.TemporaryDirectory(prefix="darknet_py_int8_") as tmp:
        _report(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
