"""Images/s of one full training update of yolov3-tiny: darknet_py ``mode="exact"``,
``mode="autograd"`` and pytorchyolo's own training step, side by side in one process.

    python benchmarks/bench_train_step.py [--batch 16] [--size 416] [--rounds 3] [--device cpu]

One darknet_py update = ``Trainer.step``: the training-mode forward of the whole
batch (one subdivision), the 2 [yolo] losses, the backward and darknet's SGD
update.  ``mode="exact"`` back-propagates with darknet's own formulas (what darknet
computes); ``mode="autograd"`` is the exact gradient of the same forward.
pytorchyolo's step is what its ``train.py`` does per batch: its model in train
mode, its ``compute_loss``, ``backward``, its optimizer (``Adam`` for a cfg
without ``optimizer=``, as its train.py chooses) and ``zero_grad``.

The same cfg (cfg/yolov3-tiny.cfg), random images and 10 boxes per image for all
three; each timed round runs one update of every engine in turn (interleaved: a
drift of the machine's load hits all alike); the median per engine.  Prints
images/s and the ratios to pytorchyolo.  Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "cfg" / "yolov3-tiny.cfg"
ENGINES = ("exact", "autograd", "pytorchyolo")


def random_targets(batch: int, per_image: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """Tensor[batch*per_image, 6]: (image, class, cx, cy, w, h) normalised."""
    n = batch * per_image
    img = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, classes, (n,), generator=gen).float()
    wh = torch.rand(n, 2, generator=gen) * 0.5 + 0.02
    xy = torch.rand(n, 2, generator=gen) * (1 - wh) + wh / 2
    return torch.cat([img[:, None], cls[:, None], xy, wh], 1)


def make_model(size: int, device: str, seed: int = 0):
    from darknet_py import Darknet, parse_cfg
    model = Darknet(parse_cfg(CFG), width=size, height=size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weights"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("scales"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.to(device)


def ours_step(mode: str, args):
    from darknet_py import Trainer
    trainer = Trainer(make_model(args.size, args.device), mode, batch=args.batch, subdivisions=1)
    return lambda images, targets: trainer.step(images, targets)


def pytorchyolo_step(args):
    """pytorchyolo's per-batch training step (its train.py), on the same cfg."""
    for missing in ("torchvision", "imgaug"):  # imported by its utils, unused by a train step
        try:
            __import__(missing)
        except ImportError:
            sys.modules[missing] = types.ModuleType(missing)
    from pytorchyolo.models import Darknet as PYDarknet
    from pytorchyolo.utils.loss import compute_loss
    model = PYDarknet(str(CFG)).to(args.device)
    model.train()
    hp = model.hyperparams
    params = [p for p in model.parameters() if p.requires_grad]
    if hp.get("optimizer") in (None, "adam"):
        opt = torch.optim.Adam(params, lr=hp["learning_rate"], weight_decay=hp["decay"])
    else:
        opt = torch.optim.SGD(params, lr=hp["learning_rate"], weight_decay=hp["decay"],
                              momentum=hp["momentum"])

    def step(images, targets):
        outputs = model(images)
        loss, _ = compute_loss(outputs, targets, model)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def measure(args) -> dict:
    """{engine: {"images_per_second", "cpu_images_per_second"} or {"error"}}."""
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(args.device)
    targets = random_targets(args.batch, 10, 80, gen).to(args.device)
    steps, result = {}, {}
    for e in args.engines.split(","):
        try:
            steps[e] = pytorchyolo_step(args) if e == "pytorchyolo" else ours_step(e, args)
            steps[e](images, targets)  # warm-up
        except Exception as exc:  # e.g. pytorchyolo not installed
            result[e] = {"error": f"{type(exc).__name__}: {exc}"}
            steps.pop(e, None)
    wall: dict[str, list[float]] = {e: [] for e in steps}
    cpu: dict[str, list[float]] = {e: [] for e in steps}
    for _ in range(args.rounds):
        for e, fn in steps.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn(images, targets)
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall[e].append(time.perf_counter() - t0)
            cpu[e].append(time.process_time() - c0)
    for e in steps:
        result[e] = {"images_per_second": args.batch / statistics.median(wall[e]),
                     "cpu_images_per_second": args.batch / statistics.median(cpu[e])}
    return result


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--rounds", type=int, default=3, help="timed updates per engine (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--json", action="store_true", help="print one JSON line (for bench_speed.py)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    res = measure(args)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"yolov3-tiny {args.size}x{args.size}, batch {args.batch}, {args.device}, torch "
          f"{torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, load average {os.getloadavg()[0]:.1f}; "
          f"median of {args.rounds} interleaved rounds")
    ref = res.get("pytorchyolo", {}).get("images_per_second")
    for e in res:
        r = res[e]
        if "error" in r:
            print(f"  {e:12s} unavailable: {r['error'][:100]}")
            continue
        vs = f"{r['images_per_second'] / ref:6.2f}x pytorchyolo" if ref else ""
        print(f"  {e:12s} {r['images_per_second']:7.2f} images/s ({r['cpu_images_per_second']:.2f} "
              f"per CPU-second)  {vs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
