"""What a training run prints: darknet-style log lines, to the console (through
the tqdm bar when one is shown) and to ``<cfg>_train.log``; warnings also go
to stderr.  Only the main process logs."""
from __future__ import annotations

import sys
from pathlib import Path

from .trainer import PassResult


class Log:
    """``log(msg)`` writes a line; ``log.warn(msg)`` a ``WARNING:`` line (on stderr).
    ``path`` None (a rank other than 0): silent."""

    def __init__(self, path: Path | None, bar=None):
        self.fh = open(path, "a", encoding="utf-8") if path else None
        self.bar = bar
        self.active = path is not None

    def __call__(self, msg: str, stream=None) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, file=stream or sys.stdout, flush=True)
        self.fh.write(msg + "\n")
        self.fh.flush()

    def warn(self, msg: str) -> None:
        self(f"WARNING: {msg}", sys.stderr)

    def close(self) -> None:
        if self.fh:
            self.fh.close()


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
