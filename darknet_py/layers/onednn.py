"""One oneDNN call per inference convolution on CPU: conv + bias + activation.

``torch.ops.mkldnn._convolution_pointwise`` runs the convolution with its bias and
a leaky/relu applied to the accumulator, on weights reordered once into oneDNN's
blocked layout (:func:`pack`), instead of conv2d + a pass per activation + a weight
reorder at every call.  It is a private torch op: where this build lacks it, or the
input is not a CPU float32/bfloat16 NCHW tensor, or a gradient is being recorded,
or under tracing, :func:`op_for` returns None and the caller runs the plain ops.
The activation's values are unchanged (oneDNN's leaky multiplies by the float 0.1f,
as ``F.leaky_relu``; see ``activations.INPLACE``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..activations import _P1F

#: activation name -> (oneDNN post-op, its scalars)
POSTOPS: dict[str, tuple[str, list[float]]] = {
    "leaky": ("leaky_relu", [_P1F]),
    "relu": ("relu", []),
    "linear": ("none", []),
}


class Cache:
    """Derived tensors a module keeps across calls (``key``, ``value``); dropped on
    copy and pickling, rebuilt from the parameters on the next call."""

    def __init__(self) -> None:
        self.key = None
        self.value = None

    def clear(self) -> None:
        self.key = self.value = None

    def __deepcopy__(self, memo) -> "Cache":
        return Cache()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}


def op_for(x: Tensor, weight_dtype: torch.dtype, act_name: str) -> Callable | None:
    """The oneDNN op when it applies to ``x`` (``Tensor[N, C, H, W]``), else None."""
    if (act_name not in POSTOPS or x.device.type != "cpu" or x.dim() != 4
            or x.dtype not in (torch.float32, torch.bfloat16) or x.dtype != weight_dtype
            or (torch.is_grad_enabled() and x.requires_grad)
            or torch.jit.is_tracing() or torch.jit.is_scripting()
            or not torch.backends.mkldnn.is_available()):
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def pack(w: Tensor, padding, stride, dilation, groups: int, x: Tensor) -> Tensor:
    """``w`` (``Tensor[out, in/groups, k, k]``) in oneDNN's blocked layout for inputs like ``x``."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(
        w.detach().contiguous().to_mkldnn(), pair(padding), pair(stride), pair(dilation), groups,
        list(x.shape))


def run(op: Callable, x: Tensor, packed: Tensor, bias: Tensor, padding, stride, dilation,
        groups: int, act_name: str) -> Tensor:
    name, scalars = POSTOPS[act_name]
    return op(x, packed, bias, pair(padding), pair(stride), pair(dilation), groups, name, scalars, "")
