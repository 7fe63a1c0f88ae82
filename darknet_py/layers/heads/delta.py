"""What every head loss shares: the loss built from darknet's delta, and small numeric helpers.

Darknet does not differentiate a loss: each head writes ``l.delta`` (minus the
gradient it wants for its input) and reports a separate cost.  We compute that
delta exactly (detached, vectorised) and return it through a small autograd
function, :class:`DeltaLoss`: its forward returns darknet's cost, its backward
returns ``-grad_scale * delta * grad_output``, so ``loss.backward()`` gives
``x.grad == -delta`` bit for bit (``grad_scale`` is 1 except AlexeyAB's
``delta_normalizer``, which its GPU build applies in the backward pass).  This
costs one multiplication in backward and nothing in forward, unlike the
equivalent ``cost + (s - s.detach())`` with ``s = -(delta * x).sum()``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import DataError


#: ``(delta, cost, stats)``: darknet's ``l.delta`` of a head, the cost it reports, its printed stats
DeltaResult = tuple[Tensor, Tensor, dict[str, Any]]


def f32(value: float) -> float:
    """``value`` rounded to float32, as darknet stores every cfg number."""
    return float(np.float32(value))


class DeltaLoss(torch.autograd.Function):
    """``forward(x, delta, cost, grad_scale) -> cost``; ``backward: -grad_scale * delta``."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, cost: Tensor, grad_scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(delta)
        ctx.grad_scale = grad_scale
        ctx.x_dtype = x.dtype
        return cost.detach().to(x.dtype).clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (delta,) = ctx.saved_tensors
        factor = -grad_out if ctx.grad_scale == 1.0 else -grad_out * ctx.grad_scale
        return delta.to(ctx.x_dtype) * factor.to(ctx.x_dtype), None, None, None


@dataclass
class SparseDelta:
    """A head delta that is dense in one entry plane (objectness) and nonzero
    elsewhere only in a few prediction slots.

    The delta, viewed ``[N*A, K, H*W]`` (darknet's per-anchor planes), is zero except
    ``[:, plane, :] = dense`` (``Tensor[N*A*H*W]``) and the rows
    ``[slot // HW, :, slot % HW] = rows`` (``slots [R]``, ``rows [R, K]``, which win
    over ``dense`` on their own slots).
    """

    shape: tuple[int, ...]          # the input's shape, e.g. (N, A*K, H, W)
    anchors: int                    # A
    entries: int                    # K
    plane: int                      # index of the dense entry
    dense: Tensor
    slots: Tensor
    rows: Tensor

    def fill(self, out: Tensor, sign: float = 1.0) -> Tensor:
        """Write ``sign * delta`` into ``out`` (zeros, ``self.shape``) and return it."""
        N = self.shape[0]
        hw = self.dense.numel() // (N * self.anchors)
        v = out.view(N * self.anchors, self.entries, hw)
        d = self.dense.view(N * self.anchors, hw).to(out.dtype)
        v[:, self.plane, :] = d if sign == 1.0 else d * sign
        if self.slots.numel():
            r = self.rows.to(out.dtype)
            v[self.slots // hw, :, self.slots % hw] = r if sign == 1.0 else r * sign
        return out

    def to_dense(self) -> Tensor:
        return self.fill(torch.zeros(self.shape, device=self.dense.device))


class SparseDeltaLoss(torch.autograd.Function):
    """``forward(x, cost, delta) -> cost``; backward builds ``-grad_scale * delta``
    directly (one zero fill, the dense plane and the rows), without a dense delta."""

    @staticmethod
    def forward(ctx, x: Tensor, cost: Tensor, sd: SparseDelta, grad_scale: float) -> Tensor:  # type: ignore[override]
        ctx.sd, ctx.grad_scale, ctx.x_dtype = sd, grad_scale, x.dtype
        return cost.detach().to(x.dtype).clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        sd: SparseDelta = ctx.sd
        g = torch.zeros(sd.shape, dtype=ctx.x_dtype, device=sd.dense.device)
        if bool(grad_out == 1) and ctx.grad_scale == 1.0:
            sd.fill(g, -1.0)
        else:
            sd.fill(g)
            g.mul_(-grad_out.to(ctx.x_dtype) * ctx.grad_scale)
        return g, None, None, None


def sparse_delta_loss(x: Tensor, sd: SparseDelta, cost: Tensor, grad_scale: float = 1.0) -> Tensor:
    """Like :func:`delta_loss` for a :class:`SparseDelta`."""
    return SparseDeltaLoss.apply(x, torch.as_tensor(cost).detach(), sd, float(grad_scale))


def delta_loss(x: Tensor, delta: Tensor, cost: Tensor, grad_scale: float = 1.0) -> Tensor:
    """A scalar whose value is ``cost`` and whose gradient w.r.t. ``x`` is
    ``-grad_scale * delta`` (``delta`` has ``x``'s shape)."""
    if delta.shape != x.shape:
        delta = delta.reshape(x.shape)
    return DeltaLoss.apply(x, delta.detach(), torch.as_tensor(cost).detach(), float(grad_scale))


def logistic_gradient(y: Tensor) -> Tensor:
    """darknet's ``logistic_gradient(y) = (1 - y) * y`` on the activated value."""
    return (1 - y) * y


def log_f(v: Tensor) -> Tensor:
    """C's ``(float)log((double)v)``."""
    return torch.log(v.double()).to(v.dtype)


def sqrt_f(v: Tensor) -> Tensor:
    """C's ``(float)sqrt((double)v)``."""
    return torch.sqrt(v.double()).to(v.dtype)


def focal_gradient(pc: Tensor) -> Tensor:
    """The focal-loss factor darknet multiplies the class deltas by (before its 0.5)."""
    pt = pc + 1e-15
    return -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)


def ratio(num: float, den: float) -> float:
    """``num / den`` the way darknet prints averages (NaN for 0/0)."""
    return num / den if den else (math.nan if num == 0 else math.copysign(math.inf, num))


def stats_dict(**kw: Any) -> dict[str, Any]:
    """Plain python numbers (no tensors) so stats can be logged or json-dumped."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if isinstance(v, Tensor):
            v = v.item()
        out[k] = v
    return out


def split_head_input(x: Tensor, anchors: int, entries: int, where: str) -> tuple[int, int, int]:
    """Check that ``x`` Tensor[N, anchors*entries, H, W] fits the head; returns (N, H, W)."""
    n, ch, h, w = x.shape
    if ch != anchors * entries:
        raise DataError(f"{where}: input has {ch} channels, expected {anchors}x{entries} = "
                        f"{anchors * entries}")
    return n, h, w
