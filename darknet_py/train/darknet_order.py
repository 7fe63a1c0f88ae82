"""Darknet's batch-norm arithmetic in darknet's own order and rounding (CPU, exact mode).

A float32 sum depends on the order of its terms, and torch's reductions pick
their order by kernel (AVX2, AVX-512, thread count).  On most inputs that moves
a result by an ulp or two; near a discrete tie (a leaky unit whose input is
within rounding of 0, a maxpool near-tie) it decides which way the tie falls,
and the next update follows a different branch than darknet's.  So exact mode
computes every batch-norm sum the way darknet's CPU loops do:

* ``mean_cpu`` / ``variance_cpu``: per channel, ``sum += value`` one value at a
  time, image after image and position after position, then ``sum *= scale``
  with ``scale = (float)(1./N)`` (mean) or ``(float)(1./(N-1))`` (variance).
* ``backward_bias``: per image and channel a sequential ``sum_array`` over the
  positions, added into ``bias_updates`` image after image.
* ``backward_scale_cpu``: per channel the sequential sum of ``delta * x_norm``
  over (image, position), added once into ``scale_updates``.
* ``mean_delta_cpu`` / ``variance_delta_cpu``: sequential sums of
  ``delta*scale`` and ``delta*scale * (x - mean)``, then one multiplication by a
  factor that C computes in double.

The element-wise formula of ``normalize_delta_cpu`` and the factors of
``mean_delta_cpu`` / ``variance_delta_cpu`` mix float and double operands, so C
evaluates them in double and rounds once to float; we do the same with float64
tensors (IEEE double, correctly rounded like C's, whatever the SIMD width).

Two steps differ from the C source, which evaluates them in double: ``variance_cpu``
adds ``pow(x - mean, 2)`` to the float sum in double, and ``normalize_cpu`` divides
by a double ``sqrt``; here the square is rounded to float before the add (what
``numpy.add.accumulate`` can do in order) and the division is a float one.  They
move a value by at most an ulp.  The conformance data does not decide between the
two roundings: the one trajectory that sits on a leaky near-tie
(``train_ab_yolov4-tiny_narrow8_bnbiasgrad``, update 2; half of darknet's own 1-ulp
perturbed reruns flip it) followed darknet to 6e-7 with these float steps on
AVX-512 convolution kernels, fell on the other side of the tie (1.1e-4, within the
case's 2.2e-3) with them on AVX2 kernels, and on the other side on both with C's
double steps.

Sums run with :func:`numpy.add.accumulate`, which adds strictly in order with
float32 rounding after every add (``numpy.sum`` and ``torch.sum`` add pairwise
or in SIMD lanes; ``torch.cumsum`` accumulates in double on CPU).  Only float32
CPU tensors take this path (:func:`applies`); CUDA tensors use torch's own, faster
reductions (darknet's GPU kernels have an order of their own that is not
reproduced either way), and so do float64 ones.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from ..layers.norm import std_of

f32 = np.float32
F64 = torch.float64


def applies(x: Tensor) -> bool:
    """Darknet's order is reproduced for float32 CPU tensors (darknet's own type)."""
    return x.device.type == "cpu" and x.dtype == torch.float32


def _as_rows(x: Tensor) -> np.ndarray:
    """Tensor[N, C, ...] -> float32 array [N, C, S] (S = positions), a view when possible."""
    a = x.detach().numpy()
    return a.reshape(a.shape[0], a.shape[1], -1)


def _by_channel_blocks(fn, rows: np.ndarray, *extra: np.ndarray | None) -> np.ndarray:
    """``fn`` over blocks of channels (axis 1 of ``rows``, axis 0 of each ``extra``) in
    torch's number of threads, the results joined along the channel axis.  Each channel's
    sum stays one sequential loop, so the split changes nothing but the wall time (numpy
    releases the GIL inside its loops)."""
    c = rows.shape[1]
    threads = min(torch.get_num_threads(), max(1, rows.size // (1 << 20)), c)
    if threads <= 1:
        return fn(rows, *extra)
    bounds = np.linspace(0, c, threads + 1).astype(int)
    blocks = [(rows[:, a:b], *(e if e is None else e[a:b] for e in extra))
              for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with ThreadPoolExecutor(len(blocks)) as pool:
        parts = list(pool.map(lambda args: fn(*args), blocks))
    return np.concatenate(parts, axis=-1)


def _sequential_sum(rows: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    n, c, s = rows.shape
    carry = np.zeros(c, dtype=f32)
    if s == 0:
        return carry
    buf = np.empty((c, s), dtype=f32)
    for j in range(n):
        if centre is None:
            np.copyto(buf, rows[j])
        else:
            np.subtract(rows[j], centre[:, None], out=buf)
            np.multiply(buf, buf, out=buf)
        buf[:, 0] += carry                      # the add that joins image j to the running sum
        np.add.accumulate(buf, axis=1, out=buf)
        carry = buf[:, -1].copy()
    return carry


def sequential_sum(rows: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, C, S] -> [C]: per channel ``s += v`` over (image, position) in order,
    float32 rounding after every add (darknet's ``for j: for k: sum += x[j][i][k]``).
    With ``centre`` (float32 [C]) the values added are ``(x - centre)**2`` in float32
    (``variance_cpu``'s terms), made one image at a time."""
    return _by_channel_blocks(_sequential_sum, rows, centre)


def _per_image_sums(rows: np.ndarray) -> np.ndarray:
    n, c, s = rows.shape
    out = np.zeros((n, c), dtype=f32)
    if s == 0:
        return out
    buf = np.empty((c, s), dtype=f32)
    for j in range(n):
        np.add.accumulate(rows[j], axis=1, out=buf)
        out[j] = buf[:, -1]
    return out


def per_image_sums(rows: np.ndarray) -> np.ndarray:
    """float32 [N, C, S] -> [N, C]: darknet's ``sum_array`` over the positions of each
    image and channel, in order."""
    return _by_channel_blocks(_per_image_sums, rows)


def _channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def _float_eps(value: float) -> float:
    """A C float literal such as ``.00001f`` as the double C promotes it to."""
    return float(f32(value))


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """``mean_cpu`` then ``variance_cpu`` of Tensor[N, C, ...]: (mean Tensor[C], unbiased
    variance Tensor[C]) in darknet's order; CUDA: torch's reductions."""
    dims = [0] + list(range(2, x.dim()))
    if x.device.type != "cpu":
        mean = x.mean(dims)
        return mean, x.var(dims, unbiased=True)
    xd = x.detach().contiguous()
    count = xd.numel() // xd.shape[1]
    rows = _as_rows(xd)
    mean = sequential_sum(rows) * f32(1.0 / count)
    var = sequential_sum(rows, centre=mean) * f32(1.0 / (count - 1))
    return torch.from_numpy(mean), torch.from_numpy(var)


def normalize(xc: Tensor, var: Tensor, dialect: str) -> Tensor:
    """``normalize_cpu`` on ``xc = x - mean`` (float32): pjreddie
    ``xc / (sqrt(v) + .000001f)``, AlexeyAB ``xc / sqrt(v + .00001f)``, in float (C's
    sqrt is a double one; see the module doc for why this is left in float)."""
    return xc / _channel(std_of(var, dialect), xc)


def channel_sum(t: Tensor) -> Tensor:
    """Tensor[N, C, ...] -> Tensor[C]: the sequential float32 sum over (image, position)
    of each channel (CPU), torch's sum elsewhere."""
    if t.device.type != "cpu":
        return t.sum([0] + list(range(2, t.dim())))
    return torch.from_numpy(sequential_sum(_as_rows(t.contiguous())))


def image_channel_sums(t: Tensor) -> Tensor:
    """Tensor[N, C, ...] -> Tensor[N, C]: ``sum_array`` per image and channel (CPU in order)."""
    if t.device.type != "cpu":
        return t.flatten(2).sum(2)
    return torch.from_numpy(per_image_sums(_as_rows(t.contiguous())))


def bn_backward(g: Tensor, xc: Tensor, var: Tensor, scales: Tensor, dialect: str) -> Tensor:
    """``dx`` of darknet's batch-norm backward for the gradient ``g`` of ``x_norm*scales``.

    ``scale_bias`` (``dxh = g*scale``, float), ``mean_delta_cpu`` and
    ``variance_delta_cpu`` (sequential sums, then a double factor), then
    ``normalize_delta_cpu`` in double (:func:`bn_backward_factors`).  Darknet's delta
    is ``-g``; every step is odd in it, so this returns exactly minus darknet's delta.
    """
    n = g.numel() // g.shape[1]
    dxh = g * _channel(scales, g)
    c1, c2, c0 = bn_backward_factors(channel_sum(dxh).to(g.device),
                                     channel_sum(dxh * xc).to(g.device), var, n, dialect)
    return _double_affine(dxh, _channel(c1, g)[0], xc, _channel(c2, g)[0], _channel(c0, g)[0])


def bn_backward_factors(sum_dxh: Tensor, sum_dxh_xc: Tensor, var: Tensor, n: int,
                        dialect: str) -> tuple[Tensor, Tensor, Tensor]:
    """float64 Tensor[C] ``(c1, c2, c0)`` of ``dx = dxh*c1 + xc*c2 + c0`` from the two
    sums of ``mean_delta_cpu`` / ``variance_delta_cpu`` (float32 Tensor[C]).

    ``md = sum(dxh) * -1/sqrt(v + 1e-5)`` and ``vd = sum(dxh*xc) * -.5*(v + 1e-5)^-1.5``
    (double factors, rounded to float as C stores them); ``normalize_delta_cpu`` then is
    pjreddie ``dxh/sqrt(v + 1e-5)``, AlexeyAB ``dxh/(sqrt(v) + 1e-5)``, both ``+ vd*2*xc/N
    + md/N`` with ``md/N`` a float division as in C.  C's double expression is regrouped
    as ``dxh*(1/k) + xc*(vd*2/N) + md/N``: that moves the double result by ~1e-16
    relative, which changes its rounding to float only within 2^-29 of a float rounding
    boundary."""
    veps = (var + f32(1e-5)).to(F64)                      # (float)(v + .00001f), promoted
    md = (sum_dxh.to(F64) * (-1.0 / torch.sqrt(veps))).to(var.dtype)
    vd = (sum_dxh_xc.to(F64) * (-0.5 * torch.pow(veps, -1.5))).to(var.dtype)
    if dialect == "pjreddie":
        k = torch.sqrt(veps)
    else:
        k = torch.sqrt(var.to(F64)) + _float_eps(1e-5)
    return 1.0 / k, vd.to(F64) * 2.0 / float(n), (md / f32(n)).to(F64)


#: doubles per block of :func:`_double_affine` (2 MB: the block stays in cache)
_BLOCK = 1 << 18


def _double_affine(a: Tensor, ka: Tensor, b: Tensor, kb: Tensor, k0: Tensor) -> Tensor:
    """``float(a*ka + b*kb + k0)`` evaluated in double, for Tensor[N, C, ...] float32 ``a``,
    ``b`` and per-channel double factors Tensor[C, 1, ...], a block of channels of one
    image at a time in two reused double buffers."""
    out = torch.empty_like(a)
    if a.numel() == 0:
        return out
    per_channel = a[0, 0].numel()
    step = max(1, min(a.shape[1], _BLOCK // max(1, per_channel)))
    for c in range(0, a.shape[1], step):
        sl = slice(c, c + step)
        x = torch.empty(a[0, sl].shape, dtype=F64)
        y = torch.empty_like(x)
        for j in range(a.shape[0]):
            x.copy_(a[j, sl]).mul_(ka[sl]).add_(k0[sl])
            y.copy_(b[j, sl]).mul_(kb[sl])
            out[j, sl] = x.add_(y)
    return out
