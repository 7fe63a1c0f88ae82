"""Pooling: maxpool (darknet padding, -inf outside), avgpool (global), local_avgpool."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..builder import BuildContext, register
from ..cfg import Section
from ..errors import UnsupportedLayerError
from .base import DarknetLayer


class _Window(DarknetLayer):
    """Darknet's pooling window: ``padding`` (total, default size-1) with the
    window starting at ``-padding//2``; out = (W + padding - size)//stride + 1."""

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        size = sec["size"]
        sx = sec["stride_x"] if sec["stride_x"] > 0 else sec["stride"]
        sy = sec["stride_y"] if sec["stride_y"] > 0 else sec["stride"]
        padding = size - 1 if sec["padding"] is None else sec["padding"]
        if sec["antialiasing"]:
            raise UnsupportedLayerError(f"layer {ctx.index} [{sec.name}]: antialiasing=1 is not "
                                        f"supported yet", sec.file, sec.line_of("antialiasing"))
        self.depth = bool(sec["maxpool_depth"])
        if self.depth:
            out = (sec["out_channels"], h, w)
        else:
            out = (c, (h + padding - size) // sy + 1, (w + padding - size) // sx + 1)
        super().__init__(sec, ctx, out)
        self.size, self.stride, self.padding = size, (sy, sx), padding
        before = padding // 2
        self.pads = (before, padding - before, before, padding - before)  # l, r, t, b


class MaxPool(_Window):
    type = "maxpool"

    def forward(self, x: Tensor) -> Tensor:
        if self.depth:
            return _channel_max(x, self.out_shape[0])
        if any(self.pads):
            x = F.pad(x, self.pads, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


def _channel_max(x: Tensor, out_c: int) -> Tensor:
    """AlexeyAB maxpool_depth: out[g] = max over channels k = g (mod out_c)."""
    n, c, h, w = x.shape
    groups = -(-c // out_c)
    if groups * out_c != c:
        fill = x.new_full((n, groups * out_c - c, h, w), float("-inf"))
        x = torch.cat([x, fill], 1)
    return x.view(n, groups, out_c, h, w).amax(dim=1)


class LocalAvgPool(_Window):
    """AlexeyAB [local_avgpool]: the mean over the in-range part of each window."""

    type = "local_avgpool"

    def forward(self, x: Tensor) -> Tensor:
        if self.depth:
            raise NotImplementedError("local_avgpool with maxpool_depth")
        padded = F.pad(x, self.pads)
        total = F.avg_pool2d(padded, self.size, self.stride, divisor_override=1)
        ones = F.pad(torch.ones_like(x[:1, :1]), self.pads)
        count = F.avg_pool2d(ones, self.size, self.stride, divisor_override=1)
        return total / count


class AvgPool(DarknetLayer):
    """[avgpool]: global average over H x W -> (c, 1, 1)."""

    type = "avgpool"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, (ctx.in_shape[0], 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


register("maxpool")(MaxPool)
register("local_avgpool")(LocalAvgPool)
register("avgpool")(AvgPool)
