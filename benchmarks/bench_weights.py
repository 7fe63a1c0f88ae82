"""Speed and memory of reading and writing darknet weights (not a test).

Full-size yolov3.cfg (the pjreddie zoo cfg of the conformance data), a
248,007,048-byte file of random values written by our own writer in a temp
dir.  Measured side by side in one run, warm page cache, operations interleaved in a
shuffled order with ``os.sync()`` (untimed) before each:

* load: ``Darknet.load_weights`` vs one ``numpy.fromfile`` of the same file,
  vs pytorchyolo's ``load_darknet_weights`` (if ``pip install pytorchyolo
  --no-deps`` is installed; its unused torchvision/imgaug imports are stubbed);
* save: ``Darknet.save_weights`` (atomic: temp file with its size reserved,
  rename; ``durable=True`` adds an fsync) vs one ``ndarray.tofile`` of the same bytes
  (without and with fsync), vs pytorchyolo's ``save_darknet_weights``; each to a
  new file and over an existing one (where ext4 makes a rename over an existing
  file start writing the new data back at once, unless its blocks were reserved;
  our save frees the replaced file in a background thread: the time shown is
  what the caller waits);
* peak extra memory of each, in a fresh subprocess: VmHWM - VmRSS after the
  model is built (Linux ``/proc``), relative to the file size.

Targets (issue 3): load <= 1.5x the raw read and faster than pytorchyolo;
peak extra memory <= 1x the file size; the same for writing.

    python benchmarks/bench_weights.py [--repeat 5] [--conformance DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from statistics import median

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FILE_BYTES = 248_007_048


def _conformance(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("DARKNET_PY_CONFORMANCE", REPO.parent / "shared" / "conformance"))
    cfg = root / "zoo" / "pjreddie" / "yolov3.cfg"
    if not cfg.is_file():
        sys.exit(f"yolov3.cfg not found under {root} (pass --conformance DIR)")
    return cfg


def _pytorchyolo():
    """pytorchyolo's Darknet class, or None; stubs the imports its loader never uses."""
    for _ in range(10):
        try:
            from pytorchyolo.models import Darknet as PYDarknet
            return PYDarknet
        except ModuleNotFoundError as exc:
            name = exc.name or ""
            if not name or name.startswith("pytorchyolo"):
                return None
            root = name.split(".")[0]
            sys.modules[root] = types.ModuleType(root)
            sys.modules[name] = sys.modules.get(name) or types.ModuleType(name)
        except Exception:
            return None
    return None


def _our_model(cfg: Path):
    from darknet_py import Darknet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(cfg)


def _make_file(cfg: Path, path: Path) -> None:
    model = _our_model(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    model.save_weights(path)
    size = path.stat().st_size
    assert size == FILE_BYTES, f"file is {size} bytes, expected {FILE_BYTES}"


# ---------------------------------------------------------------- operations (run in one process)

class Op:
    """``setup() -> state`` once (untimed), ``prepare()`` before each run (untimed), ``run(state)``."""

    def __init__(self, setup, run, prepare=lambda: None):
        self.setup, self.run, self.prepare = setup, run, prepare


def _ops(cfg: Path, path: Path, out_dir: Path) -> dict[str, Op]:
    """Every measured operation by name.  Writes come twice: to a new file (the
    target is removed before each run, untimed) and over an existing file."""
    py = _pytorchyolo()

    def fresh(name: str):
        def prepare():
            (out_dir / name).unlink(missing_ok=True)
        return prepare

    def loaded_model():
        m = _our_model(cfg)
        m.load_weights(path)
        return m

    def raw_data():
        return np.fromfile(path, dtype=np.uint8)

    def tofile(name: str, sync: bool):
        def run(a):
            with open(out_dir / name, "wb") as fh:
                a.tofile(fh)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
        return run

    def save(name: str, durable: bool):
        return lambda m: m.save_weights(out_dir / name, durable=durable)

    ops = {
        "numpy.fromfile (raw read)": Op(lambda: None, lambda _: np.fromfile(path, dtype=np.float32)),
        "darknet_py load_weights": Op(lambda: _our_model(cfg), lambda m: m.load_weights(path)),
    }
    for where, pre in (("new file", fresh), ("overwrite", lambda name: (lambda: None))):
        ops[f"[{where}] ndarray.tofile"] = Op(raw_data, tofile(f"raw_{where}.bin", False),
                                              pre(f"raw_{where}.bin"))
        ops[f"[{where}] ndarray.tofile + fsync"] = Op(raw_data, tofile(f"rawsync_{where}.bin", True),
                                                      pre(f"rawsync_{where}.bin"))
        ops[f"[{where}] save_weights (default)"] = Op(
            loaded_model, save(f"ours_{where}.weights", False), pre(f"ours_{where}.weights"))
        ops[f"[{where}] save_weights(durable=True)"] = Op(
            loaded_model, save(f"ourssync_{where}.weights", True), pre(f"ourssync_{where}.weights"))
    if py is not None:
        def py_setup():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return py(str(cfg))

        def py_loaded():
            m = py_setup()
            m.load_darknet_weights(str(path))
            return m

        ops["pytorchyolo load_darknet_weights"] = Op(py_setup, lambda m: m.load_darknet_weights(str(path)))
        for where, pre in (("new file", fresh), ("overwrite", lambda name: (lambda: None))):
            name = f"py_{where}.weights"
            ops[f"[{where}] pytorchyolo save_darknet_weights"] = Op(
                py_loaded, lambda m, n=name: m.save_darknet_weights(str(out_dir / n)), pre(name))
    return ops


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _child(cfg: str, path: str, out_dir: str, name: str) -> None:
    """Peak extra memory of one operation, printed as JSON (run in a fresh process)."""
    op = _ops(Path(cfg), Path(path), Path(out_dir))[name]
    state = op.setup()
    op.prepare()
    with open("/proc/self/clear_refs", "w") as fh:   # reset VmHWM to the current RSS
        fh.write("5")
    base = _status_kb("VmRSS")
    op.run(state)
    print(json.dumps({"base_kb": base, "peak_kb": _status_kb("VmHWM")}))


def _peak_extra(cfg: Path, path: Path, out_dir: Path, name: str) -> float | None:
    cmd = [sys.executable, __file__, "--child", name, "--cfg", str(cfg), "--file", str(path),
           "--out", str(out_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        print(f"  (memory of {name!r} not measured: {res.stderr.strip().splitlines()[-1:]})")
        return None
    d = json.loads(res.stdout.strip().splitlines()[-1])
    return (d["peak_kb"] - d["base_kb"]) * 1024 / FILE_BYTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--conformance")
    ap.add_argument("--child")
    ap.add_argument("--cfg")
    ap.add_argument("--file")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        _child(args.cfg, args.file, args.out, args.child)
        return
    cfg = _conformance(args.conformance)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_weights_") as tmp:
        tmp = Path(tmp)
        path = tmp / "yolov3_random.weights"
        _make_file(cfg, path)
        print(f"file: {path.name}, {path.stat().st_size:,} bytes (yolov3.cfg, random values)")
        ops = _ops(cfg, path, tmp)
        if "pytorchyolo load_darknet_weights" not in ops:
            print("pytorchyolo not installed ('pip install pytorchyolo --no-deps'): not compared")
        made: dict[object, object] = {}            # one loaded model / array per setup function
        states = {}
        for name, op in ops.items():
            if op.setup not in made:
                made[op.setup] = op.setup()
            states[name] = made[op.setup]
        times: dict[str, list[float]] = {name: [] for name in ops}
        order = list(ops)
        rng = random.Random(0)
        for _ in range(args.repeat):     # interleaved in a shuffled order, so drifts hit all alike
            rng.shuffle(order)
            for name in order:
                op = ops[name]
                op.prepare()
                os.sync()                # no dirty backlog from the previous write (untimed)
                t = time.perf_counter()
                op.run(states[name])
                times[name].append(time.perf_counter() - t)
        del states, made
        mem = {name: _peak_extra(cfg, path, tmp, name) for name in ops}
        print(f"\n{'operation':<46}{'min s':>8}{'median s':>10}{'peak extra mem':>16}")
        for name in ops:
            m = mem[name]
            print(f"{name:<46}{min(times[name]):8.3f}{median(times[name]):10.3f}"
                  f"{('-' if m is None else f'{m:.2f}x file'):>16}")

        def ratio(a: str, b: str) -> str:
            if a not in times or b not in times:
                return "n/a"
            return (f"{min(times[a]) / min(times[b]):5.2f} (medians "
                    f"{median(times[a]) / median(times[b]):.2f})")

        print("\nratios, min over runs (targets: <= 1.5 x the raw numpy operation, < 1 x pytorchyolo):")
        print(f"  load / numpy.fromfile                      {ratio('darknet_py load_weights', 'numpy.fromfile (raw read)')}")
        print(f"  load / pytorchyolo load                    {ratio('darknet_py load_weights', 'pytorchyolo load_darknet_weights')}")
        for where in ("new file", "overwrite"):
            w = f"[{where}] "
            print(f"  {where}:")
            print(f"    save (default) / tofile                  {ratio(w + 'save_weights (default)', w + 'ndarray.tofile')}")
            print(f"    save(durable=True) / tofile + fsync      {ratio(w + 'save_weights(durable=True)', w + 'ndarray.tofile + fsync')}")
            print(f"    save (default) / pytorchyolo save        {ratio(w + 'save_weights (default)', w + 'pytorchyolo save_darknet_weights')}")
            print(f"    save(durable=True) / pytorchyolo save    {ratio(w + 'save_weights(durable=True)', w + 'pytorchyolo save_darknet_weights')}")


if __name__ == "__main__":
    main()
