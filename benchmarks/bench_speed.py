"""Issue 14's numbers in one table: inference speed against OpenCV DNN and
pytorchyolo, the plain module against the fast path, reduced precision (speed and
detection agreement on the real photos), training throughput against pytorchyolo.
Not a test.

    python benchmarks/bench_speed.py [--threads 2] [--repeat 7] [--models tiny,yolov3]
                                     [--train-rounds 3] [--skip-train]

* latency: ``bench_inference.py``'s interleaved rounds, every engine in one fresh
  process per (model, batch) with the OpenMP settings printed in the header;
  median ms per batch (min in brackets).  ``plain`` is ``Darknet(...).eval()``
  under ``torch.no_grad()`` (the README's module), ``fast`` is
  ``model.for_inference()`` (what ``darknet_py.detect`` and ``darknet-py detect``
  run), ``bf16`` is ``model.for_inference(precision="bf16")``.
* detections: ``Detector`` on conformance/real_yolov3-tiny's photos: the fp32 fast
  path against darknet's own stored detections (thresh 0.1), and bf16 against fp32
  (class equal, box within 2 px, probability within 0.02, thresh 0.25).
* training: ``bench_train_step.py`` (yolov3-tiny 416, batch 16, one full update).
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

ENGINES = ["plain", "fast", "fast-bf16", "opencv", "pytorchyolo"]
BOX_PX, PROB = 2.0, 0.02


def _env(args) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_WAIT_POLICY=args.omp_wait_policy.upper())
    return env


def _run(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ detections

def _match(ref: list[dict], got: list[dict], box_px: float, prob: float) -> tuple[int, float, float]:
    """Greedy one-to-one matching: (matched, max box difference px, max prob difference)."""
    used: set[int] = set()
    matched, max_box, max_prob = 0, 0.0, 0.0
    for r in ref:
        best = None
        for j, g in enumerate(got):
            if j in used or g["class_id"] != r["class_id"]:
                continue
            db = max(abs(a - b) for a, b in zip(g["box"], r["box"]))
            dp = abs(g["prob"] - r["prob"])
            if db <= box_px and dp <= prob and (best is None or db < best[1]):
                best = (j, db, dp)
        if best is not None:
            used.add(best[0])
            matched += 1
            max_box, max_prob = max(max_box, best[1]), max(max_prob, best[2])
    return matched, max_box, max_prob


def run_detections(threads: int) -> dict:
    """In this process: fp32 fast vs darknet's stored detections, bf16 vs fp32."""
    import torch
    torch.set_num_threads(threads)
    from darknet_py import Darknet
    from darknet_py.detect import Detector
    from darknet_py.errors import DarknetError
    manifest = json.loads((bi.CONF / "manifest.json").read_text())
    real = manifest["real"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(str(bi.CONF / real["cfg"]))
    model.load_weights(str(bi.CONF / real["weights"]["file"]))
    paths = [str(bi.CONF / "real_yolov3-tiny" / im["file"]) for im in real["images"]]
    out: dict = {}

    def dets(det, thresh):
        return [[d.to_json() for d in r.detections if d.prob > thresh] for r in det(paths)]

    # "unchanged": the fp32 fast path on darknet's own letterboxed input (the npz; image
    # decoding differs between darknet's stb_image and OpenCV on JPEGs) against darknet's
    # stored detections at its lowest stored thresh; darknet prints boxes truncated to int
    import numpy as np
    low = min(float(t) for im in real["images"] for t in im["darknet_detect_stdout"])
    fast_det = Detector(model, thresh=low)
    matched = total = found = 0
    for im in real["images"]:
        x = torch.from_numpy(np.load(bi.CONF / im["arrays"])["letterbox"])[None]
        with torch.inference_mode():
            d = fast_det.post(fast_det.model(x), [(im["width"], im["height"])])[0]
        got = [x.to_json() for x in fast_det.to_detections(d, im["width"], im["height"])]
        ref = [{"class_id": r["cls"], "prob": r["prob"], "box": r["box_pixels_left_top_right_bot"]}
               for r in im["detections"] if abs(r["thresh"] - low) < 1e-9]
        matched += _match(ref, got, 1.0, 1e-4)[0]
        total, found = total + len(ref), found + len(got)
    out["fp32_vs_darknet"] = {"matched": matched, "darknet": total, "ours": found, "thresh": low}
    fp32 = dets(Detector(model, thresh=0.25), 0.25)
    try:
        bf16 = dets(Detector(model, thresh=0.25, precision="bf16"), 0.25)
    except DarknetError as exc:
        out["bf16_vs_fp32"] = {"error": str(exc)}
        return out
    m = [_match(a, b, BOX_PX, PROB) for a, b in zip(fp32, bf16)]
    out["bf16_vs_fp32"] = {"matched": sum(x[0] for x in m), "fp32": sum(map(len, fp32)),
                           "bf16": sum(map(len, bf16)), "max_box_px": max(x[1] for x in m),
                           "max_prob": max(x[2] for x in m)}
    return out


# ------------------------------------------------------------------ report

def _fmt(r: dict | None, key: str = "seconds") -> str:
    if not r or key not in r:
        return "n/a"
    return f"{r[key] * 1000:.1f} ({r['min'] * 1000:.1f})"


def _ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or "seconds" not in a or "seconds" not in b:
        return "n/a"
    return f"{a['seconds'] / b['seconds']:.2f}x"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--models", default="tiny,yolov3")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--omp-wait-policy", default="passive", choices=["active", "passive"])
    p.add_argument("--train-rounds", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--detections", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.detections:
        print(json.dumps(run_detections(args.threads)))
        return 0
    import cv2
    import torch
    env = _env(args)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="darknet_py_bench_") as tmp:
        for name in args.models.split(","):
            cfg, weights = bi._model_files(name, Path(tmp))
            for batch in args.batches.split(","):
                r = _run([sys.executable, bi.__file__, "--timing", ",".join(ENGINES), cfg, weights, batch,
                          "--threads", str(args.threads), "--repeat", str(args.repeat)], env)
                rows.append((name, int(batch), r))
    det = _run([sys.executable, __file__, "--detections", "--threads", str(args.threads)], env)
    train = {} if args.skip_train else _run(
        [sys.executable, str(HERE / "bench_train_step.py"), "--json", "--threads", str(args.threads),
         "--rounds", str(args.train_rounds)], env)
    load1 = os.getloadavg()

    print(f"darknet_py speed, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__}, OpenCV {cv2.__version__}")
    print(f"OMP settings: OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, torch.set_num_threads({args.threads}), "
          f"cv2.setNumThreads({args.threads}); load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print(f"latency: median ms per batch (min) over {args.repeat} interleaved rounds, 416x416\n")
    print(f"| {'model':11s} | {'batch':5s} | {'plain ms':>16s} | {'fast ms':>16s} | {'bf16 ms':>16s} | "
          f"{'OpenCV ms':>16s} | {'fast/OpenCV':>11s} | {'plain/fast':>10s} | {'bf16/fast':>9s} | "
          f"{'fast/pytorchyolo':>16s} |")
    print("|" + "|".join("-" * (w + 2) for w in (11, 5, 16, 16, 16, 16, 11, 10, 9, 16)) + "|")
    for name, batch, r in rows:
        label = "yolov3-tiny" if name == "tiny" else "yolov3"
        if "error" in r:
            print(f"| {label:11s} | {batch:5d} | failed: {r['error'][:80]}")
            continue
        g = r.get
        print(f"| {label:11s} | {batch:5d} | {_fmt(g('plain')):>16s} | {_fmt(g('fast')):>16s} | "
              f"{_fmt(g('fast-bf16')):>16s} | {_fmt(g('opencv')):>16s} | "
              f"{_ratio(g('fast'), g('opencv')):>11s} | {_ratio(g('plain'), g('fast')):>10s} | "
              f"{_ratio(g('fast-bf16'), g('fast')):>9s} | {_ratio(g('fast'), g('pytorchyolo')):>16s} |")
    for name, batch, r in rows:
        bf = r.get("fast-bf16", {})
        if "error" in bf:
            print(f"bf16 ({name}, batch {batch}): {bf['error'][:120]}")
            break
    print("\ngoals: fast/OpenCV <= 0.95x, plain/fast <= 1.3x\n")
    if "error" in det:
        print(f"detections: failed: {det['error']}")
    else:
        d = det["fp32_vs_darknet"]
        print(f"detections, fp32 fast path vs darknet's own (thresh {d['thresh']}, real photos): "
              f"{d['matched']}/{d['darknet']} matched (class, box +-1 px, prob +-1e-4), ours {d['ours']}")
        b = det["bf16_vs_fp32"]
        if "error" in b:
            print(f"detections, bf16 vs fp32: {b['error']}")
        else:
            print(f"detections, bf16 vs fp32 (thresh 0.25): {b['matched']}/{b['fp32']} matched (class, "
                  f"box +-{BOX_PX:g} px, prob +-{PROB:g}), bf16 found {b['bf16']}; max box diff "
                  f"{b['max_box_px']:.2f} px, max prob diff {b['max_prob']:.4f}")
    if train:
        print("\ntraining, yolov3-tiny 416, batch 16, one full update (forward, loss, backward, "
              "optimizer), median of interleaved rounds:")
        if "error" in train:
            print(f"  failed: {train['error']}")
        else:
            ref = train.get("pytorchyolo", {}).get("images_per_second")
            goals = {"exact": ">= 1.0x", "autograd": ">= 1.5x"}
            print(f"| {'engine':12s} | {'images/s':>8s} | {'per CPU-s':>9s} | {'vs pytorchyolo':>14s} | goal    |")
            print(f"|{'-' * 14}|{'-' * 10}|{'-' * 11}|{'-' * 16}|---------|")
            for e, t in train.items():
                if "error" in t:
                    print(f"| {e:12s} | unavailable: {t['error'][:80]}")
                    continue
                vs = f"{t['images_per_second'] / ref:.2f}x" if ref else "n/a"
                print(f"| {e:12s} | {t['images_per_second']:8.2f} | {t['cpu_images_per_second']:9.2f} | "
                      f"{vs:>14s} | {goals.get(e, ''):7s} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
