"""Every activation of both darknets' ``activations.c``/``activations.h``, by name, in one table.

``ACTIVATIONS[dialect][name]`` is a function ``Tensor -> Tensor`` written as
the C expression darknet evaluates, in the C arithmetic of that dialect:

* pjreddie writes its constants as ``double`` literals (``.1*x``,
  ``1./(1.+exp(-x))``), so C computes in double and rounds the result to
  float once.  Those formulas run here in float64 and are cast back.
  ``leaky`` and ``relie`` are the exception on the hot path: ``(float)(0.1 *
  (double)x)`` is exactly the correctly rounded ``x / 10`` (``x / 100``) in
  float32 (1/10 and 1/100 have a periodic binary expansion, so ``x/10`` is
  never within double rounding error of a float rounding boundary), which is
  what they compute, with no float64 copy.
* AlexeyAB writes ``float`` literals (``.1f*x``, ``expf``) and computes in
  float32; so do we.  Its ``tanh`` is ``2/(1+exp(-2x))-1``, ``mish`` uses a
  softplus with threshold 20, ``gelu`` mixes double constants with ``tanhf``.

Quirks kept on purpose, because darknet has them: ``elu``/``selu`` are
``(x>=0)*x + (x<0)*(exp(x)-1)``, so a huge ``x`` (``exp`` overflows: > 88.7
in float, > 709.8 in double) gives ``0*inf = NaN``; pjreddie's ``tanh``
is ``(e-1)/(e+1)`` with ``e = exp(2x)``, NaN for ``x > 354.9``.

Known divergences from AlexeyAB's CPU build: its scalar ``activate()`` has no
case for ``relu6`` (so a relu6 convolution outputs 0 on CPU; its GPU kernel
clamps), and layers other than ``[convolutional]`` send ``hard_mish`` and
``normalize_channels*`` (``[activation]`` and ``[sam]`` also ``mish``/``swish``)
through it, which then gives 0 too.  Here every activation computes its
formula wherever it is used.

Channel-wise activations (``CHANNELWISE``: ``normalize_channels*``) normalise
over dim 1 of ``Tensor[N, C, ...]``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]


def _f32(value: float) -> float:
    """A C ``float`` literal (``.1f``) as the Python float it rounds to."""
    return float(np.float32(value))


def _f32_mul(a: float, b: float) -> float:
    """C ``af * bf`` in float arithmetic."""
    return float(np.float32(a) * np.float32(b))


def _in_double(fn: Callable[[Tensor], Tensor]) -> Activation:
    """Run ``fn`` in float64 and round back once, as C does for double expressions."""
    def wrapped(x: Tensor) -> Tensor:
        return fn(x.double()).to(x.dtype)
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _mask(cond: Tensor, like: Tensor) -> Tensor:
    """A C comparison used as a number: 1 or 0 (so ``0 * inf`` stays NaN)."""
    return cond.to(like.dtype)


# ----------------------------------------------------------- shared (exact in any precision)

def linear(x: Tensor) -> Tensor:
    return x


def relu(x: Tensor) -> Tensor:
    """``x*(x>0)``: the same values for every finite x (C gives NaN for -inf, this 0)."""
    return torch.relu(x)


def hardtan(x: Tensor) -> Tensor:
    """-1 below -1, 1 above 1, else x (NaN stays NaN)."""
    return torch.clamp(x, -1.0, 1.0)


def _stair(x: Tensor, floor_half: Tensor) -> Tensor:
    n = torch.floor(x)
    # C's n%2 == 0 and Python's remainder agree on "even" for negative n too
    even = torch.remainder(n, 2) == 0
    return torch.where(even, floor_half, (x - n) + floor_half)


def stair(x: Tensor) -> Tensor:
    """``n = floor(x)``; even n: ``floor(x/2)``, odd n: ``(x - n) + floor(x/2)``.

    Both darknets; the sum of a float fraction and an integer rounds once, the
    same in float32 and in pjreddie's double."""
    return _stair(x, torch.floor(x / 2))


def hard_mish(x: Tensor) -> Tensor:
    """AlexeyAB ``hard_mish_yashas``: x if x > 0, x*x/2 + x if x > -2, else 0."""
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


# ----------------------------------------------------------- pjreddie (double arithmetic)

@_in_double
def logistic_pj(x: Tensor) -> Tensor:
    """``1./(1. + exp(-x))`` in double (torch's double sigmoid; both round to the same float)."""
    return torch.sigmoid(x)


@_in_double
def loggy_pj(x: Tensor) -> Tensor:
    """``2./(1. + exp(-x)) - 1``."""
    return 2.0 / (1.0 + torch.exp(-x)) - 1.0


@_in_double
def elu_pj(x: Tensor) -> Tensor:
    """``(x >= 0)*x + (x < 0)*(exp(x)-1)``."""
    return _mask(x >= 0, x) * x + _mask(x < 0, x) * (torch.exp(x) - 1.0)


@_in_double
def selu_pj(x: Tensor) -> Tensor:
    """``(x >= 0)*1.0507*x + (x < 0)*1.0507*1.6732*(exp(x)-1)``."""
    return (_mask(x >= 0, x) * 1.0507) * x + (_mask(x < 0, x) * 1.0507 * 1.6732) * (torch.exp(x) - 1.0)


def relie_pj(x: Tensor) -> Tensor:
    """``(x>0) ? x : .01*x`` (double) == correctly rounded ``x/100`` (the larger of x, x/100)."""
    return torch.maximum(x, x / 100)


@_in_double
def ramp_pj(x: Tensor) -> Tensor:
    """``x*(x>0) + .1*x``."""
    return x * _mask(x > 0, x) + 0.1 * x


class _LeakyPj(torch.autograd.Function):
    """pjreddie's leaky with darknet's own gradient: ``leaky_gradient(y) = (y>0) ? 1 : .1``
    applied to the delta in double, i.e. the correctly rounded ``g/10`` where the output is
    not positive (at ``x == 0`` too, where autograd of ``maximum`` would split the gradient).
    One ``where`` in the backward, instead of autograd's masks through ``maximum``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = torch.maximum(x, x / 10)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, g, g / 10)


def leaky_pj(x: Tensor) -> Tensor:
    """``(x>0) ? x : .1*x`` (double) == correctly rounded ``x/10`` (the larger of x, x/10)."""
    if x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
        return _LeakyPj.apply(x)
    return torch.maximum(x, x / 10)


@_in_double
def tanh_pj(x: Tensor) -> Tensor:
    """``(exp(2*x)-1)/(exp(2*x)+1)`` (NaN once exp overflows, as darknet)."""
    e = torch.exp(2.0 * x)
    return (e - 1.0) / (e + 1.0)


def plse_pj(x: Tensor) -> Tensor:
    """``x < -4: .01*(x+4)``; ``x > 4: .01*(x-4) + 1``; else ``.125*x + .5``.

    ``x+4`` and ``x-4`` are float additions, the rest double."""
    low = (x + 4).double() * 0.01
    high = (x - 4).double() * 0.01 + 1.0
    mid = x.double() * 0.125 + 0.5
    return torch.where(x < -4, low, torch.where(x > 4, high, mid)).to(x.dtype)


def stair_pj(x: Tensor) -> Tensor:
    return stair(x)


def lhtan_pj(x: Tensor) -> Tensor:
    """``x < 0: .001*x``; ``x > 1: .001*(x-1) + 1`` (``x-1`` in float); else x."""
    low = x.double() * 0.001
    high = (x - 1).double() * 0.001 + 1.0
    return torch.where(x < 0, low, torch.where(x > 1, high, x.double())).to(x.dtype)


# ----------------------------------------------------------- AlexeyAB (float arithmetic)

_P01F, _P1F, _P001F, _P125F, _P5F = _f32(0.01), _f32(0.1), _f32(0.001), _f32(0.125), _f32(0.5)
_SELU_LAMBDA = _f32(1.0507)
_SELU_LAMBDA_ALPHA = _f32_mul(1.0507, 1.6732)  # (x < 0)*1.0507f*1.6732f: the product rounds in float
_NORM_EPS = _f32(0.0001)


def logistic_ab(x: Tensor) -> Tensor:
    """``1.f/(1.f + expf(-x))``; torch's float sigmoid is as close to it as the literal
    expression evaluated with torch's exp (both within an ulp of darknet's expf)."""
    return torch.sigmoid(x)


def loggy_ab(x: Tensor) -> Tensor:
    """``2.f/(1.f + expf(-x)) - 1``."""
    return 2.0 / (1.0 + torch.exp(-x)) - 1.0


def relu6_ab(x: Tensor) -> Tensor:
    """``min_val_cmp(max_val_cmp(x, 0), 6)`` (the GPU build; the CPU ``activate()`` returns 0).
    Same values for every non-NaN x (C turns NaN into 0, this keeps it)."""
    return torch.clamp(x, 0.0, 6.0)


def elu_ab(x: Tensor) -> Tensor:
    """``(x >= 0)*x + (x < 0)*(expf(x)-1)``."""
    return _mask(x >= 0, x) * x + _mask(x < 0, x) * (torch.exp(x) - 1.0)


def selu_ab(x: Tensor) -> Tensor:
    """``(x >= 0)*1.0507f*x + (x < 0)*1.0507f*1.6732f*(expf(x) - 1)``."""
    return (_mask(x >= 0, x) * _SELU_LAMBDA) * x + (_mask(x < 0, x) * _SELU_LAMBDA_ALPHA) * (torch.exp(x) - 1.0)


def gelu_ab(x: Tensor) -> Tensor:
    """``0.5*x*(1 + tanhf(0.797885*x + 0.035677*powf(x, 3)))`` (double constants, float tanh)."""
    xd = x.double()
    inner = (0.797885 * xd + 0.035677 * torch.pow(x, 3).double()).to(x.dtype)
    t = torch.tanh(inner)
    return ((0.5 * xd) * (1 + t).double()).to(x.dtype)


def relie_ab(x: Tensor) -> Tensor:
    """``(x>0) ? x : .01f*x``."""
    return torch.maximum(x, _P01F * x)


def ramp_ab(x: Tensor) -> Tensor:
    return x * _mask(x > 0, x) + _P1F * x


def leaky_ab(x: Tensor) -> Tensor:
    """``(x>0) ? x : .1f*x`` (torch's leaky_relu multiplies by the float 0.1f);
    also ``revleaky`` (the same case in ``activate``)."""
    return F.leaky_relu(x, _P1F)


def tanh_ab(x: Tensor) -> Tensor:
    """``2 / (1 + expf(-2*x)) - 1``."""
    return 2.0 / (1.0 + torch.exp(-2.0 * x)) - 1.0


def plse_ab(x: Tensor) -> Tensor:
    return torch.where(x < -4, _P01F * (x + 4),
                       torch.where(x > 4, _P01F * (x - 4) + 1, _P125F * x + _P5F))


def lhtan_ab(x: Tensor) -> Tensor:
    return torch.where(x < 0, _P001F * x, torch.where(x > 1, _P001F * (x - 1) + 1, x))


def mish_ab(x: Tensor) -> Tensor:
    """``x * tanh_activate(softplus_activate(x, 20))``.

    Computed without the thresholds: beyond them float arithmetic makes the
    branches agree (x < -20: ``1 + expf(x)`` rounds to 1 and ``expf(-2*expf(x))``
    to 1, so both give ``x*0``; x > 20: ``tanh_activate`` of either is exactly 1),
    which saves two ``where`` passes on the hot path."""
    return x * tanh_ab(torch.log(torch.exp(x) + 1.0))


def swish_ab(x: Tensor) -> Tensor:
    """``x * logistic_activate(x)``."""
    return x * torch.sigmoid(x)


def normalize_channels(x: Tensor) -> Tensor:
    """Per position: positive values divided by ``0.0001 + sum of the positive values``, else 0."""
    pos = torch.where(x > 0, x, torch.zeros_like(x))
    return pos / (_NORM_EPS + pos.sum(dim=1, keepdim=True))


def normalize_channels_softmax(x: Tensor) -> Tensor:
    """Per position: ``expf(x) / (0.0001 + sum expf(x))`` -- no max subtracted (``use_max_val=0``)."""
    e = torch.exp(x)
    return e / (_NORM_EPS + e.sum(dim=1, keepdim=True))


def normalize_channels_softmax_maxval(x: Tensor) -> Tensor:
    """Per position: ``expf(x - max) / (0.0001 + sum expf(x - max))``."""
    e = torch.exp(x - x.amax(dim=1, keepdim=True))
    return e / (_NORM_EPS + e.sum(dim=1, keepdim=True))


# ----------------------------------------------------------- the table

#: name -> function, per dialect; the names are exactly those each get_activation knows.
ACTIVATIONS: dict[str, dict[str, Activation]] = {
    "pjreddie": {
        "logistic": logistic_pj, "loggy": loggy_pj, "relu": relu, "elu": elu_pj,
        "selu": selu_pj, "relie": relie_pj, "plse": plse_pj, "hardtan": hardtan,
        "lhtan": lhtan_pj, "linear": linear, "ramp": ramp_pj, "leaky": leaky_pj,
        "tanh": tanh_pj, "stair": stair_pj,
    },
    "alexeyab": {
        "logistic": logistic_ab, "swish": swish_ab, "mish": mish_ab, "hard_mish": hard_mish,
        "normalize_channels": normalize_channels,
        "normalize_channels_softmax": normalize_channels_softmax,
        "normalize_channels_softmax_maxval": normalize_channels_softmax_maxval,
        "loggy": loggy_ab, "relu": relu, "relu6": relu6_ab, "elu": elu_ab, "selu": selu_ab,
        "gelu": gelu_ab, "relie": relie_ab, "plse": plse_ab, "hardtan": hardtan,
        "lhtan": lhtan_ab, "linear": linear, "ramp": ramp_ab, "revleaky": leaky_ab,
        "leaky": leaky_ab, "tanh": tanh_ab, "stair": stair,
    },
}

#: Activations that normalise across channels (dim 1) instead of elementwise.
CHANNELWISE = frozenset({"normalize_channels", "normalize_channels_softmax",
                         "normalize_channels_softmax_maxval"})


def get_activation(name: str, dialect: str) -> Activation:
    """The activation ``name`` of ``dialect``; KeyError if that darknet lacks it."""
    return ACTIVATIONS[dialect][name]


# ----------------------------------------------------------- in place, for inference

def _leaky_inplace(x: Tensor) -> Tensor:
    return F.leaky_relu_(x, _P1F)


#: In-place forms of the activations of inference's hot path (eval mode, no gradient):
#: one pass over a tensor the layer has just made, no copy.  ``leaky`` multiplies by
#: the float ``0.1f``: AlexeyAB's exact formula; pjreddie's correctly rounded ``x/10``
#: can differ from it by 1 ulp on negative values (|x*0.1f - x/10| <= 1.5e-8 |x/10|).
INPLACE: dict[str, Activation] = {
    "leaky": _leaky_inplace,
    "relu": torch.relu_,
    "linear": linear,
}


def get_inplace_activation(name: str) -> Activation | None:
    """The in-place form of ``name`` for inference, or None when it has none."""
    return INPLACE.get(name)
