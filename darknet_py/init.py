"""Darknet's parameter initialisation for a network built from a cfg.

Darknet fills weights at build time (make_*_layer): convolutional weights with
scale*N(0,1) (pjreddie) or scale*U(-1,1) (AlexeyAB), scale = sqrt(2/fan_in);
connected and local weights scale*U(-1,1); deconvolutional 0.02*N(0,1);
biases 0 and batch-norm scales 1.  The rolling variance starts at 1 here
(darknet allocates it as 0, which only matters for an untrained network in
inference mode, where 0 would blow the output up).  Uses torch's global RNG,
so ``torch.manual_seed`` makes it reproducible.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def _fan_in(w: torch.Tensor) -> int:
    return int(w[0].numel())


def _conv(layer: nn.Module) -> None:
    w = layer.weights
    scale = math.sqrt(2.0 / _fan_in(w))
    if layer.dialect == "pjreddie":
        w.normal_(0.0, scale)
    else:
        w.uniform_(-scale, scale)


def _uniform(layer: nn.Module) -> None:
    w = layer.weights
    fan = w.shape[-1] if layer.type == "local" else w.shape[1]
    scale = math.sqrt(2.0 / fan)
    w.uniform_(-scale, scale)


def _deconv(layer: nn.Module) -> None:
    layer.weights.normal_(0.0, 0.02)


INITIALISERS: dict[str, Callable[[nn.Module], None]] = {
    "convolutional": _conv,
    "connected": _uniform,
    "local": _uniform,
    "deconvolutional": _deconv,
}


@torch.no_grad()
def init_darknet_(model: nn.Module) -> None:
    """Initialise every layer of ``model`` (a Darknet) the way darknet does."""
    for layer in model.module_list:
        fn = INITIALISERS.get(layer.type)
        if fn is not None and isinstance(getattr(layer, "weights", None), torch.Tensor):
            fn(layer)
