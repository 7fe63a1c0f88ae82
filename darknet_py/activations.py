"""Every activation of both darknets' activations.c, by name, in one table.

The formulas are darknet's (``leaky`` slope 0.1, AlexeyAB's ``mish`` with its
softplus threshold and its tanh written as ``2/(1+exp(-2y))-1``), so outputs
agree with the C code to float rounding.  ``ACTIVATIONS[dialect][name]`` maps
to a function ``Tensor -> Tensor``.  Channel-wise activations
(``normalize_channels*``) take NCHW tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Activation = Callable[[Tensor], Tensor]


def linear(x: Tensor) -> Tensor:
    return x


def logistic(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def loggy(x: Tensor) -> Tensor:
    return 2.0 * torch.sigmoid(x) - 1.0


def relu(x: Tensor) -> Tensor:
    return torch.relu(x)


def elu(x: Tensor) -> Tensor:
    return torch.where(x >= 0, x, torch.expm1(x))


def selu(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def relie(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def ramp(x: Tensor) -> Tensor:
    return x * (x > 0) + 0.1 * x


def leaky(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.1 * x)


def tanh_pj(x: Tensor) -> Tensor:
    return torch.tanh(x)


def tanh_ab(x: Tensor) -> Tensor:  # AlexeyAB: 2/(1+exp(-2x)) - 1
    return 2.0 / (1.0 + torch.exp(-2.0 * x)) - 1.0


def plse(x: Tensor) -> Tensor:
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def stair(x: Tensor) -> Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2.0)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


def hardtan(x: Tensor) -> Tensor:
    return torch.clamp(x, -1.0, 1.0)


def lhtan(x: Tensor) -> Tensor:
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def relu6(x: Tensor) -> Tensor:
    return torch.clamp(x, 0.0, 6.0)


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * x * x * x))


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def _softplus(x: Tensor, threshold: float = 20.0) -> Tensor:
    return torch.where(x > threshold, x,
                       torch.where(x < -threshold, torch.exp(x), torch.log(torch.exp(x) + 1.0)))


def mish(x: Tensor) -> Tensor:
    return x * tanh_ab(_softplus(x))


def hard_mish(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


_EPS = 0.0001


def normalize_channels(x: Tensor) -> Tensor:
    pos = torch.where(x > 0, x, torch.zeros_like(x))
    total = _EPS + pos.sum(dim=1, keepdim=True)
    return pos / total


def normalize_channels_softmax(x: Tensor) -> Tensor:
    m = x.max(dim=1, keepdim=True).values
    e = torch.exp(x - m)
    return e / (e.sum(dim=1, keepdim=True) + _EPS)


def normalize_channels_softmax_maxval(x: Tensor) -> Tensor:
    m = x.max(dim=1, keepdim=True).values
    e = torch.exp(x - m)
    return e / (e.sum(dim=1, keepdim=True) + _EPS)


_COMMON: dict[str, Activation] = {
    "linear": linear, "logistic": logistic, "loggy": loggy, "relu": relu, "elu": elu,
    "selu": selu, "relie": relie, "ramp": ramp, "leaky": leaky, "plse": plse,
    "stair": stair, "hardtan": hardtan, "lhtan": lhtan,
}

ACTIVATIONS: dict[str, dict[str, Activation]] = {
    "pjreddie": {**_COMMON, "tanh": tanh_pj},
    "alexeyab": {
        **_COMMON, "tanh": tanh_ab, "relu6": relu6, "gelu": gelu, "swish": swish,
        "mish": mish, "hard_mish": hard_mish, "revleaky": leaky,
        "normalize_channels": normalize_channels,
        "normalize_channels_softmax": normalize_channels_softmax,
        "normalize_channels_softmax_maxval": normalize_channels_softmax_maxval,
    },
}

CHANNELWISE = frozenset({"normalize_channels", "normalize_channels_softmax",
                         "normalize_channels_softmax_maxval"})


def get_activation(name: str, dialect: str) -> Activation:
    """The activation ``name`` of ``dialect``; KeyError if that darknet lacks it."""
    return ACTIVATIONS[dialect][name]
