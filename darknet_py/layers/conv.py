"""Layers with weights: convolutional, deconvolutional, connected, local, batchnorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import CHANNELWISE, get_activation
from ..builder import BuildContext, register
from ..cfg import Section
from .base import DarknetLayer, flat
from .norm import batchnorm


def activation_for(sec: Section, ctx: BuildContext, key: str = "activation"):
    name = sec[key]
    try:
        return get_activation(name, ctx.dialect)
    except KeyError:
        raise sec.error(f"unknown activation {name!r} for {ctx.dialect} darknet", key) from None


class _BNMixin:
    """Registers darknet's BN parameters on a layer with ``n`` output units."""

    def _init_bn(self, n: int, batch_normalize: bool) -> None:
        self.batch_normalize = bool(batch_normalize)
        self.biases = nn.Parameter(torch.zeros(n))
        if self.batch_normalize:
            self.scales = nn.Parameter(torch.ones(n))
            self.register_buffer("rolling_mean", torch.zeros(n))
            self.register_buffer("rolling_variance", torch.ones(n))

    def _bn_tensors(self) -> list:
        if not self.batch_normalize:
            return []
        return [("scales", self.scales), ("rolling_mean", self.rolling_mean),
                ("rolling_variance", self.rolling_variance)]

    def _bias_shape(self, x: Tensor) -> tuple:
        return (1, -1) + (1,) * (x.dim() - 2)

    def _norm_bias(self, x: Tensor) -> Tensor:
        if self.batch_normalize:
            x = batchnorm(self, x)
        return x + self.biases.view(self._bias_shape(x))


class Convolutional(_BNMixin, DarknetLayer):
    type = "convolutional"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        n, size, groups = sec["filters"], sec["size"], sec["groups"]
        stride_x = sec["stride_x"] if sec["stride_x"] > 0 else sec["stride"]
        stride_y = sec["stride_y"] if sec["stride_y"] > 0 else sec["stride"]
        dilation = sec["dilation"] if size > 1 else 1
        padding = size // 2 if sec["pad"] else sec["padding"]
        if groups < 1 or c % groups or n % groups:
            raise sec.error(f"groups={groups} must divide the input channels ({c}) and filters ({n})",
                            "groups")
        if sec["antialiasing"]:
            from ..errors import UnsupportedLayerError
            raise UnsupportedLayerError(f"layer {ctx.index} [{sec.name}]: antialiasing=1 is not "
                                        f"supported yet", sec.file, sec.line_of("antialiasing"))
        out_h = (h + 2 * padding - size) // stride_y + 1
        out_w = (w + 2 * padding - size) // stride_x + 1
        super().__init__(sec, ctx, (n, out_h, out_w))
        self.n, self.size, self.groups = n, size, groups
        self.stride = (stride_y, stride_x)
        self.padding = padding
        self.dilation = dilation
        self.weights = nn.Parameter(torch.zeros(n, c // groups, size, size))
        self._init_bn(n, sec["batch_normalize"])
        self.act_name = sec["activation"]
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), *self._bn_tensors(), ("weights", self.weights)]

    def conv(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weights, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self._norm_bias(self.conv(x)))

    def flops(self) -> float:
        c = self.in_shape[0]
        _, oh, ow = self.out_shape
        return 2.0 * self.n * self.size * self.size * (c // self.groups) * oh * ow / 1e9


class Deconvolutional(_BNMixin, DarknetLayer):
    type = "deconvolutional"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        n, size, stride = sec["filters"], sec["size"], sec["stride"]
        padding = size // 2 if sec["pad"] else sec["padding"]
        out_h = (h - 1) * stride + size - 2 * padding
        out_w = (w - 1) * stride + size - 2 * padding
        super().__init__(sec, ctx, (n, out_h, out_w))
        self.n, self.size, self.stride, self.padding = n, size, stride, padding
        self.weights = nn.Parameter(torch.zeros(c, n, size, size))
        self._init_bn(n, sec["batch_normalize"])
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), *self._bn_tensors(), ("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(x, self.weights, None, self.stride, self.padding)
        return self.activation(self._norm_bias(y))

    def flops(self) -> float:
        c, h, w = self.in_shape
        return 2.0 * self.n * self.size * self.size * c * h * w / 1e9


class Connected(_BNMixin, DarknetLayer):
    type = "connected"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        inputs, outputs = c * h * w, sec["output"]
        super().__init__(sec, ctx, (outputs, 1, 1))
        self.inputs, self.outputs = inputs, outputs
        self.weights = nn.Parameter(torch.zeros(outputs, inputs))
        self._init_bn(outputs, sec["batch_normalize"])
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), ("weights", self.weights), *self._bn_tensors()]

    def forward(self, x: Tensor) -> Tensor:
        y = self._norm_bias(F.linear(flat(x), self.weights))
        return self.activation(y).view(x.shape[0], self.outputs, 1, 1)

    def flops(self) -> float:
        return 2.0 * self.inputs * self.outputs / 1e9


class Local(DarknetLayer):
    """pjreddie's [local]: one filter bank per output location."""

    type = "local"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        n, size, stride, pad = sec["filters"], sec["size"], sec["stride"], sec["pad"]
        out_h = (h - (1 if pad else size)) // stride + 1
        out_w = (w - (1 if pad else size)) // stride + 1
        super().__init__(sec, ctx, (n, out_h, out_w))
        self.n, self.size, self.stride, self.pad = n, size, stride, pad
        locations = out_h * out_w
        self.weights = nn.Parameter(torch.zeros(locations, n, c * size * size))
        self.biases = nn.Parameter(torch.zeros(n * locations))
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), ("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # [N, c*k*k, L]
        y = torch.einsum("lnk,bkl->bnl", self.weights, cols)
        n, oh, ow = self.out_shape
        y = y + self.biases.view(1, n, oh * ow)
        return self.activation(y.view(x.shape[0], n, oh, ow))

    def flops(self) -> float:
        c = self.in_shape[0]
        n, oh, ow = self.out_shape
        return 2.0 * n * self.size * self.size * c * oh * ow / 1e9


class BatchNorm(_BNMixin, DarknetLayer):
    """[batchnorm]: darknet stores scales, rolling mean and variance; biases stay 0."""

    type = "batchnorm"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self._init_bn(ctx.in_shape[0], True)

    def darknet_tensors(self):
        return self._bn_tensors()

    def forward(self, x: Tensor) -> Tensor:
        return self._norm_bias(x)


register("convolutional")(Convolutional)
register("deconvolutional")(Deconvolutional)
register("connected")(Connected)
register("local")(Local)
register("batchnorm")(BatchNorm)
__all__ = ["Convolutional", "Deconvolutional", "Connected", "Local", "BatchNorm", "CHANNELWISE"]
