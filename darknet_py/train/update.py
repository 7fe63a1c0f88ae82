"""Darknet's SGD update (``update_convolutional_layer`` and friends), in float32.

Darknet keeps one buffer ``U`` per parameter array (``weight_updates``,
``bias_updates``, ``scale_updates``).  Backward passes ADD the negative
gradient (summed over the images) into it; the update then does, with
``B`` = mini_batch * subdivisions and ``lr`` the layer's rate::

    U_w += (-decay*B) * w          # weights only
    p   += (lr/B) * U              # every parameter
    U   *= momentum                # the buffer carries momentum to the next update

Every scalar is a C float and every array operation rounds once per
multiply and once per add (no fused multiply-add), which we reproduce with
separate tensor operations: torch's ``add_(t, alpha=a)`` is fused on CPU and
would differ in the last bit.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

f32 = np.float32

#: the parameter names that get weight decay (darknet: weights, never biases or BN scales)
DECAYED = frozenset({"weights"})


def _scalar(x: np.float32) -> float:
    return float(x)  # a float32 value: multiplying by it in float32 rounds like C


@torch.no_grad()
def darknet_update_(param: Tensor, update: Tensor, rate: float, batch: int, momentum: float,
                    decay: float | None = None) -> None:
    """One darknet update of ``param`` with its buffer ``update``, in place.

    ``rate`` is the layer's learning rate (net rate times the layer's
    ``learning_rate`` scale, a float32 value); ``decay`` None for arrays
    without weight decay.
    """
    if decay is not None:
        update.add_(param * _scalar(f32(-decay) * f32(batch)))
    param.add_(update * _scalar(f32(rate) / f32(batch)))
    update.mul_(_scalar(f32(momentum)))


def layer_rate(net_rate: float, lr_scale: float) -> float:
    """``learning_rate_init * l.learning_rate_scale`` in float32."""
    return float(f32(net_rate) * f32(lr_scale))
