"""Pooling: [maxpool] (window, depth, antialiasing), [local_avgpool], [avgpool] (global).

darknet's pooling window: ``padding`` is the TOTAL padding (default size-1) and
the first window starts at ``-padding/2``; out = (W + padding - size)/stride + 1
(C division).  Positions outside the input are skipped: a max starts from
``-FLT_MAX``, an average divides by the number of positions inside.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..builder import BuildContext, register
from ..cfg import Section
from .base import DarknetLayer
from .blur import Blur, blur_out_shape
from .common import c_div, unsupported

FLT_MAX = float(torch.finfo(torch.float32).max)


class _Window(DarknetLayer):
    """The window geometry of ``make_maxpool_layer`` (shared by maxpool and local_avgpool)."""

    def __init__(self, sec: Section, ctx: BuildContext, out_depth: int | None = None,
                 antialiasing: int = 0):
        c, h, w = ctx.in_shape
        size = sec["size"]
        sx, sy = sec["stride_x"], sec["stride_y"]  # default: stride (pjreddie reads only stride)
        padding = sec["padding"]
        if size < 1:
            raise sec.error(f"size={size} must be >= 1", "size")
        if sx < 1 or sy < 1:
            raise sec.error(f"stride must be >= 1 (got {sy}x{sx})", "stride")
        host = (1, 1) if antialiasing else (sy, sx)
        if out_depth is not None:
            pooled = (out_depth, h, w)
        else:
            pooled = (c, c_div(h + padding - size, host[0]) + 1, c_div(w + padding - size, host[1]) + 1)
        out = blur_out_shape(pooled, antialiasing, (sy, sx)) if antialiasing else pooled
        super().__init__(sec, ctx, out)
        self.size, self.stride, self.padding = size, host, padding
        self.layer_stride = (sy, sx)
        self.pooled_shape = pooled
        # the first window starts at -padding/2 (C division); F.pad with the total padding
        # then gives darknet's windows and out size for any input size
        before = -c_div(-padding, 2)
        self.pads = (before, padding - before, before, padding - before)  # l, r, t, b
        self.blur = Blur(pooled[0], antialiasing, (sy, sx)) if antialiasing else None

    def _padded(self, x: Tensor, value: float) -> Tensor:
        return F.pad(x, self.pads, value=value) if any(self.pads) else x

    def _post(self, y: Tensor) -> Tensor:
        return self.blur(y) if self.blur is not None else y


class MaxPool(_Window):
    """``Tensor[N, C, H, W] -> Tensor[N, C, H', W']``; with AlexeyAB's
    ``maxpool_depth=1``: ``-> Tensor[N, out_channels, H, W]``, the max over channels
    g, g + out_channels, g + 2*out_channels ...; ``antialiasing``: stride-1 pooling
    then darknet's fixed blur at the layer's stride."""

    type = "maxpool"

    def __init__(self, sec: Section, ctx: BuildContext):
        depth = bool(sec["maxpool_depth"])
        aa = sec["antialiasing"]
        if depth and aa:
            raise unsupported(sec, ctx, "maxpool_depth=1 with antialiasing=1: darknet returns "
                              "before the blur but sizes the next layer after it", "antialiasing")
        out_c = sec["out_channels"] if depth else None
        if depth and out_c < 1:
            raise sec.error(f"out_channels={out_c} must be >= 1", "out_channels")
        super().__init__(sec, ctx, out_c, aa)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        if self.depth:
            return _channel_max(x, self.out_shape[0])
        h, w = int(x.shape[-2]), int(x.shape[-1])   # plain ints under tracing too
        (top, bottom), (left, right) = self._reach(h, 0), self._reach(w, 1)
        if (not self.training and self.size <= _SLICE_MAX_SIZE and not torch.jit.is_tracing()
                and not (torch.is_grad_enabled() and x.requires_grad)):
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom), value=_lowest(x.dtype))
            return self._post(_window_max(x, self.size, self.stride))
        if top == bottom and left == right and 2 * top <= self.size and 2 * left <= self.size:
            # the windows reach equally far out on both sides (none at all, e.g. 2x2/2 on an
            # even size; or SPP's centred windows): torch's own padding, which every window
            # overlaps the input through, gives darknet's max without a padded copy
            y = F.max_pool2d(x, self.size, self.stride, (top, left))
        else:
            # windows reaching outside the input take -FLT_MAX there, as darknet's running max
            # (the dtype's lowest: a float16 export cannot hold -FLT_MAX)
            low = -FLT_MAX if x.dtype == torch.float32 else -float(torch.finfo(x.dtype).max)
            y = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=low), self.size, self.stride)
        return self._post(y)

    def _reach(self, n: int, axis: int) -> tuple[int, int]:
        """How far darknet's windows reach outside an input of size ``n``: (before, after)."""
        before = self.pads[2 - 2 * axis]
        out = c_div(n + self.padding - self.size, self.stride[axis]) + 1
        after = max(0, (out - 1) * self.stride[axis] - before + self.size - n)
        return before, after


#: windows up to this size are pooled by elementwise maxima of shifted views when no
#: gradient is recorded: the same values as ``max_pool2d``, without its index output,
#: about twice as fast on channels-last inputs (autograd keeps ``max_pool2d``, whose
#: gradient goes to one position of a tie, as darknet's does)
_SLICE_MAX_SIZE = 3


def _lowest(dtype: torch.dtype) -> float:
    """darknet's -FLT_MAX, or the lowest finite value of a narrower (bf16/fp16) dtype."""
    return -FLT_MAX if torch.finfo(dtype).bits >= 32 else float(torch.finfo(dtype).min)


def _window_max(x: Tensor, size: int, stride: tuple[int, int]) -> Tensor:
    """``Tensor[N, C, H, W] -> Tensor[N, C, (H - size)/sy + 1, (W - size)/sx + 1]``:
    the max of each size x size window (no padding)."""
    sy, sx = stride
    oh = (x.shape[-2] - size) // sy + 1
    ow = (x.shape[-1] - size) // sx + 1
    views = [x[:, :, dy: dy + sy * (oh - 1) + 1: sy, dx: dx + sx * (ow - 1) + 1: sx]
             for dy in range(size) for dx in range(size)]
    if len(views) == 1:
        return views[0].clone()
    y = torch.maximum(views[0], views[1])
    for v in views[2:]:
        torch.maximum(y, v, out=y)
    return y


def _channel_max(x: Tensor, out_c: int) -> Tensor:
    """``Tensor[N, C, H, W] -> Tensor[N, out_c, H, W]``: out[g] = max(-FLT_MAX, x[g], x[g+out_c], ...)."""
    n, c, h, w = x.shape
    groups = -(-c // out_c)
    if groups * out_c != c:
        fill = x.new_full((n, groups * out_c - c, h, w), -FLT_MAX)
        x = torch.cat([x, fill], 1)
    return x.view(n, groups, out_c, h, w).amax(dim=1).clamp_min(-FLT_MAX)


class LocalAvgPool(_Window):
    """AlexeyAB [local_avgpool]: the mean over the part of each window inside the input
    (0/0 = NaN for a window wholly outside, as darknet)."""

    type = "local_avgpool"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx)  # parse_local_avgpool passes depth 0, no antialiasing

    def forward(self, x: Tensor) -> Tensor:
        total = F.avg_pool2d(self._padded(x, 0.0), self.size, self.stride, divisor_override=1)
        ones = self._padded(x.new_ones(1, 1, *x.shape[2:]), 0.0)
        count = F.avg_pool2d(ones, self.size, self.stride, divisor_override=1)
        return total / count


class AvgPool(DarknetLayer):
    """[avgpool]: global average, ``Tensor[N, C, H, W] -> Tensor[N, C, 1, 1]``."""

    type = "avgpool"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, (ctx.in_shape[0], 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


register("maxpool")(MaxPool)
register("local_avgpool")(LocalAvgPool)
register("avgpool")(AvgPool)
