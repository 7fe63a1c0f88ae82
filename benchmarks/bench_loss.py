"""Loss + backward time of the three yolov3 heads, side by side.

    python benchmarks/bench_loss.py [--batch 16] [--size 416] [--truths 10]

Times (CPU by default, ``--device cuda`` if available):

1. darknet_py's darknet-exact [yolo] loss of the 3 heads + backward to the head inputs;
2. pytorchyolo's ``compute_loss`` (``pip install pytorchyolo --no-deps``) on the same
   head tensors and targets, + backward (its ``utils.utils`` module imports
   torchvision/imgaug, which it only needs for other helpers: if they are missing,
   that one module is replaced by a stub providing ``to_cpu``; the loss code runs
   unmodified);
3. one full yolov3 training step (forward + loss + backward) at the same batch,
   and prints the ratios.  Not a test: numbers depend on the machine.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import types
from pathlib import Path

import torch

from darknet_py import Darknet, parse_cfg

REPO = Path(__file__).resolve().parents[1]


def load_pytorchyolo():
    """pytorchyolo's ``compute_loss`` or None when the package is not installed."""
    try:
        from pytorchyolo.utils.loss import compute_loss
        return compute_loss
    except ModuleNotFoundError as e:
        if importlib.util.find_spec("pytorchyolo") is None:
            return None
        missing = e.name
    stub = types.ModuleType("pytorchyolo.utils.utils")
    stub.to_cpu = lambda t: t.detach().cpu()
    sys.modules["pytorchyolo.utils.utils"] = stub
    sys.modules.pop("pytorchyolo.utils.loss", None)
    from pytorchyolo.utils.loss import compute_loss
    print(f"(pytorchyolo.utils.utils stubbed: {missing} is not installed)")
    return compute_loss


def random_targets(batch: int, per_image: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    n = batch * per_image
    img = torch.arange(batch).repeat_interleave(per_image).float()
    cls = torch.randint(0, classes, (n,), generator=gen).float()
    wh = torch.rand(n, 2, generator=gen) * 0.5 + 0.02
    xy = torch.rand(n, 2, generator=gen) * (1 - wh) + wh / 2
    return torch.cat([img[:, None], cls[:, None], xy, wh], 1)


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", default=str(REPO / "cfg" / "yolov3.cfg"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--truths", type=int, default=10, help="truths per image")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dialect", default="pjreddie")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-network", action="store_true", help="skip the full training step")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); on a shared machine 1 avoids "
                         "OpenMP spin contention, which can slow every op by 10-50x")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.set_grad_enabled(True)
    net = Darknet(parse_cfg(Path(args.cfg), dialect=args.dialect), args.size, args.size).to(dev).train()
    heads = [net.module_list[i] for i in net.heads]
    gen = torch.Generator().manual_seed(0)
    classes = heads[0].classes
    targets = random_targets(args.batch, args.truths, classes, gen).to(dev)
    shapes = [(args.batch,) + tuple(net.shapes[i]) for i in net.heads]
    xs = []
    for s in shapes:
        x = torch.randn(s, generator=gen)
        v = x.view(s[0], 3, -1, s[2], s[3])
        v[:, :, 4] -= 4  # objectness logits of a network in training: mostly "no object"
        xs.append(x.to(dev))
    print(f"{len(heads)} heads {[tuple(s[1:]) for s in shapes]}, batch {args.batch}, "
          f"{targets.shape[0]} truths, {args.dialect} [yolo], device {dev}, "
          f"{torch.get_num_threads()} threads")

    def ours():
        leaves = [x.clone().requires_grad_(True) for x in xs]
        total = sum(h.loss(x, targets, (args.size, args.size))[0] for h, x in zip(heads, leaves))
        total.backward()

    t_ours = timeit(ours, args.repeat)
    print(f"darknet_py loss+backward      : {t_ours * 1e3:8.1f} ms")

    compute_loss = load_pytorchyolo()
    t_theirs = None
    if compute_loss is None:
        print("pytorchyolo not installed (pip install pytorchyolo --no-deps): skipped")
    else:
        layers = []
        for h, s in zip(heads, shapes):
            layer = types.SimpleNamespace(
                anchors=torch.tensor([h.anchors[m] for m in h.mask], dtype=torch.float32, device=dev),
                stride=args.size // s[3])
            layers.append(layer)
        model = types.SimpleNamespace(yolo_layers=layers)
        perm = [x.view(x.shape[0], 3, -1, x.shape[2], x.shape[3]).permute(0, 1, 3, 4, 2).contiguous()
                for x in xs]

        def theirs():
            leaves = [p.clone().requires_grad_(True) for p in perm]
            loss, _ = compute_loss(leaves, targets, model)
            loss.backward()

        t_theirs = timeit(theirs, args.repeat)
        print(f"pytorchyolo compute_loss+bwd  : {t_theirs * 1e3:8.1f} ms   "
              f"(darknet_py / pytorchyolo = {t_ours / t_theirs:.2f}x)")

    if not args.no_network:
        img = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(dev)

        def step():
            net.zero_grad(set_to_none=True)
            outs = net(img)
            loss, _ = net.loss(outs, targets)
            loss.backward()

        t0 = time.perf_counter()
        step()
        t_net = time.perf_counter() - t0
        print(f"full yolov3 train step        : {t_net * 1e3:8.1f} ms (1 run, forward+loss+backward)")
        print(f"loss+backward share of a step : {100 * t_ours / t_net:.2f} %  (target < 5 %)")
    if t_theirs is not None:
        print(f"speed vs pytorchyolo          : {t_theirs / t_ours:.2f}x faster" if t_ours < t_theirs
              else f"speed vs pytorchyolo          : {t_ours / t_theirs:.2f}x slower")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
