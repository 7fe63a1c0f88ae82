"""Images/s of one full darknet training step of yolov3-tiny, exact vs autograd mode.

    python benchmarks/bench_train_step.py [--batch 16] [--size 416] [--steps 3] [--device cpu]

One step = ``Trainer.step``: the training-mode forward of the whole batch (one
subdivision), the 2 [yolo] losses, the backward and darknet's SGD update.
``mode="exact"`` back-propagates through batch norm with darknet's own formula
(what darknet computes); ``mode="autograd"`` uses the exact gradient of the same
forward.  Random (deterministic) weights, images and 10 boxes per image.  Prints
both rates (wall clock and per CPU-second of the process, the latter less
sensitive to other load on the machine) and the gap.  Not a test.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from darknet_py import Darknet, Trainer, parse_cfg

REPO = Path(__file__).resolve().parents[1]


def random_targets(batch: int, per_image: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """Tensor[batch*per_image, 6]: (image, class, cx, cy, w, h) normalised."""
    n = batch * per_image
    img = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, classes, (n,), generator=gen).float()
    wh = torch.rand(n, 2, generator=gen) * 0.5 + 0.02
    xy = torch.rand(n, 2, generator=gen) * (1 - wh) + wh / 2
    return torch.cat([img[:, None], cls[:, None], xy, wh], 1)


def make_model(size: int, device: str, seed: int = 0) -> Darknet:
    model = Darknet(parse_cfg(REPO / "cfg" / "yolov3-tiny.cfg"), width=size, height=size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weights"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("scales"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model.to(device)


def rate(mode: str, args, images: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(images/s of wall time, images per CPU-second of this process) over ``args.steps`` steps."""
    model = make_model(args.size, args.device)
    trainer = Trainer(model, mode, batch=args.batch, subdivisions=1)
    trainer.step(images, targets)              # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.step(images, targets)
    if args.device == "cuda":
        torch.cuda.synchronize()
    n = args.steps * args.batch
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (after 1 warm-up)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(args.device)
    targets = random_targets(args.batch, 10, 80, gen).to(args.device)
    print(f"yolov3-tiny {args.size}x{args.size}, batch {args.batch}, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rates = {}
    for mode in ("exact", "autograd"):
        rates[mode] = rate(mode, args, images, targets)
        wall, cpu = rates[mode]
        print(f"  {mode:8s}: {wall:7.2f} images/s   ({cpu:.2f} images per CPU-second)")
    gap = rates["autograd"][0] / rates["exact"][0]
    gap_cpu = rates["autograd"][1] / rates["exact"][1]
    print(f"  autograd / exact = {gap:.3f} wall, {gap_cpu:.3f} CPU time "
          f"(> 1: plain autograd is faster)")

if __name__ == "__main__":
    main()
