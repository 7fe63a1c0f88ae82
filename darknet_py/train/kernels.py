"""Compiled (numba) loops for a training convolution's tail: batch norm + bias + activation.

Every kernel works on channels-last rows: ``x`` is float32 ``[M, C]`` with
``M = N*H*W`` (image after image, position after position), the layout of a
channels-last ``Tensor[N, C, H, W]``, so that darknet's per-channel loops
(``for j in batch: for k in positions: sum += x[j][c][k]``) are one pass down the
rows, SIMD across the channels, and every channel's sum still adds its terms one
at a time, in darknet's order, rounding to float after every add.

The element-wise steps round like the torch formulas of :mod:`.darknet_order`
(which stay the reference and the fallback): float32 everywhere, except the
double expression of ``normalize_delta_cpu``.  numba compiles without fast-math,
so no multiply-add is contracted and no sum is reassociated.

The activations a tail computes itself (:data:`ACTIVATION_KEYS`): ``linear``,
pjreddie's ``leaky`` (``max(z, z/10)``, the correctly rounded ``.1*z``; gradient
``g/10``) and AlexeyAB's ``leaky`` (``z*.1f``; gradient ``g*.1f``).  Others leave
the activation to torch.
"""
from __future__ import annotations

import numpy as np

try:  # an optional accelerator: without it the torch/numpy formulas run
    import numba
    from numba import njit, prange
except Exception:  # pragma: no cover - depends on the environment
    numba = None

#: (activation name, dialect) -> key of :func:`activation` ("linear" in either dialect)
ACTIVATION_KEYS = {("linear", "pjreddie"): "linear", ("linear", "alexeyab"): "linear",
                   ("leaky", "pjreddie"): "leaky_pj", ("leaky", "alexeyab"): "leaky_ab"}

_TEN = np.float32(10.0)
_P1F = np.float32(0.1)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


def activation(key: str):
    """The compiled (activation, gradient) pair of an :data:`ACTIVATION_KEYS` value."""
    return _ACTIVATIONS[key]


def available() -> bool:
    """True when numba imported (the compiled tails can run)."""
    return numba is not None


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool) in the parallel loops."""
    if numba is not None:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


_ACTIVATIONS: dict = {}

if numba is not None:
    _jit = njit(cache=True, nogil=True, error_model="numpy")
    _pjit = njit(cache=True, nogil=True, parallel=True, error_model="numpy")

    _inline = njit(cache=True, nogil=True, inline="always", error_model="numpy")

    @_inline
    def _linear(z):
        return z

    @_inline
    def _linear_grad(z, g):
        return g

    # the branch is a choice of divisor/factor (x/1 and x*1 are exact): a select that
    # vectorises, where a branch between two expressions compiles to a jump
    @_inline
    def _leaky_pj(z):
        return z / (_ONE if z > _ZERO else _TEN)

    @_inline
    def _leaky_pj_grad(z, g):
        return g / (_ONE if z > _ZERO else _TEN)

    @_inline
    def _leaky_ab(z):
        return z * (_ONE if z > _ZERO else _P1F)

    @_inline
    def _leaky_ab_grad(z, g):
        return g * (_ONE if z > _ZERO else _P1F)

    #: key -> (activation, its gradient ``(z, g) -> g*act'(z)``), passed to the kernels
    #: as functions so that each is compiled (and vectorised) for its activation
    _ACTIVATIONS.update({"linear": (_linear, _linear_grad), "leaky_pj": (_leaky_pj, _leaky_pj_grad),
                         "leaky_ab": (_leaky_ab, _leaky_ab_grad)})

    @_jit
    def _pre(x, mean, std, scales, bias):
        """(x - mean, x_hat, z = x_hat*scales + bias), each rounded to float."""
        xc = x - mean
        xh = xc / std
        return xc, xh, xh * scales + bias

    @_jit
    def stats(x, inv_count, inv_count1):
        """``mean_cpu`` then ``variance_cpu`` (float32 terms, sequential per channel)."""
        m_rows, c = x.shape
        s = np.zeros(c, np.float32)
        for m in range(m_rows):
            for k in range(c):
                s[k] += x[m, k]
        mean = s * inv_count
        q = np.zeros(c, np.float32)
        for m in range(m_rows):
            for k in range(c):
                d = x[m, k] - mean[k]
                q[k] += d * d
        return mean, q * inv_count1

    @_pjit
    def forward(x, mean, std, scales, bias, act, out):
        """``out = act(((x - mean)/std)*scales + bias)``, row-parallel."""
        m_rows, c = x.shape
        for m in prange(m_rows):
            for k in range(c):
                xc, xh, z = _pre(x[m, k], mean[k], std[k], scales[k], bias[k])
                out[m, k] = act(z)

    @_jit
    def exact_sums(g, x, mean, std, scales, bias, act_grad, images):
        """Darknet's backward sums in its order, one pass down the rows.

        Returns (per-image bias sums ``[images, C]``: ``backward_bias``; ``sum(gz*x_hat)``:
        ``backward_scale_cpu``; ``sum(dxh)`` and ``sum(dxh*xc)`` with ``dxh = gz*scales``:
        the sums of ``mean_delta_cpu`` / ``variance_delta_cpu``), ``gz`` the gradient
        through the activation."""
        m_rows, c = x.shape
        per = m_rows // images
        bsum = np.zeros((images, c), np.float32)
        s_xh = np.zeros(c, np.float32)
        s_d = np.zeros(c, np.float32)
        s_dxc = np.zeros(c, np.float32)
        for j in range(images):
            for m in range(j * per, (j + 1) * per):
                for k in range(c):
                    xc, xh, z = _pre(x[m, k], mean[k], std[k], scales[k], bias[k])
                    gz = act_grad(z, g[m, k])
                    bsum[j, k] += gz
                    s_xh[k] += gz * xh
                    dxh = gz * scales[k]
                    s_d[k] += dxh
                    s_dxc[k] += dxh * xc
        return bsum, s_xh, s_d, s_dxc

    @_pjit
    def dx(g, x, mean, std, scales, bias, act_grad, q, c1, c2, c0, out):
        """``dx = (float)(float(gz*q)*c1 + c0 + xc*c2)`` in double (c*: float64), row-parallel.
        Exact mode: ``q = scales`` (darknet's ``dxh``, rounded to float) and
        ``normalize_delta_cpu``'s factors; autograd mode: ``q = 1``."""
        m_rows, c = x.shape
        for m in prange(m_rows):
            for k in range(c):
                xc, xh, z = _pre(x[m, k], mean[k], std[k], scales[k], bias[k])
                dxh = act_grad(z, g[m, k]) * q[k]
                a = np.float64(dxh) * c1[k] + c0[k]
                out[m, k] = np.float32(a + np.float64(xc) * c2[k])

    @_pjit
    def grad_sums(g, x, mean, std, scales, bias, act_grad):
        """(``sum(gz)``, ``sum(gz*(x - mean))``) per channel in float64, row blocks in
        parallel (autograd mode: no order to keep)."""
        m_rows, c = x.shape
        blocks = 64
        step = (m_rows + blocks - 1) // blocks
        part = np.zeros((blocks, 2, c), np.float64)
        for b in prange(blocks):
            for m in range(b * step, min(m_rows, (b + 1) * step)):
                for k in range(c):
                    xc, xh, z = _pre(x[m, k], mean[k], std[k], scales[k], bias[k])
                    gz = np.float64(act_grad(z, g[m, k]))
                    part[b, 0, k] += gz
                    part[b, 1, k] += gz * np.float64(xc)
        return part[:, 0].sum(axis=0), part[:, 1].sum(axis=0)
