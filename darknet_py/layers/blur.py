"""The antialiasing blur darknet appends to a conv or maxpool (``antialiasing=``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import c_div


def blur_kernel(kind: int) -> tuple[list[list[float]], int]:
    """darknet's fixed antialiasing kernel and padding: ``antialiasing=2`` is 2x2, else 3x3."""
    if kind == 2:
        return [[0.25, 0.25], [0.25, 0.25]], 0
    return [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]], 1


def blur_out_shape(shape: tuple[int, int, int], kind: int, stride: tuple[int, int]
                   ) -> tuple[int, int, int]:
    c, h, w = shape
    k, pad = blur_kernel(kind)
    size = len(k)
    return (c, c_div(h + 2 * pad - size, stride[0]) + 1, c_div(w + 2 * pad - size, stride[1]) + 1)


class Blur(nn.Module):
    """The depthwise blur darknet appends to an antialiased conv/maxpool (``l.input_layer``).

    ``Tensor[N, C, H, W] -> Tensor[N, C, H', W']`` with H' = (H + 2*pad - size)/stride_y + 1."""

    def __init__(self, channels: int, kind: int, stride: tuple[int, int]):
        super().__init__()
        k, self.pad = blur_kernel(kind)
        self.stride = stride
        kernel = torch.tensor(k, dtype=torch.float32)
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).contiguous(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), None, self.stride, self.pad, 1, x.shape[1])
