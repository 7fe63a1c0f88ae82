"""Inference-only speed-ups that keep darknet's numbers (to ~1e-6 relative).

:func:`fuse` folds every ``[convolutional]`` layer's batch normalisation
into its weights and bias (in float64, with the dialect's epsilon rule), so a
layer is one ``conv2d`` with bias plus its activation:

* pjreddie: ``w' = w * s / (sqrt(var) + 1e-6)``, ``b' = beta - mean * s / (sqrt(var) + 1e-6)``
* AlexeyAB: ``w' = w * s / sqrt(var + 1e-5)``,   ``b' = beta - mean * s / sqrt(var + 1e-5)``

(AlexeyAB's own detector does the same fold, ``fuse_conv_batchnorm``.)  A fused
model is for inference only: its layers cannot be written back to a
``.weights`` file (:class:`~darknet_py.errors.ConvertError`), train the unfused one.

:func:`inference_model` = eval mode + no gradients + :func:`fuse` + optional
``channels_last``, what :mod:`darknet_py.detect` runs.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConvertError
from .layers.conv import Convolutional
from .layers.norm import BN_EPS

# activations with a faster torch equivalent giving the same float32 values
_FAST_ACTIVATIONS = {
    "leaky": lambda x: F.leaky_relu(x, 0.1, inplace=True),
    "relu": lambda x: F.relu(x, inplace=True),
    "linear": lambda x: x,
}


class FusedConvolutional(nn.Module):
    """A ``[convolutional]`` layer with its batch norm folded in: one
    ``conv2d(x, w', b')`` + activation.  Keeps the layer's ``index``,
    ``sources``, ``section``, ``in_shape``/``out_shape``."""

    type = "convolutional"

    def __init__(self, conv: Convolutional):
        super().__init__()
        self.index, self.section, self.dialect = conv.index, conv.section, conv.dialect
        self.in_shape, self.out_shape, self.sources = conv.in_shape, conv.out_shape, list(conv.sources)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weights.detach().double()
        b = conv.biases.detach().double()
        if conv.batch_normalize:
            var = conv.rolling_variance.detach().double()
            if conv.dialect == "pjreddie":
                std = torch.sqrt(var) + BN_EPS["pjreddie"]
            else:
                std = torch.sqrt(var + BN_EPS["alexeyab"])
            inv = conv.scales.detach().double() / std
            w = w * inv.view(-1, 1, 1, 1)
            b = b - conv.rolling_mean.detach().double() * inv
        self.weight = nn.Parameter(w.to(conv.weights.dtype), requires_grad=False)
        self.bias = nn.Parameter(b.to(conv.weights.dtype), requires_grad=False)
        self.act_name = conv.act_name
        self.activation = _FAST_ACTIVATIONS.get(conv.act_name, conv.activation)

    @property
    def is_head(self) -> bool:
        return False

    def darknet_tensors(self):
        raise ConvertError(f"layer {self.index}: a fused model cannot be saved as darknet weights "
                           f"(its batch norm is folded into the convolution); save the unfused model")

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(y)

    def extra_repr(self) -> str:
        c, h, w = self.in_shape
        oc, oh, ow = self.out_shape
        return f"{self.index}: fused convolutional {c}x{h}x{w} -> {oc}x{oh}x{ow} {self.act_name}"


def fuse(model, inplace: bool = False):
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose
    ``[convolutional]`` layers are :class:`FusedConvolutional`."""
    m = model if inplace else copy.deepcopy(model)
    for i, layer in enumerate(m.module_list):
        if isinstance(layer, Convolutional) and getattr(layer, "is_plain", True):
            m.module_list[i] = FusedConvolutional(layer)
    m.fused = True
    return m.eval()


def inference_model(model, fuse_bn: bool = True, channels_last: bool = False):
    """``model`` ready for fast, exact inference: eval mode, no gradients, BN
    folded (a copy; ``model`` is untouched), optionally channels_last weights."""
    m = fuse(model) if fuse_bn else copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        m.channels_last = True
    return m
