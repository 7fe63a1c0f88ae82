"""A training convolution's batch norm + bias + activation as one op, on compiled loops.

:class:`ConvTail` is what the Trainer plugs into each batch-normalised
``[convolutional]`` (``layer.train_tail``) when numba is there
(:mod:`.kernels`) and the output is a float32 CPU tensor with a ``linear`` or
``leaky`` activation; elsewhere the layer runs its separate torch steps (BN,
bias, activation), which compute the same numbers.

The forward is the same in both modes and in darknet's order: ``mean_cpu``,
``variance_cpu``, ``((x - mean)/std)*scales + bias``, the activation, every step
rounded as the torch formulas of :mod:`.darknet_order` round it (the tests hold
the two to the bit).  It keeps only the convolution's output for the backward,
and recomputes ``x - mean``, ``x_hat`` and the activation's input from it.

The backward:

* ``mode="exact"``: darknet's (:class:`~.darknet_grad.DarknetBatchNorm` and
  :class:`~.darknet_grad.DarknetBias`): the bias sums per image (left in ``parts``
  for the Trainer), ``sum(gz*x_hat)``, ``sum(dxh)`` and ``sum(dxh*xc)`` in one
  sequential float32 pass, then ``normalize_delta_cpu`` in double.
* ``mode="autograd"``: the exact gradient of the forward (unbiased variance,
  the dialect's epsilon), with float64 sums: with ``s = std(v)``, ``S1 = sum(gz)``,
  ``S2 = sum(gz*xc)``: ``d bias = S1``, ``d scales = S2/s`` and
  ``dx = (scales/s)*(gz - S1/N) - scales*s'(v)*2/((N-1)*s^2)*S2*xc``.

The tensors are channels-last (``[N*H*W, C]`` rows, :mod:`.kernels`): the tail
serves channels-last convolution outputs only (an incoming gradient in another
layout is copied to it).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..layers.norm import std_of, update_rolling
from . import darknet_order as order
from . import kernels
from .darknet_grad import add_bias_rows

F64 = torch.float64


def _rows(t: Tensor) -> np.ndarray:
    """The float32 ``[N*H*W, C]`` numpy view of Tensor[N, C, H, W] (copied to
    channels-last first if it is not)."""
    t = t.detach().contiguous(memory_format=torch.channels_last)
    return t.movedim(1, -1).reshape(-1, t.shape[1]).numpy()


def _empty_like_rows(t: Tensor) -> tuple[Tensor, np.ndarray]:
    """(a new channels-last tensor shaped like ``t``, its rows view)."""
    out = torch.empty_like(t, memory_format=torch.channels_last)
    return out, _rows(out)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _TailFunction(torch.autograd.Function):
    """forward(x Tensor[N, C, H, W], scales, biases Tensor[C], tail) -> (y, mean, var);
    only ``y`` carries a gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, scales: Tensor, biases: Tensor, tail: "ConvTail"):  # type: ignore[override]
        kernels.set_threads(torch.get_num_threads())
        xr = _rows(x)
        count = xr.shape[0]
        mean, var = kernels.stats(xr, np.float32(1.0 / count), np.float32(1.0 / (count - 1)))
        mean_t, var_t = torch.from_numpy(mean), torch.from_numpy(var)
        std = std_of(var_t, tail.dialect)
        y, yr = _empty_like_rows(x)
        kernels.forward(xr, mean, _np(std), _np(scales), _np(biases), tail.act, yr)
        ctx.tail = tail
        ctx.images = x.shape[0]
        ctx.save_for_backward(x, mean_t, var_t, std, scales, biases)
        ctx.mark_non_differentiable(mean_t, var_t)
        return y, mean_t, var_t

    @staticmethod
    def backward(ctx, gy: Tensor, _gm, _gv):  # type: ignore[override]
        kernels.set_threads(torch.get_num_threads())
        x, mean, var, std, scales, biases = ctx.saved_tensors
        tail: ConvTail = ctx.tail
        xr, gr = _rows(x), _rows(gy)
        args = (gr, xr, _np(mean), _np(std), _np(scales), _np(biases), tail.act_grad)
        n = xr.shape[0]
        if tail.mode == "exact":
            bsum, s_xh, s_d, s_dxc = kernels.exact_sums(*args, ctx.images)
            per_image = torch.from_numpy(bsum)
            add_bias_rows(tail.parts, biases, per_image)
            g_bias, g_scales = per_image.sum(0), torch.from_numpy(s_xh)
            if not ctx.needs_input_grad[0]:
                return None, g_scales, g_bias, None
            c1, c2, c0 = order.bn_backward_factors(torch.from_numpy(s_d), torch.from_numpy(s_dxc),
                                                   var, n, tail.dialect)
            dx, dxr = _empty_like_rows(x)
            kernels.dx(*args, _np(scales), _np(c1), _np(c2), _np(c0), dxr)
            return dx, g_scales, g_bias, None
        s1, s2 = (torch.from_numpy(a) for a in kernels.grad_sums(*args))
        s = std.to(F64)
        g_bias, g_scales = s1.to(x.dtype), (s2 / s).to(x.dtype)
        if not ctx.needs_input_grad[0]:
            return None, g_scales, g_bias, None
        v = var.to(F64)
        if tail.dialect == "pjreddie":           # s = sqrt(v) + 1e-6
            ds = torch.where(v > 0, 0.5 / torch.sqrt(v.clamp_min(1e-300)), torch.zeros_like(v))
        else:                                    # s = sqrt(v + 1e-5)
            ds = 0.5 / s
        sc = scales.detach().to(F64)
        a = sc / s
        b = -sc * ds * 2.0 / ((n - 1) * s * s) * s2
        c0 = -a * s1 / n
        dx, dxr = _empty_like_rows(x)
        kernels.dx(*args, np.ones(scales.shape[0], np.float32), _np(a), _np(b), _np(c0), dxr)
        return dx, g_scales, g_bias, None


class ConvTail:
    """``layer.train_tail`` of a batch-normalised convolution: ``tail(layer, z)`` gives
    ``act(BN(z) + bias)`` with the rolling statistics updated, or None where it does not
    apply (then the layer's own steps run).  ``parts``: exact mode's per-image bias sums,
    shared with :class:`~.darknet_grad.DarknetBackward`."""

    def __init__(self, mode: str, dialect: str, activation: str, parts: dict):
        self.mode, self.dialect, self.parts = mode, dialect, parts
        self.act, self.act_grad = kernels.activation(kernels.ACTIVATION_KEYS[(activation, dialect)])

    @staticmethod
    def supports(layer) -> bool:
        """Can a tail serve ``layer`` (numba present, BN, a linear/leaky activation)?"""
        return (kernels.available() and getattr(layer, "batch_normalize", False)
                and (getattr(layer, "act_name", None), layer.dialect) in kernels.ACTIVATION_KEYS)

    def __call__(self, layer, z: Tensor) -> Tensor | None:
        if (z.device.type != "cpu" or z.dtype != torch.float32 or z.dim() != 4
                or not z.is_contiguous(memory_format=torch.channels_last)
                or z.shape[0] * z.shape[2] * z.shape[3] < 2):
            return None   # the layer's own steps: an NCHW model, CUDA, float64, one value
        y, mean, var = _TailFunction.apply(z, layer.scales, layer.biases, self)
        update_rolling(layer, mean, var)
        layer.last_batch_stats = (mean, var)
        return y
