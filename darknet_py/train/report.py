"""What a training run prints: darknet-style log lines, to the console (through
the tqdm bar when one is shown) and to ``<cfg>_train.log``, warnings on stderr,
optional TensorBoard scalars.  Only the main process logs."""
from __future__ import annotations

import sys
from pathlib import Path

from .trainer import PassResult


class Log:
    """``log(msg)`` writes a line; ``log.warn(msg)`` a ``WARNING:`` line (on stderr).
    ``path`` None (a rank other than 0): silent."""

    def __init__(self, path: Path | None, bar=None, tensorboard: str | None = None):
        self.fh = open(path, "a", encoding="utf-8") if path else None
        self.bar = bar
        self.active = path is not None
        self.writer = None
        if self.active and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # an optional dependency
            self.writer = SummaryWriter(tensorboard)

    def scalars(self, i: int, **values: float) -> None:
        """TensorBoard scalars of iteration ``i`` (when ``tensorboard`` was given)."""
        for tag, value in values.items() if self.writer else ():
            self.writer.add_scalar(tag, value, i)

    def __call__(self, msg: str, stream=None) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(msg, file=stream)
        else:
            print(msg, file=stream or sys.stdout, flush=True)
        self.fh.write(msg + "\n")
        self.fh.flush()

    def warn(self, msg: str) -> None:
        self(f"WARNING: {msg}", sys.stderr)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.fh:
            self.fh.close()


def header_line(name: str, model, trainer, world: int, device) -> str:
    return (f"{name}: {len(model.module_list)} layers, {sum(p.numel() for p in model.parameters())} "
            f"parameters, batch {trainer.update_batch} = {trainer.subdivisions} x "
            f"{trainer.mini_batch}, max_batches {trainer.max_batches}, starting at iteration "
            f"{trainer.iteration} (seen {trainer.seen}), {world} process(es) on {device}")


def heads_text(p: PassResult) -> str:
    """Per head of a pass, darknet's ``Region Avg IOU ... count`` figures."""
    nan = float("nan")
    return " | ".join(
        f"L{s['layer']} iou {s.get('avg_iou', nan):.3f} cls {s.get('cls', nan):.3f} "
        f"obj {s.get('obj', nan):.3f} noobj {s.get('no_obj', nan):.4f} "
        f".5R {s.get('recall50', nan):.2f} n {s.get('count', 0)}" for s in p.stats)


def iteration_line(i: int, loss: float, avg: float, rate: float, seconds: float, images: int,
                   seen: int, last: PassResult) -> str:
    """darknet's ``i: loss, avg, rate, seconds, images`` line, plus the last pass's heads."""
    return (f"{i}: loss {loss:.4f}, avg {avg:.4f}, rate {rate:.6g}, {seconds:.2f} s, "
            f"{images} images, seen {seen} | {heads_text(last)}")


def done_line(trainer, start: int, seconds: float, images: int, failed: int, final: Path,
              maps: list[tuple[int, float]]) -> str:
    line = (f"done: {trainer.iteration - start} iterations (to iteration {trainer.iteration}), seen "
            f"{trainer.seen}, {seconds:.1f} s, {images / max(seconds, 1e-9):.1f} images/s, {failed} "
            f"images failed to load; wrote {final}")
    return line + (f"\nfinal mAP@0.5 = {100 * maps[-1][1]:.2f} %" if maps else "")
