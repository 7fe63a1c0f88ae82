"""Layer types of both darknets on tiny inputs, against literal transcriptions of
darknet's C loops (plain Python/numpy index arithmetic) or values worked out by
hand, and output shapes against darknet's size formulas.

Each layer is built from a small cfg and run alone (``run_layer``) on chosen
inputs, the way the conformance tests teacher-force darknet's outputs.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from darknet_py.cfg import parse_cfg
from darknet_py.errors import CfgError, DarknetError, UnsupportedLayerError

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)
RNG = np.random.default_rng(2024)


def build(layers: str, c: int, h: int, w: int, dialect: str) -> Darknet:
    text = f"[net]\nbatch=1\nwidth={w}\nheight={h}\nchannels={c}\n\n{layers}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(parse_cfg(text, dialect=dialect)).eval()


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(F32)


def run(model: Darknet, i: int, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.run_layer(i, *(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)).numpy()


def close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * scale)


def cdiv(a: int, b: int) -> int:  # C integer division
    return int(a / b)


# ------------------------------------------------------------------ oracles (C loops)

def maxpool_loop(x, size, sy, sx, pad):
    """forward_maxpool_layer."""
    b_, c_, h, w = x.shape
    oh, ow = cdiv(h + pad - size, sy) + 1, cdiv(w + pad - size, sx) + 1
    off = cdiv(-pad, 2)
    out = np.zeros((b_, c_, oh, ow), F32)
    for b, k, i, j in itertools.product(range(b_), range(c_), range(oh), range(ow)):
        m = -FLT_MAX
        for n, mm in itertools.product(range(size), range(size)):
            ch, cw = off + i * sy + n, off + j * sx + mm
            val = x[b, k, ch, cw] if (0 <= ch < h and 0 <= cw < w) else -FLT_MAX
            m = val if val > m else m
        out[b, k, i, j] = m
    return out


def local_avgpool_loop(x, size, sy, sx, pad):
    """forward_local_avgpool_layer."""
    b_, c_, h, w = x.shape
    oh, ow = cdiv(h + pad - size, sy) + 1, cdiv(w + pad - size, sx) + 1
    off = cdiv(-pad, 2)
    out = np.zeros((b_, c_, oh, ow), F32)
    for b, k, i, j in itertools.product(range(b_), range(c_), range(oh), range(ow)):
        avg, count = F32(0), 0
        for n, mm in itertools.product(range(size), range(size)):
            ch, cw = off + i * sy + n, off + j * sx + mm
            if 0 <= ch < h and 0 <= cw < w:
                count += 1
                avg = F32(avg + x[b, k, ch, cw])
        out[b, k, i, j] = avg / F32(count)
    return out


def conv_loop(x, wts, sy, sx, pad, dil=1, groups=1):
    """im2col_cpu_ext + gemm: out[o][y][x] = sum w[o][c][ky][kx] * in[c][y*sy - pad*dil + ky*dil]..."""
    b_, c_, h, w = x.shape
    n, cg, k, _ = wts.shape
    p = pad * dil
    oh, ow = cdiv(h + 2 * pad - k, sy) + 1, cdiv(w + 2 * pad - k, sx) + 1
    out = np.zeros((b_, n, oh, ow), np.float64)
    for b, o, i, j in itertools.product(range(b_), range(n), range(oh), range(ow)):
        g = o // (n // groups)
        s = 0.0
        for cc, ky, kx in itertools.product(range(cg), range(k), range(k)):
            yy, xx = i * sy - p + ky * dil, j * sx - p + kx * dil
            if 0 <= yy < h and 0 <= xx < w:
                s += float(wts[o, cc, ky, kx]) * float(x[b, g * cg + cc, yy, xx])
        out[b, o, i, j] = s
    return out.astype(F32)


def blur_loop(x, kind, sy, sx):
    """The antialiasing blur: a depthwise conv with darknet's fixed weights."""
    if kind == 2:
        k = np.full((2, 2), 0.25, F32)
        pad = 0
    else:
        k = (np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], F32) / 16).astype(F32)
        pad = 1
    c = x.shape[1]
    wts = np.zeros((c, 1, *k.shape), F32)
    wts[:, 0] = k
    out = np.concatenate([conv_loop(x[:, i:i + 1], wts[i:i + 1], sy, sx, pad) for i in range(c)], 1)
    return out


def reorg_cpu(x, w, h, c, batch, stride, forward):
    """blas.c reorg_cpu on flat buffers."""
    x = x.reshape(-1)
    out = np.zeros(w * h * c * batch, F32)
    out_c = c // (stride * stride)
    for b, k, j, i in itertools.product(range(batch), range(c), range(h), range(w)):
        in_index = i + w * (j + h * (k + c * b))
        c2, offset = k % out_c, k // out_c
        w2, h2 = i * stride + offset % stride, j * stride + offset // stride
        out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
        if forward:
            out[out_index] = x[in_index]
        else:
            out[in_index] = x[out_index]
    return out


def upsample_cpu(inp, w, h, c, batch, stride, forward, scale, out):
    """blas.c upsample_cpu on flat buffers (in place on ``inp`` or ``out``)."""
    for b, k, j, i in itertools.product(range(batch), range(c), range(h * stride), range(w * stride)):
        in_index = b * w * h * c + k * w * h + (j // stride) * w + i // stride
        out_index = b * w * h * c * stride * stride + k * w * h * stride * stride + j * w * stride + i
        if forward:
            out[out_index] = scale * inp[in_index]
        else:
            inp[in_index] = F32(inp[in_index] + F32(scale * out[out_index]))


def shortcut_cpu(add, out, alpha, beta):
    """pjreddie blas.c shortcut_cpu: add (B, c1, h1, w1) into out (B, c2, h2, w2)."""
    out = out.copy()
    b_, c1, h1, w1 = add.shape
    _, c2, h2, w2 = out.shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    for b, k, j, i in itertools.product(range(b_), range(min(c1, c2)), range(min(h1, h2)),
                                        range(min(w1, w2))):
        out[b, k, j * sample, i * sample] = F32(alpha * out[b, k, j * sample, i * sample]) + \
            F32(beta * add[b, k, j * stride, i * stride])
    return out


def shortcut_multilayer_cpu(inp, adds, weights, nweights, norm):
    """AlexeyAB blas.c shortcut_multilayer_cpu, element by element."""
    b_ = inp.shape[0]
    src_outputs = inp[0].size
    n = len(adds)
    flat_in = inp.reshape(-1)
    out = np.zeros_like(flat_in)
    wflat = None if weights is None else weights.reshape(-1)
    layer_step = nweights // (n + 1)
    step = src_outputs // layer_step if nweights > 0 else 0
    for idx in range(b_ * src_outputs):
        src_i, src_b = idx % src_outputs, idx // src_outputs
        s, max_val = 1.0, -FLT_MAX
        if wflat is not None and norm != "none":
            ws = [float(wflat[src_i // step + i * layer_step]) for i in range(n + 1)]
            if norm == "softmax":
                max_val = max(max_val, *ws)
            s = 0.0001
            for v in ws:
                s += max(v, 0.0) if norm == "relu" else np.exp(v - max_val)

        def weight(i):
            v = float(wflat[src_i // step + i * layer_step])
            if norm == "relu":
                return max(v, 0.0) / s
            if norm == "softmax":
                return np.exp(v - max_val) / s
            return v
        acc = flat_in[idx] * (weight(0) if wflat is not None else 1.0)
        for i, a in enumerate(adds):
            add_outputs = a[0].size
            if src_i < add_outputs:
                val = a.reshape(-1)[add_outputs * src_b + src_i]
                acc += val * (weight(i + 1) if wflat is not None else 1.0)
        out[idx] = acc
    return out.reshape(inp.shape)


# ------------------------------------------------------------------ maxpool / pooling

@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
@pytest.mark.parametrize("size,stride,padding", [(2, 2, None), (2, 1, None), (3, 2, None),
                                                 (3, 1, 0), (3, 2, 3), (5, 1, None), (2, 3, 1),
                                                 (4, 2, None), (3, 3, 4)])
@pytest.mark.parametrize("h,w", [(7, 6), (8, 6)])   # windows reaching out on one side, both or none
def test_maxpool_windows(dialect, size, stride, padding, h, w):
    pad_line = "" if padding is None else f"padding={padding}\n"
    m = build(f"[maxpool]\nsize={size}\nstride={stride}\n{pad_line}", 2, h, w, dialect)
    pad = size - 1 if padding is None else padding
    x = rand(2, 2, h, w)
    ref = maxpool_loop(x, size, stride, stride, pad)
    assert m.shapes[0] == ref.shape[1:]
    np.testing.assert_array_equal(run(m, 0, x), ref)


def test_maxpool_by_hand_size2_stride1_pads_right_and_bottom():
    m = build("[maxpool]\nsize=2\nstride=1\n", 1, 2, 2, "pjreddie")
    x = np.array([[[[-1, -2], [-3, -4]]]], F32)
    # windows start at 0 (padding 1 total, -1/2 = 0): the right/bottom columns see only themselves
    np.testing.assert_array_equal(run(m, 0, x), [[[[-1, -2], [-3, -4]]]])


def test_maxpool_size_defaults_to_stride():
    m = build("[maxpool]\nstride=2\n", 1, 6, 6, "pjreddie")
    assert m.module_list[0].size == 2 and m.shapes[0] == (1, 3, 3)


def test_maxpool_stride_xy_alexeyab():
    m = build("[maxpool]\nsize=3\nstride_x=2\nstride_y=1\n", 2, 5, 7, "alexeyab")
    x = rand(1, 2, 5, 7)
    ref = maxpool_loop(x, 3, 1, 2, 2)
    assert m.shapes[0] == (2, 5, 4) == ref.shape[1:]
    np.testing.assert_array_equal(run(m, 0, x), ref)
    # pjreddie does not read stride_x/stride_y
    pj = build("[maxpool]\nsize=3\nstride=1\nstride_x=2\n", 2, 5, 7, "pjreddie")
    assert pj.shapes[0] == (2, 5, 7)


@pytest.mark.parametrize("c,out_c", [(5, 2), (4, 4), (2, 3)])
def test_maxpool_depth(c, out_c):
    m = build(f"[maxpool]\nmaxpool_depth=1\nout_channels={out_c}\nsize=2\nstride=2\n", c, 3, 4,
              "alexeyab")
    x = rand(2, c, 3, 4)
    ref = np.full((2, out_c, 3, 4), -FLT_MAX, F32)
    for b, g, i, j in itertools.product(range(2), range(out_c), range(3), range(4)):
        for k in range(g, c, out_c):
            ref[b, g, i, j] = max(ref[b, g, i, j], x[b, k, i, j])
    assert m.shapes[0] == (out_c, 3, 4)
    np.testing.assert_array_equal(run(m, 0, x), ref)


@pytest.mark.parametrize("kind", [1, 2])
def test_maxpool_antialiasing(kind):
    m = build(f"[maxpool]\nsize=2\nstride=2\nantialiasing={kind}\n", 2, 8, 7, "alexeyab")
    x = rand(1, 2, 8, 7)
    ref = blur_loop(maxpool_loop(x, 2, 1, 1, 1), kind, 2, 2)
    # host pooling at stride 1: 8x7; blur 3x3 pad 1 stride 2: 4x4; blur 2x2 pad 0 stride 2: 4x3
    assert m.shapes[0] == ref.shape[1:] == ((2, 4, 4) if kind == 1 else (2, 4, 3))
    close(run(m, 0, x), ref)


@pytest.mark.parametrize("size,stride,padding", [(3, 1, None), (2, 2, None), (4, 4, None),
                                                 (3, 2, 4)])
def test_local_avgpool(size, stride, padding):
    pad_line = "" if padding is None else f"padding={padding}\n"
    m = build(f"[local_avgpool]\nsize={size}\nstride={stride}\n{pad_line}", 2, 6, 5, "alexeyab")
    x = rand(1, 2, 6, 5)
    ref = local_avgpool_loop(x, size, stride, stride, size - 1 if padding is None else padding)
    assert m.shapes[0] == ref.shape[1:]
    close(run(m, 0, x), ref, 1e-6)


def test_local_avgpool_by_hand():
    m = build("[local_avgpool]\nsize=2\nstride=1\n", 1, 2, 2, "alexeyab")
    x = np.array([[[[1, 2], [3, 5]]]], F32)
    # windows at 0..1: (1+2+3+5)/4, (2+5)/2, (3+5)/2, 5/1
    np.testing.assert_allclose(run(m, 0, x), [[[[2.75, 3.5], [4.0, 5.0]]]])


def test_avgpool_by_hand():
    m = build("[avgpool]\n", 2, 2, 2, "pjreddie")
    x = np.array([[[[1, 2], [3, 4]], [[-1, -1], [-1, 3]]]], F32)
    np.testing.assert_allclose(run(m, 0, x), [[[[2.5]], [[0.0]]]])
    assert m.shapes[0] == (2, 1, 1)


# ------------------------------------------------------------------ convolutional

def _set_conv(layer, rng_scale=0.5):
    with torch.no_grad():
        layer.weights.copy_(torch.from_numpy(rand(*layer.weights.shape, scale=rng_scale)))
        layer.biases.copy_(torch.from_numpy(rand(*layer.biases.shape, scale=0.1)))
    return layer.weights.detach().numpy().copy(), layer.biases.detach().numpy().copy()


@pytest.mark.parametrize("size,pad,stride,dil", [(3, 1, 1, 2), (3, 1, 2, 3), (5, 1, 1, 2),
                                                 (3, 1, 1, 1)])
def test_conv_dilation_alexeyab(size, pad, stride, dil):
    m = build(f"[convolutional]\nfilters=3\nsize={size}\nstride={stride}\npad={pad}\n"
              f"dilation={dil}\nactivation=linear\n", 2, 9, 8, "alexeyab")
    wts, b = _set_conv(m.module_list[0])
    x = rand(1, 2, 9, 8)
    p = size // 2
    ref = conv_loop(x, wts, stride, stride, p, dil) + b.reshape(1, -1, 1, 1)
    # darknet's output size ignores dilation: (h + 2*pad - size)/stride + 1
    assert m.shapes[0] == (3, cdiv(9 + 2 * p - size, stride) + 1, cdiv(8 + 2 * p - size, stride) + 1)
    close(run(m, 0, x), ref)


def test_conv_dilation_size_mismatch_is_refused():
    with pytest.raises(UnsupportedLayerError, match="dilation"):
        build("[convolutional]\nfilters=1\nsize=3\npadding=0\ndilation=2\n", 1, 9, 9, "alexeyab")


def test_conv_dilation_ignored_by_pjreddie():
    m = build("[convolutional]\nfilters=1\nsize=3\npad=1\ndilation=2\nactivation=linear\n",
              1, 5, 5, "pjreddie")
    wts, b = _set_conv(m.module_list[0])
    x = rand(1, 1, 5, 5)
    close(run(m, 0, x), conv_loop(x, wts, 1, 1, 1) + b.reshape(1, -1, 1, 1))


def test_conv_stride_xy():
    m = build("[convolutional]\nfilters=2\nsize=3\nstride_x=1\nstride_y=2\npad=1\n"
              "activation=leaky\n", 2, 7, 5, "alexeyab")
    wts, b = _set_conv(m.module_list[0])
    x = rand(1, 2, 7, 5)
    y = conv_loop(x, wts, 2, 1, 1) + b.reshape(1, -1, 1, 1)
    ref = np.where(y > 0, y, F32(0.1) * y)
    assert m.shapes[0] == (2, 4, 5)
    close(run(m, 0, x), ref)


@pytest.mark.parametrize("kind,stride", [(1, 2), (2, 2), (1, 1)])
def test_conv_antialiasing(kind, stride):
    m = build(f"[convolutional]\nbatch_normalize=1\nfilters=2\nsize=3\nstride={stride}\npad=1\n"
              f"antialiasing={kind}\nactivation=relu\n", 2, 8, 6, "alexeyab")
    layer = m.module_list[0]
    wts, b = _set_conv(layer)
    with torch.no_grad():
        layer.scales.copy_(torch.tensor([1.5, 0.5]))
        layer.rolling_mean.copy_(torch.tensor([0.1, -0.2]))
        layer.rolling_variance.copy_(torch.tensor([2.0, 0.5]))
    x = rand(1, 2, 8, 6)
    y = conv_loop(x, wts, 1, 1, 1)  # the host conv runs at stride 1
    y = (y - np.array([0.1, -0.2], F32).reshape(1, -1, 1, 1)) / np.sqrt(
        np.array([2.0, 0.5], F32).reshape(1, -1, 1, 1) + F32(1e-5))
    y = y * np.array([1.5, 0.5], F32).reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    ref = blur_loop(np.maximum(y, 0).astype(F32), kind, stride, stride)
    assert m.shapes[0] == ref.shape[1:]
    close(run(m, 0, x), ref)
    # the blur is fixed: it adds nothing to the weights file
    assert [n for n, _ in layer.darknet_tensors()] == ["biases", "scales", "rolling_mean",
                                                       "rolling_variance", "weights"]


def test_conv_1x1_stride2_reads_flat_input_pjreddie():
    """pjreddie's 1x1 path is gemm(weights, im) with im the raw input: stride is ignored and
    the first out_h*out_w values of each channel are read."""
    m = build("[convolutional]\nfilters=2\nsize=1\nstride=2\nactivation=linear\n", 3, 4, 4,
              "pjreddie")
    wts, b = _set_conv(m.module_list[0])
    x = rand(1, 3, 4, 4)
    assert m.shapes[0] == (2, 2, 2)
    cols = x.reshape(-1)[:12].reshape(3, 4)  # B[k][j] = im[k*n + j], ldb = n = out_h*out_w
    ref = (wts.reshape(2, 3) @ cols).reshape(1, 2, 2, 2) + b.reshape(1, -1, 1, 1)
    close(run(m, 0, x), ref)
    # AlexeyAB strides a 1x1 convolution properly when stride_x > 1
    ab = build("[convolutional]\nfilters=2\nsize=1\nstride=2\nactivation=linear\n", 3, 4, 4,
               "alexeyab")
    wts, b = _set_conv(ab.module_list[0])
    close(run(ab, 0, x), conv_loop(x, wts, 2, 2, 0) + b.reshape(1, -1, 1, 1))


def test_conv_xnor():
    x = rand(1, 2, 5, 5)
    for dialect, pad_value in (("pjreddie", 0.0), ("alexeyab", -1.0)):
        m = build("[convolutional]\nxnor=1\nfilters=2\nsize=3\npad=1\nactivation=linear\n",
                  2, 5, 5, dialect)
        wts, b = _set_conv(m.module_list[0])
        mean = np.abs(wts).reshape(2, -1).mean(1).reshape(2, 1, 1, 1)
        wb = np.where(wts > 0, mean, -mean).astype(F32)
        xb = np.where(x > 0, 1, -1).astype(F32)
        # pjreddie pads the binarised input with 0, AlexeyAB's bit-packed im2col with -1 bits
        xp = np.pad(xb, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_value)
        ref = conv_loop(xp, wb, 1, 1, 0) + b.reshape(1, -1, 1, 1)
        close(run(m, 0, x), ref)


def test_conv_share_index():
    m = build("[convolutional]\nfilters=2\nsize=3\npad=1\nbatch_normalize=1\nactivation=linear\n"
              "[convolutional]\nfilters=2\nsize=3\npad=1\nbatch_normalize=1\nshare_index=0\n"
              "activation=linear\n", 2, 4, 4, "alexeyab")
    a, s = m.module_list[0], m.module_list[1]
    _set_conv(a)
    x = rand(1, 2, 4, 4)
    np.testing.assert_array_equal(run(m, 1, x), run(m, 0, x))
    assert s.darknet_tensors() == [] and s.weights is a.weights and s.rolling_mean is a.rolling_mean
    assert len(list(s.parameters())) == 0
    with pytest.raises(CfgError, match="share_index"):
        build("[convolutional]\nfilters=2\nsize=3\npad=1\n[convolutional]\nfilters=3\nsize=3\n"
              "pad=1\nshare_index=0\n", 2, 4, 4, "alexeyab")


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_conv_groups(dialect):
    m = build("[convolutional]\nfilters=4\ngroups=2\nsize=3\nstride=2\npad=1\n"
              "activation=linear\n", 6, 5, 5, dialect)
    wts, b = _set_conv(m.module_list[0])
    assert wts.shape == (4, 3, 3, 3)  # [n][c/groups][size][size]
    x = rand(1, 6, 5, 5)
    close(run(m, 0, x), conv_loop(x, wts, 2, 2, 1, groups=2) + b.reshape(1, -1, 1, 1))


def test_conv_cbn_has_bn():
    m = build("[convolutional]\ncbn=1\nfilters=4\nsize=1\nactivation=linear\n",
              2, 3, 3, "alexeyab")
    assert m.module_list[0].batch_normalize  # cbn=1 is batch_normalize=2 in darknet


# ------------------------------------------------------------------ deconvolutional

@pytest.mark.parametrize("size,stride,pad", [(3, 2, 1), (2, 2, 0), (4, 2, 1), (3, 1, 0)])
def test_deconvolutional(size, stride, pad):
    pad_line = "pad=1\n" if pad else ""
    m = build(f"[deconvolutional]\nfilters=2\nsize={size}\nstride={stride}\n{pad_line}"
              f"activation=linear\n", 3, 3, 4, "pjreddie")
    layer = m.module_list[0]
    wts, b = _set_conv(layer)
    padding = size // 2 if pad else 0
    oh, ow = (3 - 1) * stride + size - 2 * padding, (4 - 1) * stride + size - 2 * padding
    assert m.shapes[0] == (2, oh, ow) and wts.shape == (3, 2, size, size)  # [c][n][k][k]
    x = rand(1, 3, 3, 4)
    # gemm(weights^T, input) then col2im: every input pixel adds w[c][o] at y*s - pad + ky
    ref = np.zeros((1, 2, oh, ow), np.float64)
    for c, o, y, xx, ky, kx in itertools.product(range(3), range(2), range(3), range(4),
                                                 range(size), range(size)):
        r, q = y * stride - padding + ky, xx * stride - padding + kx
        if 0 <= r < oh and 0 <= q < ow:
            ref[0, o, r, q] += float(wts[c, o, ky, kx]) * float(x[0, c, y, xx])
    close(run(m, 0, x), (ref + b.reshape(1, -1, 1, 1)).astype(F32))


# ------------------------------------------------------------------ batchnorm layer

def test_batchnorm_layer_both_dialects():
    x = rand(1, 2, 2, 3)
    mean, var = np.array([0.5, -1.0], F32), np.array([4.0, 0.25], F32)
    scales, biases = np.array([2.0, 3.0], F32), np.array([0.5, -0.5], F32)
    for dialect in ("pjreddie", "alexeyab"):
        m = build("[batchnorm]\n", 2, 2, 3, dialect)
        layer = m.module_list[0]
        with torch.no_grad():
            layer.scales.copy_(torch.from_numpy(scales))
            layer.rolling_mean.copy_(torch.from_numpy(mean))
            layer.rolling_variance.copy_(torch.from_numpy(var))
            layer.biases.copy_(torch.from_numpy(biases))
        sh = (1, 2, 1, 1)
        if dialect == "pjreddie":
            norm = (x - mean.reshape(sh)) / (np.sqrt(var.reshape(sh)) + F32(1e-6))
            names = ["scales", "rolling_mean", "rolling_variance"]
        else:
            norm = (x - mean.reshape(sh)) / np.sqrt(var.reshape(sh) + F32(1e-5))
            names = ["biases", "scales", "rolling_mean", "rolling_variance"]
        close(run(m, 0, x), norm * scales.reshape(sh) + biases.reshape(sh), 1e-6)
        assert [n for n, _ in layer.darknet_tensors()] == names


# ------------------------------------------------------------------ multi-input helpers

def chain_net(base: tuple[int, int, int], shapes: list[tuple[int, int, int]], tail, dialect: str):
    """A net whose layers end with the given shapes, then ``tail(indices)``.

    Layer 0 is an identity maxpool on the (c, h, w) input; each shape is made by
    ``[route] layers=0`` + a 1x1 convolution (channels) + an upsample or maxpool (size).
    Returns (model, absolute indices of the layers with ``shapes``)."""
    c0, h0, _ = base
    text = ["[maxpool]\nsize=1\nstride=1\n"]
    count, idx = 1, []
    for c, h, w in shapes:
        text.append("[route]\nlayers=0\n")
        text.append(f"[convolutional]\nfilters={c}\nsize=1\nactivation=linear\n")
        count += 2
        if h > h0:
            text.append(f"[upsample]\nstride={h // h0}\n")
            count += 1
        elif h < h0:
            text.append(f"[maxpool]\nsize={h0 // h}\nstride={h0 // h}\n")
            count += 1
        idx.append(count - 1)
    text.append(tail(idx))
    m = build("".join(text), *base, dialect)
    for i, shp in zip(idx, shapes):
        assert m.shapes[i] == shp
    return m, idx


# ------------------------------------------------------------------ shortcut

@pytest.mark.parametrize("from_shape", [(3, 8, 8), (3, 2, 2), (5, 4, 4), (2, 8, 8), (3, 4, 4)])
def test_shortcut_pjreddie_shapes(from_shape):
    """shortcut_cpu: integer stride/sample between the sizes, min(C) channels, alpha/beta."""
    m, (f, p) = chain_net((1, 4, 4), [from_shape, (3, 4, 4)],
                          lambda i: f"[shortcut]\nfrom={i[0]}\nalpha=0.5\nbeta=2\nactivation=linear\n",
                          "pjreddie")
    prev, add = rand(2, 3, 4, 4), rand(2, *from_shape)
    last = len(m.module_list) - 1
    assert m.module_list[last].sources == [p, f] and m.shapes[last] == (3, 4, 4)
    np.testing.assert_array_equal(run(m, last, prev, add), shortcut_cpu(add, prev, 0.5, 2.0))


def test_shortcut_pjreddie_unequal_factors_refused():
    # from: a 1x4x8 crop; previous: 1x4x4 -> w1/w2 = 2 but h1/h2 = 1 (darknet asserts)
    with pytest.raises(CfgError, match="unequal"):
        build("[maxpool]\nsize=1\nstride=1\n[crop]\ncrop_height=4\ncrop_width=8\n"
              "[route]\nlayers=0\n[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=1\n",
              1, 8, 8, "pjreddie")


def test_shortcut_pjreddie_by_hand():
    m, (f, p) = chain_net((1, 2, 2), [(1, 4, 4), (1, 2, 2)],
                          lambda i: f"[shortcut]\nfrom={i[0]}\nactivation=linear\n", "pjreddie")
    add = np.arange(16, dtype=F32).reshape(1, 1, 4, 4)
    prev = np.full((1, 1, 2, 2), 100, F32)
    # stride 2: out[y][x] += add[2y][2x]
    np.testing.assert_array_equal(run(m, len(m.module_list) - 1, prev, add),
                                  [[[[100, 102], [108, 110]]]])


@pytest.mark.parametrize("wt,norm", [("none", "none"), ("per_feature", "none"),
                                     ("per_feature", "relu"), ("per_channel", "softmax"),
                                     ("per_channel", "relu"), ("per_layer", "avg_relu")])
def test_shortcut_alexeyab_multi(wt, norm):
    shapes = [(3, 4, 4), (2, 2, 2), (3, 8, 8), (3, 4, 4)]  # from layers..., previous layer last
    m, idx = chain_net((1, 4, 4), shapes,
                       lambda i: f"[shortcut]\nfrom={i[0]},{i[1]},{i[2]}\nweights_type={wt}\n"
                                 f"weights_normalization={norm}\nactivation=leaky\n", "alexeyab")
    last = len(m.module_list) - 1
    layer = m.module_list[last]
    assert layer.sources == [idx[3], idx[0], idx[1], idx[2]]
    nweights = {"none": 0, "per_feature": 4, "per_layer": 4, "per_channel": 12}[wt]
    weights = None
    if nweights:
        weights = rand(nweights)
        with torch.no_grad():
            layer.weights.copy_(torch.from_numpy(weights).view_as(layer.weights))
        assert [n for n, t in layer.darknet_tensors()] == ["weights"]
        assert layer.darknet_tensors()[0][1].numel() == nweights
    prev = rand(2, 3, 4, 4)
    adds = [rand(2, *s) for s in shapes[:3]]
    y = shortcut_multilayer_cpu(prev, adds, weights, nweights,
                                {"avg_relu": "relu"}.get(norm, norm))
    ref = np.where(y > 0, y, F32(0.1) * y)
    close(run(m, last, prev, *adds), ref.astype(F32))


def test_shortcut_alexeyab_errors():
    with pytest.raises(CfgError, match="weights_type"):
        build("[maxpool]\nsize=1\nstride=1\n[shortcut]\nfrom=-1\nweights_type=bad\n", 1, 2, 2,
              "alexeyab")
    with pytest.raises(CfgError, match="weights_normalization"):
        build("[maxpool]\nsize=1\nstride=1\n[shortcut]\nfrom=-1\nweights_type=per_feature\n"
              "weights_normalization=bad\n", 1, 2, 2, "alexeyab")
    # darknet only checks the normalisation when the layer has weights
    build("[maxpool]\nsize=1\nstride=1\n[shortcut]\nfrom=-1\nweights_normalization=bad\n",
          1, 2, 2, "alexeyab")


# ------------------------------------------------------------------ scale_channels / sam

def test_scale_channels():
    m, (f, p) = chain_net((1, 4, 4), [(3, 4, 4), (3, 1, 1)],
                          lambda i: f"[scale_channels]\nfrom={i[0]}\nactivation=linear\n", "alexeyab")
    last = len(m.module_list) - 1
    scale, feat = rand(2, 3, 1, 1), rand(2, 3, 4, 4)
    # forward_scale_channels_layer: out[i] = input[i / channel_size] * from[i]
    ref = np.array([scale.reshape(-1)[i // 16] * feat.reshape(-1)[i] for i in range(96)],
                   F32).reshape(2, 3, 4, 4)
    assert m.shapes[last] == (3, 4, 4)
    np.testing.assert_array_equal(run(m, last, scale, feat), ref)


def test_scale_channels_wh():
    m, _ = chain_net((1, 4, 4), [(3, 4, 4), (1, 4, 4)],
                     lambda i: f"[scale_channels]\nfrom={i[0]}\nscale_wh=1\n", "alexeyab")
    last = len(m.module_list) - 1
    scale, feat = rand(2, 1, 4, 4), rand(2, 3, 4, 4)
    # input_index = i % channel_size + (i / batch_size) * channel_size
    ref = np.array([scale.reshape(-1)[i % 16 + (i // 48) * 16] * feat.reshape(-1)[i]
                    for i in range(96)], F32).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(run(m, last, scale, feat), ref)


def test_scale_channels_shape_checks():
    with pytest.raises(CfgError):
        chain_net((1, 4, 4), [(3, 4, 4), (3, 2, 2)],
                  lambda i: f"[scale_channels]\nfrom={i[0]}\n", "alexeyab")
    with pytest.raises(CfgError):
        chain_net((1, 4, 4), [(3, 4, 4), (2, 4, 4)],
                  lambda i: f"[scale_channels]\nfrom={i[0]}\nscale_wh=1\n", "alexeyab")


def test_sam():
    m, _ = chain_net((1, 4, 4), [(3, 4, 4), (3, 4, 4)],
                     lambda i: f"[sam]\nfrom={i[0]}\nactivation=logistic\n", "alexeyab")
    last = len(m.module_list) - 1
    a, b = rand(2, 3, 4, 4), rand(2, 3, 4, 4)
    y = a * b
    close(run(m, last, a, b), F32(1) / (F32(1) + np.exp(-y)), 1e-6)
    with pytest.raises(CfgError):
        chain_net((1, 4, 4), [(3, 4, 4), (3, 2, 2)], lambda i: f"[sam]\nfrom={i[0]}\n", "alexeyab")


# ------------------------------------------------------------------ reorg

@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg(dialect, reverse):
    c, h, w, s = 8, 4, 6, 2
    m = build(f"[reorg]\nstride={s}\nreverse={reverse}\n", c, h, w, dialect)
    x = rand(2, c, h, w)
    if reverse:
        ref = reorg_cpu(x, w, h, c, 2, s, forward=1).reshape(2, c // 4, h * 2, w * 2)
    else:
        ref = reorg_cpu(x, w, h, c, 2, s, forward=0).reshape(2, c * 4, h // 2, w // 2)
    assert m.shapes[0] == ref.shape[1:]
    np.testing.assert_array_equal(run(m, 0, x), ref)


@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg3d(reverse):
    s = 2
    c, h, w = (16, 2, 3) if reverse else (3, 4, 6)
    m = build(f"[reorg3d]\nstride={s}\nreverse={reverse}\n", c, h, w, "alexeyab")
    x = rand(2, c, h, w)
    oc, oh, ow = (c // 4, h * 2, w * 2) if reverse else (c * 4, h // 2, w // 2)
    # forward_reorg_layer: reorg_cpu(input, out_w, out_h, out_c, batch, stride, reverse, output)
    ref = reorg_cpu(x, ow, oh, oc, 2, s, forward=reverse).reshape(2, oc, oh, ow)
    assert m.shapes[0] == (oc, oh, ow)
    np.testing.assert_array_equal(run(m, 0, x), ref)


def test_reorg3d_by_hand_is_space_to_depth():
    m = build("[reorg3d]\nstride=2\n", 1, 2, 2, "alexeyab")
    x = np.array([[[[1, 2], [3, 4]]]], F32)
    # channel k = offset (c=1) reads x[offset/2][offset%2]
    np.testing.assert_array_equal(run(m, 0, x), [[[[1]], [[2]], [[3]], [[4]]]])
    # pjreddie's [reorg] on the same input reads it as if it were (c/4, 2h, 2w): not possible
    with pytest.raises(UnsupportedLayerError):
        build("[reorg]\nstride=2\n", 1, 2, 2, "pjreddie")


def test_reorg3d_odd_size_reads_like_darknet():
    m = build("[reorg3d]\nstride=2\n", 2, 5, 5, "alexeyab")
    x = rand(1, 2, 5, 5)
    # reorg_cpu over the output dims (2x2x8) gathers from the input buffer with row stride 4
    flat = x.reshape(-1)
    ref = np.zeros(32, F32)
    for k, j, i in itertools.product(range(8), range(2), range(2)):
        c2, offset = k % 2, k // 2
        ref[i + 2 * (j + 2 * k)] = flat[(i * 2 + offset % 2) + 4 * ((j * 2 + offset // 2) + 4 * c2)]
    assert m.shapes[0] == (8, 2, 2)
    np.testing.assert_array_equal(run(m, 0, x).reshape(-1), ref)


def test_reorg_pjreddie_flatten_and_extra():
    x = rand(2, 3, 2, 2)
    m = build("[reorg]\nstride=1\nflatten=1\n", 3, 2, 2, "pjreddie")
    # flatten(forward=1): swap[b*L*S + i*L + c] = x[b*L*S + c*S + i], L = c, S = h*w
    ref = np.zeros(24, F32)
    for b, c, i in itertools.product(range(2), range(3), range(4)):
        ref[b * 12 + i * 3 + c] = x.reshape(-1)[b * 12 + c * 4 + i]
    np.testing.assert_array_equal(run(m, 0, x).reshape(-1), ref)
    back = build("[reorg]\nstride=1\nflatten=1\nreverse=1\n", 3, 2, 2, "pjreddie")
    np.testing.assert_array_equal(run(back, 0, ref.reshape(2, 3, 2, 2)), x)
    ext = build("[reorg]\nstride=1\nextra=5\n", 3, 2, 2, "pjreddie")
    out = run(ext, 0, x)
    assert ext.shapes[0] == (17, 1, 1)
    np.testing.assert_array_equal(out.reshape(2, 17)[:, :12], x.reshape(2, 12))
    assert not out.reshape(2, 17)[:, 12:].any()


# ------------------------------------------------------------------ upsample

def test_upsample_by_hand():
    m = build("[upsample]\nstride=2\nscale=0.5\n", 1, 2, 2, "pjreddie")
    x = np.array([[[[1, 2], [3, 4]]]], F32)
    np.testing.assert_array_equal(run(m, 0, x), 0.5 * np.kron(x, np.ones((2, 2), F32)))


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7)])
def test_upsample_negative_stride(h, w):
    m = build("[upsample]\nstride=-2\nscale=0.25\n", 2, h, w, "alexeyab")
    x = rand(2, 2, h, w)
    oh, ow = h // 2, w // 2
    out = np.zeros(2 * 2 * oh * ow, F32)
    # forward_upsample_layer: upsample_cpu(l.output, out_w, out_h, c, batch, stride, 0, scale, input)
    upsample_cpu(out, ow, oh, 2, 2, 2, 0, F32(0.25), x.reshape(-1))
    assert m.shapes[0] == (2, oh, ow)
    close(run(m, 0, x), out.reshape(2, 2, oh, ow), 1e-6)


# ------------------------------------------------------------------ implicit, crop, lrn, softmax

def test_implicit():
    m = build("[maxpool]\nsize=1\nstride=1\n[implicit]\nfilters=3\natoms=2\n", 1, 2, 2, "alexeyab")
    layer = m.module_list[1]
    assert m.shapes[1] == (3, 2, 1)
    w = rand(6)
    with torch.no_grad():
        layer.weights.copy_(torch.from_numpy(w).view_as(layer.weights))
    out = run(m, 1, rand(2, 1, 2, 2))
    # forward_implicit_layer: output[i] = weights[i % nweights]
    np.testing.assert_array_equal(out.reshape(-1), np.tile(w, 2))
    assert [n for n, t in layer.darknet_tensors()] == ["weights"]


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_crop(dialect):
    m = build("[crop]\ncrop_height=3\ncrop_width=2\n", 2, 5, 5, dialect)
    x = rand(1, 2, 5, 5)
    # at inference: dh = (5-3)/2 = 1, dw = (5-2)/2 = 1; x*2 - 1
    np.testing.assert_array_equal(run(m, 0, x), x[:, :, 1:4, 1:3] * 2 - 1)
    m = build("[crop]\ncrop_height=4\ncrop_width=4\nnoadjust=1\n", 2, 5, 5, dialect)
    np.testing.assert_array_equal(run(m, 0, x), x[:, :, 0:4, 0:4])


def lrn_loop(x, size, alpha, beta, kappa):
    """forward_normalization_layer, including its running-sum bookkeeping."""
    b_, c, h, w = x.shape
    sq = (x * x).astype(F32)
    norms = np.zeros_like(x)
    for b in range(b_):
        norms[b, 0] = kappa
        for k in range(size // 2):
            norms[b, 0] = norms[b, 0] + F32(alpha) * (sq[b, k] if k < c else 0)
        for k in range(1, c):
            norms[b, k] = norms[b, k - 1]
            prev, nxt = k - (size - 1) // 2 - 1, k + size // 2
            if prev >= 0:
                norms[b, k] = norms[b, k] + F32(-alpha) * sq[b, prev]
            if nxt < c:
                norms[b, k] = norms[b, k] + F32(alpha) * sq[b, nxt]
    return (np.power(norms.astype(np.float64), -beta).astype(F32) * x).astype(F32)


@pytest.mark.parametrize("size", [5, 3, 4, 1])
def test_normalization(size):
    m = build(f"[normalization]\nsize={size}\nalpha=0.1\nbeta=0.75\nkappa=2\n", 7, 2, 3, "pjreddie")
    x = rand(2, 7, 2, 3)
    close(run(m, 0, x), lrn_loop(x, size, F32(0.1), F32(0.75), F32(2)), 1e-6)


def test_normalization_by_hand():
    """size=3 over channels [1, 2, 3]: darknet's norms are [k+1, k+1+9, k+9] (the square of
    channel size/2 = 1 is never added), not the textbook [k+1+4, k+1+4+9, k+4+9]."""
    m = build("[lrn]\nsize=3\nalpha=1\nbeta=1\nkappa=1\n", 3, 1, 1, "pjreddie")
    x = np.array([1, 2, 3], F32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(run(m, 0, x).reshape(-1), [1 / 2, 2 / 11, 3 / 10], rtol=1e-6)


def test_softmax_groups_temperature():
    m = build("[softmax]\ngroups=2\ntemperature=2\n", 2, 1, 2, "pjreddie")
    x = np.array([0, 2, 1, 1], F32).reshape(1, 2, 1, 2)
    e = np.exp(np.array([0, 1], np.float64))
    np.testing.assert_allclose(run(m, 0, x).reshape(-1), [*(e / e.sum()), 0.5, 0.5], rtol=1e-6)
    # spatial=1 only changes darknet's GPU path; the CPU forward is the same grouped softmax
    sp = build("[softmax]\nspatial=1\n", 2, 1, 2, "alexeyab")
    e = np.exp(x.reshape(-1).astype(np.float64) - 2)
    np.testing.assert_allclose(run(sp, 0, x).reshape(-1), e / e.sum(), rtol=1e-6)


# ------------------------------------------------------------------ one-input passthroughs

def test_activation_empty_logistic_l2norm():
    x = rand(1, 2, 2, 2)
    m = build("[activation]\nactivation=mish\n[empty]\n[silence]\n", 2, 2, 2, "alexeyab")
    y = run(m, 0, x)
    sp = np.where(x > 20, x, np.log(np.exp(x) + F32(1)))
    close(y, x * (F32(2) / (F32(1) + np.exp(F32(-2) * sp)) - F32(1)), 1e-6)
    np.testing.assert_array_equal(run(m, 1, x), x)
    np.testing.assert_array_equal(run(m, 2, x), x)
    pj = build("[logistic]\n[l2norm]\n", 2, 2, 2, "pjreddie")
    close(run(pj, 0, x), (1 / (1 + np.exp(-x.astype(np.float64)))).astype(F32), 1e-7)
    v = np.array([3, 4], F32).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(run(pj, 1, v).reshape(-1), [0.6, 0.8], rtol=1e-7)


def test_dropout_identity_at_inference():
    m = build("[dropout]\nprobability=0.5\n", 2, 2, 2, "pjreddie")
    x = rand(1, 2, 2, 2)
    np.testing.assert_array_equal(run(m, 0, x), x)


def test_contrastive_outputs_zeros():
    m = build("[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
              "[yolo]\nmask=0,1\nanchors=1,1,2,2\nclasses=4\nnum=2\n"
              "[route]\nlayers=-2\n[contrastive]\nclasses=1\nyolo_layer=-2\n", 3, 4, 4, "alexeyab")
    x = rand(1, 18, 4, 4)
    assert m.shapes[3] == (18, 4, 4)
    np.testing.assert_array_equal(run(m, 3, x), np.zeros_like(x))
    with pytest.raises(CfgError, match="yolo"):
        build("[maxpool]\nsize=1\nstride=1\n[contrastive]\nyolo_layer=-1\n", 1, 2, 2, "alexeyab")


def test_route_groups_by_hand():
    m, idx = chain_net((1, 2, 2), [(4, 2, 2), (2, 2, 2)],
                       lambda i: f"[route]\nlayers={i[0]},{i[1]}\ngroups=2\ngroup_id=1\n",
                       "alexeyab")
    a = np.arange(16, dtype=F32).reshape(1, 4, 2, 2)
    b = -np.arange(8, dtype=F32).reshape(1, 2, 2, 2)
    out = run(m, len(m.module_list) - 1, a, b)
    np.testing.assert_array_equal(out, np.concatenate([a[:, 2:], b[:, 1:]], 1))


def test_bad_sizes_name_the_line():
    with pytest.raises(DarknetError, match=r":\d+"):
        build("[crop]\ncrop_height=9\ncrop_width=2\n", 1, 4, 4, "pjreddie")
    with pytest.raises(DarknetError, match=r":\d+"):
        build("[maxpool]\nsize=0\n", 1, 4, 4, "pjreddie")
    with pytest.raises(DarknetError, match="reorg"):
        build("[reorg3d]\nstride=2\nreverse=1\n", 4, 2, 2, "alexeyab")


@pytest.mark.parametrize("dialect,a,b", [("pjreddie", 0.99, 0.01), ("alexeyab", 0.95, 0.05)])
def test_connected_rolling_update_in_training(dialect, a, b):
    """[connected] with batch_normalize in training: pjreddie's forward_batchnorm_layer
    (.99/.01), AlexeyAB's own forward_connected_layer (.95/.05, not its conv's .9/.1)."""
    m = build("[connected]\noutput=3\nbatch_normalize=1\nactivation=linear\n", 2, 1, 2, dialect)
    layer = m.module_list[0]
    w = rand(3, 4)
    with torch.no_grad():
        layer.weights.copy_(torch.from_numpy(w))
        layer.rolling_mean.fill_(0.5)
        layer.rolling_variance.fill_(2.0)
    x = rand(5, 2, 1, 2)
    layer.train()
    with torch.no_grad():
        layer(torch.from_numpy(x))
    y = x.reshape(5, 4) @ w.T
    mean, var = y.mean(0), y.var(0, ddof=1)
    np.testing.assert_allclose(layer.rolling_mean.numpy(), F32(a) * F32(0.5) + F32(b) * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.rolling_variance.numpy(), F32(a) * F32(2.0) + F32(b) * var, rtol=1e-5)
