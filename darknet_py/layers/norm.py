"""Darknet's batch normalisation, in each dialect's numerics.

pjreddie divides by ``sqrt(var) + 1e-6`` (epsilon on the std); AlexeyAB by
``sqrt(var + 1e-5)``.  In training the batch variance is the unbiased one and
it is what goes into the rolling variance, with momentum 0.01 (pjreddie) or
0.1 (AlexeyAB's CPU path).
"""
from __future__ import annotations

import torch
from torch import Tensor

BN_EPS = {"pjreddie": 1e-6, "alexeyab": 1e-5}
BN_MOMENTUM = {"pjreddie": 0.01, "alexeyab": 0.1}


def normalize(x: Tensor, mean: Tensor, var: Tensor, dialect: str) -> Tensor:
    """(x - mean) / std with the dialect's epsilon; mean/var broadcast over dim 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = mean.view(shape)
    var = var.view(shape)
    if dialect == "pjreddie":
        return (x - mean) / (torch.sqrt(var) + BN_EPS[dialect])
    return (x - mean) / torch.sqrt(var + BN_EPS[dialect])


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance over every dim but 1."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims)
    var = x.var(dim=dims, unbiased=True)
    return mean, var


def batchnorm(layer, x: Tensor) -> Tensor:
    """Apply ``layer``'s BN (its ``scales``, ``rolling_mean``, ``rolling_variance``).

    In training mode uses batch statistics, updates the rolling ones and records
    the batch statistics in ``layer.last_batch_stats``; the bias is not added.
    ``layer.bn_function`` may replace the training-mode computation (darknet's
    own backward, see :mod:`darknet_py.train.darknet_grad`).
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if layer.training:
        fn = getattr(layer, "bn_function", None)
        if fn is not None:
            y, mean, var = fn(x, layer.scales, layer.dialect)
        else:
            mean, var = batch_stats(x)
            y = normalize(x, mean, var, layer.dialect) * layer.scales.view(shape)
        with torch.no_grad():
            m = BN_MOMENTUM[layer.dialect]
            layer.rolling_mean.mul_(1 - m).add_(m * mean.detach())
            layer.rolling_variance.mul_(1 - m).add_(m * var.detach())
        layer.last_batch_stats = (mean.detach(), var.detach())
        return y
    return normalize(x, layer.rolling_mean, layer.rolling_variance, layer.dialect) * layer.scales.view(shape)
