"""Darknet's batch normalisation, in each dialect's numerics.

pjreddie divides by ``sqrt(var) + 1e-6`` (epsilon on the std); AlexeyAB by
``sqrt(var + 1e-5)``.  In training the batch statistics are the mean and the
*unbiased* variance over (batch, H, W); the rolling statistics become
``a*rolling + b*batch_stat`` on every training forward (once per subdivision),
with ``(a, b) = (0.99, 0.01)`` for pjreddie and ``(0.9, 0.1)`` for AlexeyAB's
CPU path (``scal_cpu`` then ``axpy_cpu``: two float32 roundings, reproduced).

In training, ``layer.bn_function`` (when set) computes the normalised output:
the trainer's exact mode plugs darknet's own backward in there (see
:mod:`darknet_py.train.darknet_grad`); otherwise autograd differentiates the
forward below.
"""
from __future__ import annotations

import torch
from torch import Tensor

BN_EPS = {"pjreddie": 1e-6, "alexeyab": 1e-5}
#: weight of the batch statistic in the rolling update (the rolling one keeps 1 - this)
BN_MOMENTUM = {"pjreddie": 0.01, "alexeyab": 0.1}
#: darknet's literal factors of the rolling update: (on the rolling value, on the batch statistic)
ROLLING = {"pjreddie": (0.99, 0.01), "alexeyab": (0.9, 0.1)}
#: the same for a [connected] layer: pjreddie's forward_batchnorm_layer, AlexeyAB's own
#: forward_connected_layer (.95/.05)
CONNECTED_ROLLING = {"pjreddie": (0.99, 0.01), "alexeyab": (0.95, 0.05)}


def _channel_shape(x: Tensor) -> tuple[list[int], tuple[int, ...]]:
    return [0] + list(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)


def std_of(var: Tensor, dialect: str) -> Tensor:
    """The divisor of each dialect: ``sqrt(var) + 1e-6`` or ``sqrt(var + 1e-5)``."""
    if dialect == "pjreddie":
        return torch.sqrt(var) + BN_EPS[dialect]
    return torch.sqrt(var + BN_EPS[dialect])


def normalize(x: Tensor, mean: Tensor, var: Tensor, dialect: str) -> Tensor:
    """(x - mean) / std with the dialect's epsilon; mean/var Tensor[C] broadcast over dim 1."""
    _, shape = _channel_shape(x)
    return (x - mean.view(shape)) / std_of(var.view(shape), dialect)


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of Tensor[N, C, ...] over every dim but 1."""
    dims, _ = _channel_shape(x)
    # mean, then the variance around it, like darknet's mean_cpu/variance_cpu (torch.var_mean
    # rounds differently, enough to flip a near-tie of the yolov2-tiny trajectory at update 3)
    return x.mean(dims), x.var(dims, unbiased=True)


def _train_normalize(x: Tensor, scales: Tensor, dialect: str) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode ``x_hat * scales`` with batch statistics, differentiable by autograd."""
    _, shape = _channel_shape(x)
    mean, var = batch_stats(x)
    y = (x - mean.view(shape)) * (scales / std_of(var, dialect)).view(shape)
    return y, mean, var


@torch.no_grad()
def update_rolling(layer, mean: Tensor, var: Tensor) -> None:
    """``rolling = a*rolling + b*batch_stat`` as darknet's scal_cpu + axpy_cpu (float32);
    ``(a, b)``: the layer's ``rolling_factors`` if it has them, else :data:`ROLLING`."""
    a, b = getattr(layer, "rolling_factors", None) or ROLLING[layer.dialect]
    layer.rolling_mean.mul_(a).add_(mean * b)
    layer.rolling_variance.mul_(a).add_(var * b)


def batchnorm(layer, x: Tensor) -> Tensor:
    """Apply ``layer``'s BN (its ``scales``, ``rolling_mean``, ``rolling_variance``);
    the bias (BN beta) is not added.

    In training mode uses batch statistics, updates the rolling ones and records
    the batch statistics in ``layer.last_batch_stats``.
    """
    if layer.training:
        fn = getattr(layer, "bn_function", None) or _train_normalize
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()   # mixed precision (autocast): the statistics in float32
        y, mean, var = fn(x, layer.scales, layer.dialect)
        mean, var = mean.detach(), var.detach()
        update_rolling(layer, mean, var)
        layer.last_batch_stats = (mean, var)
        return y
    _, shape = _channel_shape(x)
    return normalize(x, layer.rolling_mean, layer.rolling_variance, layer.dialect) * layer.scales.view(shape)
