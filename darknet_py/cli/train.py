#!/usr/bin/env python3
"""Train a darknet model from its cfg the way ``darknet detector train`` does.

    python tools/train.py --data DATA --cfg CFG [--weights W] [--clear] [--max-batches N] ...
    python tools/train.py              the built-in job: packaged tiny-shapes.cfg, synthetic shapes
    torchrun --nproc_per_node 2 tools/train.py ...   several processes, one model
    darknet-py train ...               the same (tools/train.py is this file, darknet_py/cli/train.py)

Arguments, model, data, the loop.  Each update is darknet's (``Trainer``: its loss deltas, BN
backward, SGD with burn-in and the rate policy, ``seen``; under torchrun it averages the update
buffers and rolling statistics over the processes).  Checkpoints go to backup/ as darknet names
them; ``--resume X_last.pt`` also restores the momentum buffers and the sampler.  Ctrl-C writes _last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__ and (Path(__file__).absolute().parents[1] / "darknet_py").is_dir():
    sys.path.insert(0, str(Path(__file__).absolute().parents[1]))  # run from a checkout

import numpy as np
import torch
from tqdm import tqdm

from darknet_py import Darknet, DarknetError, Trainer
from darknet_py.cfg import parse_cfg, write_cfg
from darknet_py.layers.heads import HEAD_TYPES
from darknet_py.data import (DarknetUpdateSampler, MultiScaleSchedule, dataset_from_coco,
                             dataset_from_files, from_data_config, parse_data_file, train_loader)
from darknet_py.metrics import evaluate_model
from darknet_py.train import distributed as ddp
from darknet_py.train import get_lr as darknet_rate
from darknet_py.train import split_pass
from darknet_py.train.builtin import DATA_DIR, builtin_cfg, builtin_data
from darknet_py.train.chart import draw_chart
from darknet_py.train.checkpoint import (default_map_every, iteration_checkpoint, load_state,
                                         save_state, write_rank_digests)
from darknet_py.train.checks import check_labels, check_schedule
from darknet_py.train.report import Log, done_line, header_line, iteration_line

HELP = "fine-tune from a cfg like `darknet detector train` (also: python tools/train.py)"
NET_FLAGS = ("batch", "subdivisions", "learning_rate", "burn_in", "width", "height", "max_batches",
             "mosaic")  # the flags that override [net] keys
__all__ = ["HELP", "build_parser", "iteration_checkpoint", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data", help=f"darknet .data file (classes, train, valid, names, backup). Default: a "
                     f"synthetic shapes dataset generated once in {DATA_DIR}/")
    a("--cfg", help="darknet cfg of the network. Default: the packaged tiny-shapes.cfg")
    a("--coco", nargs=2, metavar=("ANNOTATIONS", "IMAGES"), help="train on a COCO json (and its "
      "image folder) instead of the .data file's train list; --data then only gives the valid list")
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
    g = p.add_argument_group("overrides of the cfg's [net] keys (a flag given wins)").add_argument
    g("--batch", type=int, help="images per update ([net] batch)")
    g("--subdivisions", type=int, help="passes per update ([net] subdivisions)")
    g("--learning-rate", type=float, help="[net] learning_rate")
    g("--burn-in", type=int, help="[net] burn_in")
    g("--width", type=int, help="network input width ([net] width)")
    g("--height", type=int, help="network input height ([net] height)")
    g("--random", type=float, help="multi-scale training: the last head's random= (0 disables)")
    g("--mosaic", type=int, choices=(0, 1), help="AlexeyAB mosaic augmentation ([net] mosaic)")
    o = p.add_argument_group("training").add_argument
    o("--freeze", type=int, help="freeze layers 0..N (as stopbackward=1 on layer N)")
    o("--mode", choices=("exact", "autograd"), default="exact", help="exact: darknet's own "
      "gradients (default); autograd: plain autograd of the same forward")
    o("--amp", action="store_true", help="mixed precision (float16 autocast, dynamic loss scale): "
      "CUDA and --mode autograd only; faster, not darknet's arithmetic")
    o("--save-every", type=int, default=100,
      help="iterations between <cfg>_last.weights checkpoints (darknet: 100)")
    o("--seed", type=int, default=0, help="seed of the initial weights, the data sampling and "
                                          "augmentation (a rerun repeats the run)")
    o("--log-every", type=int, default=10, help="iterations between log lines")
    o("--no-progress", action="store_true", help="no progress bar")
    o("--tensorboard", help="write TensorBoard scalars here (needs tensorboard)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, world, device = ddp.init_from_env(args.device)  # torchrun sets WORLD_SIZE, RANK
    main_rank = rank == 0
    if args.data is None and args.cfg is None:  # the built-in job
        args.data, args.cfg, args.map = str(builtin_data(main_rank)), str(builtin_cfg()), True
        if main_rank:
            print(f"no --data/--cfg: built-in job, {args.cfg} on the synthetic dataset in {DATA_DIR}/")
    if args.cfg is None or (args.data is None and args.coco is None):
        raise DarknetError("give --cfg and --data (or --coco), or none of them for the built-in job")

    # ---- the cfg with the command line's [net] overrides, the model, darknet's step
    cfg = parse_cfg(args.cfg)
    cfg.net.options.update({k: getattr(args, k) for k in NET_FLAGS if getattr(args, k) is not None})
    for sec in (s for s in cfg.layers if args.random is not None and s.type in HEAD_TYPES):
        sec.options["random"] = args.random
    if args.freeze is not None:
        cfg.layers[args.freeze].options["stopbackward"] = 1
    data = parse_data_file(args.data) if args.data else None
    name, backup = Path(args.cfg).stem, Path(args.backup or (data.backup if data else None) or "backup")
    torch.manual_seed(args.seed)  # darknet's random initial weights, the same on a rerun
    model = Darknet(cfg)
    if args.weights:
        report = model.load_weights(args.weights)
        if main_rank:
            print(report)
    if args.clear:
        model.seen = 0
    trainer = Trainer(model.to(device), mode=args.mode, amp=args.amp)
    minibatch = load_state(args.resume, model, trainer, device) if args.resume else 0
    start, max_batches = trainer.iteration, trainer.max_batches
    origin = args.resume or (args.weights and f"{args.weights}{' (--clear)' * args.clear}") or "new weights"
    schedule_msgs = check_schedule(trainer.schedule, start, max_batches, trainer.seen,
                                   trainer.update_batch, origin)

    # ---- data: darknet's augmentation, whole updates of random images, multi-scale every 10
    train_set = (dataset_from_coco(*args.coco, cfg, seed=args.seed) if args.coco
                 else dataset_from_files(args.data, cfg, "train", seed=args.seed))
    label_msgs = check_labels(train_set.source, cfg.dialect, "COCO json" if args.coco else "train list")
    sizes = MultiScaleSchedule.from_cfg(cfg, seed=args.seed, start_iteration=start)  # random=1
    sampler = DarknetUpdateSampler(len(train_set), trainer.mini_batch, subdivisions=trainer.subdivisions,
                                   size=(model.width, model.height), schedule=sizes, seed=args.seed,
                                   rank=rank, start_minibatch=minibatch)
    loader = iter(train_loader(train_set, sampler, workers=args.workers, pin_memory=device.type == "cuda"))
    valid = from_data_config(data, "valid", dialect=cfg.dialect) if args.map and data else None
    map_every = args.map_every or default_map_every(len(train_set), trainer.update_batch)

    # ---- what the main process shows and writes
    if main_rank:
        backup.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=max_batches, initial=start, unit="it", dynamic_ncols=True) \
        if main_rank and not args.no_progress else None
    log = Log(backup / f"{name}_train.log" if main_rank else None, bar, args.tensorboard)
    log(header_line(name, model, trainer, world, device))
    for msg, warning in (schedule_msgs, label_msgs):
        log(msg)
        if warning:
            log.warn(warning)

    def get_lr(it: int) -> float:  # darknet's get_current_rate: burn-in, then the cfg's policy
        return darknet_rate(it, trainer.schedule)

    cfg_text = write_cfg(cfg)  # the cfg trained: the command line's [net] overrides included

    def save(tag: str, resume: bool = False) -> None:  # <cfg>_<tag>.weights (+ .pt to resume)
        if main_rank:
            model.save_weights(backup / f"{name}_{tag}.weights", durable=True)
            if resume:
                save_state(backup / f"{name}_{tag}.pt", model, trainer, minibatch, cfg_text)

    losses, maps, avg_loss, failed, images_done, t_start = [], [], -1.0, 0, 0, time.perf_counter()
    try:
        while trainer.iteration < max_batches:
            t0 = time.perf_counter()
            batch = next(loader)  # one update: batch images of one size
            minibatch += trainer.subdivisions
            failed += len(batch.failed)
            passes = []
            for j in range(trainer.subdivisions):  # darknet's subdivisions, each adding mini_batch to seen
                x, targets = split_pass(batch.images, batch.targets, j, trainer.mini_batch)
                passes.append(trainer.train_pass(x, targets))
            lr = get_lr(trainer.iteration)  # the rate of the seen the passes reached
            trainer.update()  # darknet's SGD at get_lr(trainer.iteration); averaged over the processes
            i, dt = trainer.iteration, time.perf_counter() - t0
            loss = float(np.mean([p.cost for p in passes])) / trainer.mini_batch
            avg_loss = loss if avg_loss < 0 else avg_loss * 0.9 + loss * 0.1
            images_done += len(batch.images) * world
            losses.append((i, avg_loss))
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", avg=f"{avg_loss:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{len(batch.images) * world / dt:.1f}", refresh=False)
                bar.update(min(i, max_batches) - bar.n)
            log.scalars(i, loss=loss, avg_loss=avg_loss, lr=lr)
            if i % args.log_every == 0 or i == max_batches:
                log(iteration_line(i, loss, avg_loss, lr, dt, images_done, trainer.seen, passes[-1]))
            if valid is not None and main_rank and (i % map_every == 0 or i == max_batches):
                maps.append((i, evaluate_model(model, valid, device=device, coco=False,
                                               workers=args.workers).result.map))
                model.train()
                log(f"{i}: mAP@0.5 = {100 * maps[-1][1]:.2f} %")
                log.scalars(i, mAP50=maps[-1][1])
            if i % args.save_every == 0:
                save("last", resume=True)
                if main_rank:
                    draw_chart(backup / "chart.png", losses, maps, max_batches)
            if iteration_checkpoint(i, cfg.dialect):
                save(str(i))
    except KeyboardInterrupt:
        save("last", resume=True)
        log(f"interrupted at iteration {trainer.iteration}: wrote {name}_last.weights and .pt")
        return 130
    finally:
        if bar is not None:
            bar.close()

    save("last", resume=True)
    save("final")
    seconds = time.perf_counter() - t_start
    if main_rank:
        draw_chart(backup / "chart.png", losses, maps, max_batches)
        log(done_line(trainer, start, seconds, images_done, failed, backup / f"{name}_final.weights",
                      maps))
    if world > 1:  # every rank must hold the same weights: say so, with their digests
        same = write_rank_digests(backup / f"{name}_ranks.json", model, main_rank)
        log(f"ranks' weights identical: {same}")
        ddp.finish()
    log.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DarknetError as exc:
        sys.exit(f"train.py: error: {exc}")
