"""Fine-tune a darknet model from its cfg, the way ``darknet detector train`` does.

    python tools/train.py --data DATA --cfg CFG [--weights W] [--clear] ...
    darknet-py train ...                      (the same)
    python tools/train.py                     (built-in default: synthetic shapes, cfg/tiny-shapes.cfg)

Every update goes through :class:`darknet_py.Trainer` (darknet's exact step:
its loss deltas, batch-norm backward, SGD with burn-in and lr policy, ``seen``
counting).  Around it this script does what darknet's ``train_detector`` does:
darknet's data augmentation and multi-scale resizing, checkpoints in
``backup/`` (``<cfg>_last.weights``, ``<cfg>_<iteration>.weights``,
``<cfg>_final.weights``, written atomically with ``seen``), and optional mAP
evaluation.  It reads top to bottom: arguments, model, data, the loop.

Resume: ``--weights backup/x_last.weights`` continues from the file's ``seen``
(as darknet does); ``--resume backup/x_last.pt`` also restores the momentum
buffers and the data sampler position.  Ctrl-C writes ``_last`` before exiting.

Several processes: ``torchrun --nproc_per_node 2 tools/train.py ...`` trains
with PyTorch DDP (gloo on CPU, nccl on CUDA).  Each rank processes ``batch``
images per update; the update buffers are averaged across ranks before the
update, so every rank applies the same darknet update and keeps identical
weights (darknet's multi-GPU averages weights every few iterations instead).
Rank 0's initial parameters are broadcast to all, and the batch-norm rolling
statistics are averaged over the ranks after every update.  Only rank 0 writes
checkpoints and logs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

HELP = "fine-tune from a cfg like `darknet detector train` (also: python tools/train.py)"

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CFG = REPO / "cfg" / "tiny-shapes.cfg"
DEFAULT_DATA_DIR = REPO / "data" / "synthetic"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", help="darknet .data file (classes, train, valid, names, backup). Default: a "
                     "synthetic shapes dataset generated once in data/synthetic/")
    a("--cfg", help=f"darknet cfg of the network. Default: {DEFAULT_CFG.relative_to(REPO)}")
    a("--coco", nargs=2, metavar=("ANNOTATIONS", "IMAGES"),
      help="train on a COCO json (and its image folder) instead of the .data file's train list; "
           "--data then only gives the valid list for --map (optional)")
    a("--weights", help="start from these weights (.weights, full or partial like "
                        "darknet53.conv.74); without --clear training continues from its seen")
    a("--clear", action="store_true", help="reset seen (the iteration count) to 0, like darknet's -clear")
    a("--resume", help="resume from a .pt training checkpoint (weights, momentum buffers, sampler)")
    a("--max-batches", type=int, help="stop after this many iterations (overrides [net] max_batches)")
    a("--backup", help="folder for checkpoints and logs (default: the .data file's backup=, else backup/)")
    a("--map", action="store_true", help="compute mAP@0.5 on the valid list during training")
    a("--map-every", type=int, help="iterations between mAP evaluations (default: AlexeyAB's rule, "
                                    "4 epochs, at least 100)")
    a("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    g = p.add_argument_group("overrides of the cfg's [net] keys (a flag given wins over the cfg)")
    g.add_argument("--batch", type=int, help="images per update ([net] batch)")
    g.add_argument("--subdivisions", type=int, help="passes per update ([net] subdivisions)")
    g.add_argument("--learning-rate", type=float, help="[net] learning_rate")
    g.add_argument("--burn-in", type=int, help="[net] burn_in")
    g.add_argument("--width", type=int, help="network input width ([net] width)")
    g.add_argument("--height", type=int, help="network input height ([net] height)")
    g.add_argument("--random", type=float, help="multi-scale training: the last head's random= "
                                                "(0 disables)")
    g.add_argument("--mosaic", type=int, choices=(0, 1), help="AlexeyAB mosaic augmentation ([net] mosaic)")
    o = p.add_argument_group("training")
    o.add_argument("--freeze", type=int, help="freeze layers 0..N (as stopbackward=1 on layer N)")
    o.add_argument("--mode", choices=("exact", "autograd"), default="exact",
                   help="exact: darknet's own gradients (default); autograd: plain autograd of the "
                        "same forward")
    o.add_argument("--save-every", type=int, default=100,
                   help="iterations between <cfg>_last.weights checkpoints (darknet: 100)")
    o.add_argument("--seed", type=int, default=0, help="seed of the data sampling and augmentation")
    o.add_argument("--log-every", type=int, default=10, help="iterations between log lines")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--tensorboard", help="write TensorBoard scalars here (needs tensorboard)")
    return p


# --------------------------------------------------------------------------- helpers
def iteration_checkpoint(i: int, dialect: str) -> bool:
    """Whether darknet writes ``<cfg>_<i>.weights`` after iteration ``i``: every
    100 below 1000 then every 10000 (pjreddie); every 10000 (AlexeyAB)."""
    if dialect == "pjreddie":
        return i % 10000 == 0 or (i < 1000 and i % 100 == 0)
    return i % 10000 == 0


def default_map_every(train_images: int, batch: int) -> int:
    """AlexeyAB's ``calc_map_for_each``: four epochs of iterations, at least 100."""
    return max(100, 4 * train_images // max(1, batch))


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def draw_chart(path: Path, losses: list[tuple[int, float]], maps: list[tuple[int, float]],
               max_batches: int) -> None:
    """AlexeyAB-style chart.png: average loss (blue) and mAP% (red) against iterations."""
    import cv2

    from ..io import atomic_write
    W, H, L, B = 1000, 600, 60, 50
    img = np.full((H, W, 3), 255, np.uint8)
    pw, ph = W - 2 * L, H - 2 * B
    top = max([v for _, v in losses] + [1e-6])
    top = 10 ** math.ceil(math.log10(top)) if top > 0 else 1.0
    cv2.rectangle(img, (L, B), (L + pw, B + ph), (0, 0, 0), 1)
    for k in range(11):
        y = B + ph - k * ph // 10
        cv2.line(img, (L - 4, y), (L + pw, y), (220, 220, 220), 1)
        cv2.putText(img, f"{top * k / 10:.2g}", (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{10 * k}%", (L + pw + 5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 200), 1)

    def xy(i: int, v: float, scale: float) -> tuple[int, int]:
        return (L + int(pw * i / max(1, max_batches)), B + ph - int(ph * min(v / scale, 1.0)))

    pts = [xy(i, v, top) for i, v in losses]
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, (200, 0, 0), 1)
    mpts = [xy(i, v, 1.0) for i, v in maps]
    for a, b in zip(mpts, mpts[1:]):
        cv2.line(img, a, b, (0, 0, 200), 2)
    for p in mpts:
        cv2.circle(img, p, 3, (0, 0, 200), -1)
    last = f"loss {losses[-1][1]:.3f}" if losses else ""
    if maps:
        last += f"   mAP@0.5 {100 * maps[-1][1]:.1f}%"
    cv2.putText(img, f"iteration (max {max_batches})   {last}", (L, H - 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    ok, buf = cv2.imencode(".png", img)
    if ok:
        atomic_write(path, buf.tobytes())


def coco_dataset(annotations: str, images: str, cfg, seed: int):
    """A training dataset from a COCO json with the cfg's augmentation."""
    from ..data import AugmentConfig, DetectionDataset, from_coco
    from ..errors import DataError
    source = from_coco(annotations, images)
    aug = AugmentConfig.from_cfg(cfg)
    if source.names is not None and len(source.names) != aug.classes:
        raise DataError(f"the json has {len(source.names)} categories but the cfg's detection "
                        f"layer has classes={aug.classes} ({cfg.file})", annotations)
    return DetectionDataset(source, cfg.net["width"], cfg.net["height"], augment=aug, seed=seed)


class Log:
    """Rank-0 logging to the console (through tqdm when a bar is shown) and a file."""

    def __init__(self, path: Path | None, bar=None):
        self.fh = open(path, "a", encoding="utf-8") if path else None
        self.bar = bar

    def __call__(self, msg: str) -> None:
        if self.fh is None and self.bar is None:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)
        if self.fh:
            self.fh.write(msg + "\n")
            self.fh.flush()


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from .. import Darknet, Trainer
    from ..cfg import parse_cfg
    from ..data import (DarknetBatchSampler, MultiScaleSchedule, dataset_from_files,
                        make_synthetic_dataset, parse_data_file, train_loader)
    from ..errors import DarknetError
    from ..io import atomic_open

    # ---- processes (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0

    # ---- the built-in default job
    if args.data is None and args.cfg is None:
        if main_rank:
            print(f"no --data/--cfg: built-in job on a synthetic dataset in "
                  f"{DEFAULT_DATA_DIR.relative_to(REPO)}/ with {DEFAULT_CFG.relative_to(REPO)}")
            args.data = str(make_synthetic_dataset(DEFAULT_DATA_DIR))
        if world > 1:
            torch.distributed.barrier()
        args.data = args.data or str(make_synthetic_dataset(DEFAULT_DATA_DIR))
        args.cfg = str(DEFAULT_CFG)
        args.map = True
    if args.cfg is None or (args.data is None and args.coco is None):
        raise DarknetError("give --cfg and --data (or --coco), or none of them for the built-in job")

    # ---- cfg, with the command line's overrides of [net]
    cfg = parse_cfg(args.cfg)
    net = cfg.net
    overrides = {"batch": args.batch, "subdivisions": args.subdivisions,
                 "learning_rate": args.learning_rate, "burn_in": args.burn_in,
                 "width": args.width, "height": args.height, "max_batches": args.max_batches,
                 "mosaic": args.mosaic}
    for key, value in overrides.items():
        if value is not None:
            net.options[key] = value
    if args.random is not None:
        for sec in cfg.layers:
            if sec.type in ("yolo", "region", "Gaussian_yolo", "detection"):
                sec.options["random"] = args.random
    if args.freeze is not None:
        cfg.layers[args.freeze].options["stopbackward"] = 1
    data = parse_data_file(args.data) if args.data else None
    cfg_name = Path(args.cfg).stem
    backup = Path(args.backup or (data.backup if data else None) or "backup")
    if data is None:
        args.map = False  # no valid list to evaluate on

    # ---- model and the exact darknet step
    model = Darknet(cfg)
    if args.weights:
        report = model.load_weights(args.weights)
        if main_rank:
            print(report)
    if args.clear:
        model.seen = 0
    model.to(device)
    trainer = Trainer(model, mode=args.mode)
    resume_state = None
    if args.resume:
        resume_state = torch.load(args.resume, map_location=device, weights_only=True)
        model.load_state_dict(resume_state["model"])
        trainer.load_state_dict(resume_state["trainer"])
        model.seen = trainer.seen
    if world > 1:  # every rank starts from rank 0's parameters and statistics
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    max_batches = trainer.max_batches
    start_iteration = trainer.iteration

    # ---- data: darknet's augmentation, multi-scale every 10 iterations
    if args.coco:
        train_set = coco_dataset(args.coco[0], args.coco[1], cfg, args.seed)
    else:
        train_set = dataset_from_files(args.data, cfg, "train", seed=args.seed)
    schedule = MultiScaleSchedule.from_cfg(cfg, seed=args.seed, start_iteration=start_iteration)
    start_minibatch = resume_state["minibatch"] if resume_state else 0
    sampler = DarknetBatchSampler(len(train_set), trainer.mini_batch,
                                  size=(model.width, model.height),
                                  subdivisions=trainer.subdivisions, schedule=schedule,
                                  seed=args.seed, rank=rank, start_minibatch=start_minibatch)
    loader = iter(train_loader(train_set, sampler, workers=args.workers,
                               pin_memory=device.type == "cuda"))
    map_every = args.map_every or default_map_every(len(train_set), trainer.update_batch)

    # ---- what rank 0 shows and writes
    bar = None
    if main_rank:
        backup.mkdir(parents=True, exist_ok=True)
        if not args.no_progress:
            try:
                from tqdm import tqdm
                bar = tqdm(total=max_batches, initial=min(start_iteration, max_batches),
                           unit="it", dynamic_ncols=True)
            except ImportError:
                bar = None
    log = Log(backup / f"{cfg_name}_train.log" if main_rank else None, bar)
    writer = None
    if main_rank and args.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(args.tensorboard)
        except ImportError:
            log("tensorboard is not installed: no TensorBoard scalars")
    log(f"{cfg_name}: {len(model.module_list)} layers, {sum(p.numel() for p in model.parameters())} "
        f"parameters, {len(train_set)} training images, batch {trainer.update_batch} = "
        f"{trainer.subdivisions} x {trainer.mini_batch}, max_batches {max_batches}, "
        f"starting at iteration {start_iteration} (seen {trainer.seen}), {world} process(es) on {device}")

    def save(name: str, with_state: bool = False) -> None:
        if not main_rank:
            return
        model.save_weights(backup / f"{cfg_name}_{name}.weights", durable=True)
        if with_state:
            state = {"model": model.state_dict(), "trainer": trainer.state_dict(),
                     "minibatch": minibatch, "cfg": Path(args.cfg).read_text(),
                     "iteration": trainer.iteration}
            with atomic_open(backup / f"{cfg_name}_{name}.pt", durable=True) as fh:
                torch.save(state, fh)

    def evaluate() -> float:
        from ..data import from_data_config
        from ..metrics import evaluate_model
        valid = from_data_config(data, "valid", dialect=cfg.dialect)
        ev = evaluate_model(model, valid, device=device, coco=False, workers=args.workers)
        model.train()
        return ev.result.map

    losses: list[tuple[int, float]] = []
    maps: list[tuple[int, float]] = []
    avg_loss = -1.0
    failed_images = 0
    minibatch = start_minibatch
    t_start = time.perf_counter()
    images_done = 0
    try:
        while trainer.iteration < max_batches:
            t0 = time.perf_counter()
            parts, targets = [], []
            for j in range(trainer.subdivisions):
                batch = next(loader)
                minibatch += 1
                failed_images += len(batch.failed)
                t = batch.targets.clone()
                t[:, 0] += j * trainer.mini_batch
                parts.append(batch.images)
                targets.append(t)
            images = torch.cat(parts).to(device, non_blocking=True)
            targets_t = torch.cat(targets).to(device)
            passes = trainer.forward_backward(images, targets_t)
            if world > 1:  # the same update on every rank: average darknet's update buffers
                for buf in trainer.updates.values():
                    dist.all_reduce(buf)
                    buf.div_(world)
            rate = trainer.update()
            if world > 1:  # rolling BN statistics: the mean over the ranks' batches
                for name, buf in model.named_buffers():
                    if name.endswith(("rolling_mean", "rolling_variance")):
                        dist.all_reduce(buf)
                        buf.div_(world)
            i = trainer.iteration
            loss = float(np.mean([p.cost for p in passes])) / trainer.mini_batch
            avg_loss = loss if avg_loss < 0 else avg_loss * 0.9 + loss * 0.1
            images_done += images.shape[0] * world
            dt = time.perf_counter() - t0
            losses.append((i, avg_loss))
            if bar is not None:
                bar.n = min(i, max_batches)
                bar.set_postfix(loss=f"{loss:.3f}", avg=f"{avg_loss:.3f}", lr=f"{rate:.2e}",
                                img_s=f"{images.shape[0] * world / dt:.1f}",
                                size=f"{images.shape[-1]}x{images.shape[-2]}")
                bar.refresh()
            if writer is not None:
                writer.add_scalar("loss", loss, i)
                writer.add_scalar("avg_loss", avg_loss, i)
                writer.add_scalar("lr", rate, i)
            if main_rank and (i % args.log_every == 0 or i == max_batches):
                heads = " | ".join(
                    f"L{s['layer']} iou {s.get('avg_iou', float('nan')):.3f} cls "
                    f"{s.get('cls', float('nan')):.3f} obj {s.get('obj', float('nan')):.3f} "
                    f"noobj {s.get('no_obj', float('nan')):.4f} .5R {s.get('recall50', float('nan')):.2f} "
                    f"n {s.get('count', 0)}" for s in passes[-1].stats)
                log(f"{i}: loss {loss:.4f}, avg {avg_loss:.4f}, rate {rate:.6g}, {dt:.2f} s, "
                    f"{images_done} images, seen {trainer.seen} | {heads}")
            if args.map and (i % map_every == 0 or i == max_batches) and main_rank:
                m = evaluate()
                maps.append((i, m))
                log(f"{i}: mAP@0.5 = {100 * m:.2f} %")
                if writer is not None:
                    writer.add_scalar("mAP50", m, i)
            if i % args.save_every == 0:
                save("last", with_state=True)
                if main_rank:
                    draw_chart(backup / "chart.png", losses, maps, max_batches)
            if iteration_checkpoint(i, cfg.dialect):
                save(str(i))
    except KeyboardInterrupt:
        save("last", with_state=True)
        log(f"interrupted at iteration {trainer.iteration}: wrote {cfg_name}_last.weights and .pt")
        return 130
    finally:
        if bar is not None:
            bar.close()

    save("last", with_state=True)
    save("final")
    seconds = time.perf_counter() - t_start
    if main_rank:
        draw_chart(backup / "chart.png", losses, maps, max_batches)
        log(f"done: {trainer.iteration} iterations, seen {trainer.seen}, {seconds:.1f} s, "
            f"{images_done / max(seconds, 1e-9):.1f} images/s, {failed_images} images failed to "
            f"load; wrote {backup / (cfg_name + '_final.weights')}")
        if maps:
            log(f"final mAP@0.5 = {100 * maps[-1][1]:.2f} %")
        if writer is not None:
            writer.close()
    if world > 1:
        digests = [None] * world
        dist.all_gather_object(digests, param_digest(model))
        if main_rank:
            log(f"ranks' weights identical: {len(set(digests)) == 1}")
            with atomic_open(backup / f"{cfg_name}_ranks.json") as fh:
                fh.write(json.dumps({"digests": digests}).encode())
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
