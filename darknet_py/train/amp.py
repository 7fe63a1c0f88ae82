"""Mixed precision for ``mode="autograd"`` on CUDA (``Trainer(..., amp=True)``).

Not darknet's arithmetic, and not exact: the forward runs under
``torch.autocast`` (convolutions in float16; batch norm statistics, the heads
and the loss in float32) and the loss is multiplied by a dynamic scale before the
backward, so that small float16 gradients do not flush to zero.  The gradients
are divided by the scale again before they reach darknet's update buffers; a pass
whose gradients overflowed adds nothing (its images are lost to that update) and
halves the scale; after ``growth_interval`` passes without an overflow the scale
doubles.  darknet's SGD (:mod:`.update`) is unchanged and runs in float32.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

#: device type -> the autocast dtype of its mixed precision
AMP_DTYPES: dict[str, torch.dtype] = {"cuda": torch.float16}


class LossScale:
    """The dynamic loss scale: ``scale`` (a power of two), halved on an overflow,
    doubled after ``growth_interval`` passes in a row without one."""

    def __init__(self, init: float = 2.0 ** 16, growth_interval: int = 2000,
                 minimum: float = 1.0):
        self.scale = float(init)
        self.growth_interval = int(growth_interval)
        self.minimum = float(minimum)
        self.good = 0           # passes since the last overflow or growth
        self.skipped = 0        # passes dropped for an overflow, in all

    def unscale_(self, grads: Iterable[Tensor]) -> bool:
        """Divide ``grads`` in place by the scale; True when all of them are finite
        (otherwise the scale is halved and the caller drops the pass)."""
        grads = list(grads)
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            self.scale = max(self.minimum, self.scale / 2)
            self.good = 0
            self.skipped += 1
            return False
        inv = 1.0 / self.scale
        for g in grads:
            g.mul_(inv)             # a power of two: exact
        self.good += 1
        if self.good >= self.growth_interval:
            self.scale *= 2
            self.good = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good": self.good, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good = int(state["good"])
        self.skipped = int(state.get("skipped", 0))
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"loss scale {self.scale} must be a positive number")
