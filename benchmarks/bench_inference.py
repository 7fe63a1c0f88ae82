"""CPU inference speed: darknet_py (the plain eval module, ``for_inference()`` in
fp32/bf16, and variants: see ENGINES) vs OpenCV DNN vs pytorchyolo, side by side,
with ratios.  Not a test; ``bench_speed.py`` puts its numbers in issue 14's table.

    python benchmarks/bench_inference.py [--threads 2] [--repeat 10] [--models tiny,yolov3]

* yolov3-tiny with the official weights (conformance/real_yolov3-tiny), full
  yolov3 (conformance/zoo/pjreddie/yolov3.cfg) with random weights written by
  our own writer; both at 416x416, batch 1 and 8; the same cfg/weights files
  for every engine, torch threads = OpenCV threads.
* latency: for each model and batch size, every engine is loaded in one
  subprocess and timed in ``--repeat`` interleaved rounds after a warm-up (a
  drift of the machine hits all engines alike); the median (and min) per batch.
* peak memory (ru_maxrss): each engine alone in a fresh subprocess.
* end to end: ``darknet-py detect``'s Detector on the photo folder (decode,
  letterbox, network, decode, NMS), images per second.

pytorchyolo imports torchvision and imgaug for training utilities it does not
need to run a forward pass; when they are missing the benchmark stubs them
rather than installing another torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = Path(os.environ.get("DARKNET_PY_CONFORMANCE", REPO.parent / "shared" / "conformance"))
SIZE = 416


def _model_files(name: str, workdir: Path) -> tuple[str, str]:
    """(cfg, weights) paths for a model name; yolov3 weights are generated once."""
    if name == "tiny":
        d = CONF / "real_yolov3-tiny"
        return str(d / "yolov3-tiny.cfg"), str(d / "yolov3-tiny.weights")
    cfg = workdir / "yolov3-416.cfg"
    weights = workdir / "yolov3-random.weights"
    if not weights.exists():
        import re

        import torch

        from darknet_py import Darknet
        text = (CONF / "zoo" / "pjreddie" / "yolov3.cfg").read_text()
        text = re.sub(r"(?m)^width=\d+", f"width={SIZE}", text)
        text = re.sub(r"(?m)^height=\d+", f"height={SIZE}", text)
        cfg.write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = Darknet(str(cfg))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in model.module_list:
                for pname, t in layer.darknet_tensors():
                    if pname == "weights":
                        fan_in = t[0].numel()
                        t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    elif pname == "rolling_variance":
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                    elif pname == "scales":
                        t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
                    else:
                        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        model.save_weights(str(weights))
    return str(cfg), str(weights)


def _time(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _make_engine(engine: str, cfg: str, weights: str, x_np, threads: int):
    """A no-argument function running one forward pass of ``engine`` on ``x_np``."""
    import torch
    if engine == "opencv":
        import cv2
        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromDarknet(cfg, weights)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        outs = net.getUnconnectedOutLayersNames()

        def fn():
            net.setInput(x_np)
            net.forward(outs)
        return fn
    if engine == "pytorchyolo":
        for missing in ("torchvision", "imgaug"):
            try:
                __import__(missing)
            except ImportError:
                sys.modules[missing] = types.ModuleType(missing)
        from pytorchyolo.models import Darknet as PYDarknet
        m = PYDarknet(cfg)
        m.load_darknet_weights(weights)
        m.eval()
        x = torch.from_numpy(x_np)

        def fn():
            with torch.no_grad():
                m(x)
        return fn
    from darknet_py import Darknet
    from darknet_py.fuse import inference_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg, SIZE, SIZE)
    model.load_weights(weights)
    model.eval()
    x = torch.from_numpy(x_np)
    if engine in ("plain", "plain-nchw"):      # the README's module: eval() + no_grad
        model.channels_last = engine == "plain"
        net = model
    elif engine == "fused-nchw":
        net = inference_model(model, channels_last=False)
    elif engine == "fast-conv2d":              # fast without the oneDNN fused call (A/B)
        net = model.for_inference()
        for layer in net.module_list:
            if hasattr(layer, "use_onednn"):
                layer.use_onednn = False
    elif engine.startswith("fast"):            # model.for_inference(): what detect runs
        precision = engine.split("-")[1] if "-" in engine else "fp32"
        net = model.for_inference(precision=precision)
    else:
        raise SystemExit(f"unknown engine {engine}")

    def fn():
        with torch.no_grad():
            net(x)
    return fn


def _input(batch: int):
    import numpy as np
    return np.random.default_rng(0).random((batch, 3, SIZE, SIZE), dtype=np.float32)


def run_timing(engines: list[str], cfg: str, weights: str, batch: int, threads: int, repeat: int) -> dict:
    """Every engine in this one process, timed in interleaved rounds (a drift of
    the machine hits all alike): median seconds per batch for each."""
    import torch
    torch.set_num_threads(threads)
    x_np = _input(batch)
    fns, times = {}, {}
    for e in engines:
        try:
            fns[e] = _make_engine(e, cfg, weights, x_np, threads)
        except Exception as exc:  # e.g. pytorchyolo or OpenCV missing
            times[e] = {"error": f"{type(exc).__name__}: {exc}"}
    for fn in fns.values():       # warm-up (allocations, oneDNN primitive caches)
        fn()
        fn()
    samples: dict[str, list[float]] = {e: [] for e in fns}
    for _ in range(repeat):
        for e, fn in fns.items():
            time.sleep(0.05)      # the previous engine's worker threads go idle first (untimed)
            t = time.perf_counter()
            fn()
            samples[e].append(time.perf_counter() - t)
    for e, v in samples.items():
        times[e] = {"seconds": statistics.median(v), "min": min(v)}
    return times


def run_memory(engine: str, cfg: str, weights: str, batch: int, threads: int) -> dict:
    """Peak memory of one engine alone in a fresh process (two forward passes)."""
    import torch
    torch.set_num_threads(threads)
    fn = _make_engine(engine, cfg, weights, _input(batch), threads)
    fn()
    fn()
    return {"peak_mb": _peak_mb()}


def run_detect(cfg: str, weights: str, threads: int, repeat: int, channels_last: bool) -> dict:
    """End to end ``Detector`` on the photo folder: files -> detections."""
    import torch
    torch.set_num_threads(threads)
    from darknet_py import Darknet
    from darknet_py.detect import Detector
    folder = CONF / "real_yolov3-tiny"
    photos = sorted(str(p) for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    images = photos * 4  # 16 images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg)
    model.load_weights(weights)
    det = Detector(model, batch_size=8, channels_last=channels_last)
    sec = _time(lambda: det(images), max(2, repeat // 3))
    return {"engine": "detect" + ("-cl" if channels_last else ""), "images": len(images),
            "images_per_second": len(images) / sec, "peak_mb": _peak_mb()}


def _sub(args: list[str], omp_wait_policy: str | None = None) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if omp_wait_policy:  # read by the OpenMP runtime when torch loads: only a fresh process can set it
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


#: plain: ``Darknet(...).eval()`` under no_grad (the README's module); plain-nchw: the same
#: with ``model.channels_last = False``; fused-nchw: BN folded, NCHW; fast:
#: ``model.for_inference()`` (folded, one oneDNN call per conv, channels-last), fast-bf16 /
#: fast-fp16 its reduced precisions; fast-conv2d: fast with conv2d + activation instead
#: of the fused oneDNN call
ENGINES = ["plain", "plain-nchw", "fused-nchw", "fast", "fast-bf16", "opencv", "pytorchyolo"]
OURS = ("plain", "fused", "fast")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--models", default="tiny,yolov3")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--omp-wait-policy", choices=["active", "passive"],
                   help="OMP_WAIT_POLICY for the measured processes (passive: OpenMP threads sleep "
                        "instead of spinning, much faster when the cores are shared with other work)")
    p.add_argument("--timing", nargs=4, metavar=("ENGINES", "CFG", "WEIGHTS", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--memory", nargs=4, metavar=("ENGINE", "CFG", "WEIGHTS", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--detect", nargs=3, metavar=("CFG", "WEIGHTS", "CL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.timing:
        engines, cfg, weights, batch = args.timing
        print(json.dumps(run_timing(engines.split(","), cfg, weights, int(batch), args.threads, args.repeat)))
        return 0
    if args.memory:
        engine, cfg, weights, batch = args.memory
        print(json.dumps(run_memory(engine, cfg, weights, int(batch), args.threads)))
        return 0
    if args.detect:
        cfg, weights, cl = args.detect
        print(json.dumps(run_detect(cfg, weights, args.threads, args.repeat, cl == "1")))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="darknet_py_bench_"))
    try:
        _report(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _report(args, workdir: Path) -> None:
    engines = args.engines.split(",")
    print(f"threads={args.threads} repeat={args.repeat} input {SIZE}x{SIZE} OMP_WAIT_POLICY="
          f"{args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', 'default')} load average "
          f"{os.getloadavg()[0]:.1f}; latency: median (and min) seconds per batch over interleaved "
          f"rounds in one process; peak memory: each engine alone in its own process")
    for name in args.models.split(","):
        cfg, weights = _model_files(name, workdir)
        label = "yolov3-tiny (official weights)" if name == "tiny" else "yolov3 (random weights)"
        for batch in (int(b) for b in args.batches.split(",")):
            rows = _sub(["--timing", ",".join(engines), cfg, weights, str(batch), "--threads",
                         str(args.threads), "--repeat", str(args.repeat)], args.omp_wait_policy)
            if "error" in rows:
                print(f"\n{label}, batch {batch}: failed: {rows['error']}")
                continue
            for e in engines:
                if "seconds" in rows.get(e, {}):
                    mem = _sub(["--memory", e, cfg, weights, str(batch), "--threads", str(args.threads)],
                               args.omp_wait_policy)
                    rows[e]["peak_mb"] = mem.get("peak_mb")
            ref = rows.get("opencv", {}).get("seconds")
            print(f"\n{label}, batch {batch}")
            print(f"  {'engine':24s} {'ms/batch':>10s} {'min':>8s} {'ms/image':>10s} {'vs OpenCV':>10s} "
                  f"{'peak MB':>9s}")
            for e in engines:
                r = rows.get(e, {"error": "not run"})
                if "error" in r:
                    print(f"  {e:24s} unavailable: {r['error'][:90]}")
                    continue
                ratio = f"{r['seconds'] / ref:9.2f}x" if ref else "      n/a"
                peak = f"{r['peak_mb']:9.0f}" if r.get("peak_mb") else "        -"
                print(f"  {e:24s} {r['seconds'] * 1000:10.1f} {r['min'] * 1000:8.1f} "
                      f"{r['seconds'] / batch * 1000:10.1f} {ratio:>10s} {peak}")
            ours = [(r["seconds"], e) for e, r in rows.items() if e.startswith(OURS) and "seconds" in r
                    and e.split("-")[-1] not in ("bf16", "fp16")]
            if not ours:
                continue
            best = min(ours)
            py = rows.get("pytorchyolo", {}).get("seconds")
            if py:
                print(f"  best ours ({best[1]}) vs pytorchyolo: {best[0] / py:.2f}x")
            if ref:
                print(f"  best ours ({best[1]}) vs OpenCV: {best[0] / ref:.2f}x")
    cfg, weights = _model_files("tiny", workdir)
    print("\nend to end (Detector on the photo folder, 16 images, batch 8, yolov3-tiny):")
    for cl in ("0", "1"):
        r = _sub(["--detect", cfg, weights, cl, "--threads", str(args.threads), "--repeat", str(args.repeat)],
                 args.omp_wait_policy)
        if "error" in r:
            print(f"  channels_last={cl}: failed: {r['error']}")
        else:
            print(f"  channels_last={cl}: {r['images_per_second']:.2f} images/s, peak {r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    raise SystemExit(main())
