"""[crnn] (both darknets), [conv_lstm] and [history] (AlexeyAB) against float32
numpy transcriptions of darknet's CPU forwards (forward_crnn_layer,
forward_conv_lstm_layer, forward_history_layer, with forward_convolutional_layer
as im2col + gemm + batch norm + activation), including the state carried from
call to call, darknet's training-mode reset of [crnn], the weights file order
(load_weights_upto / save_weights_upto) and the cfg errors.
"""
from __future__ import annotations

import itertools
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from darknet_py import Darknet, parse_cfg
from darknet_py.errors import CfgError, InputError, UnsupportedLayerError
from darknet_py.layers.conv_recurrent import CRNN, ConvLSTM, History, constrain, fix_nan_and_inf
from darknet_py.weights import layout

from tests.conftest import CONFORMANCE

F32 = np.float32
ZOO = CONFORMANCE / "zoo" / "alexeyab"
H025 = struct.pack("<iiiQ", 0, 2, 5, 7)


# ------------------------------------------------------------------ building and comparing

def build(body: str, c: int, h: int, w: int, dialect: str, steps: int, batch: int | None = None
          ) -> Darknet:
    text = (f"[net]\nbatch={batch or 2 * steps}\ntime_steps={steps}\nwidth={w}\nheight={h}\n"
            f"channels={c}\n\n{body}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(parse_cfg(text, dialect=dialect)).eval()


def close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    """Same non-finite values; finite values within ``rtol`` of the largest |ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    bad = ~np.isfinite(ref)
    np.testing.assert_array_equal(~np.isfinite(ours), bad)
    np.testing.assert_array_equal(ours[bad], ref[bad])
    good = ref[~bad]
    scale = max(1.0, float(np.abs(good).max()) if good.size else 1.0)
    np.testing.assert_allclose(ours[~bad], good, rtol=0, atol=rtol * scale)


def forward(layer, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return layer(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(F32)


def randomize(conv, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random parameters for one sub-convolution; returns numpy copies (the oracle's)."""
    p = {"weights": rand(rng, *conv.weights.shape, scale=0.5),
         "biases": rand(rng, conv.n, scale=0.2)}
    if conv.batch_normalize:
        p["scales"] = rng.uniform(0.5, 1.5, conv.n).astype(F32)
        p["rolling_mean"] = rand(rng, conv.n, scale=0.3)
        p["rolling_variance"] = rng.uniform(0.5, 1.5, conv.n).astype(F32)
    with torch.no_grad():
        for name, value in p.items():
            getattr(conv, name).copy_(torch.from_numpy(value))
    return {k: v.copy() for k, v in p.items()}


# ------------------------------------------------------------------ oracle: one convolution

def im2col_gemm(x: np.ndarray, wts: np.ndarray, size: int, stride: int, pad: int, dil: int,
                groups: int) -> np.ndarray:
    """im2col_cpu_ext (padding pad*dilation, output size computed undilated) + gemm, per group."""
    b_, c_, h, w = x.shape
    n = wts.shape[0]
    oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
    p = pad * dil
    cg, ng = c_ // groups, n // groups
    out = np.zeros((b_, n, oh * ow), F32)
    for b, g in itertools.product(range(b_), range(groups)):
        col = np.zeros((cg * size * size, oh * ow), F32)
        for cc, ky, kx in itertools.product(range(cg), range(size), range(size)):
            row = (cc * size + ky) * size + kx
            for i, j in itertools.product(range(oh), range(ow)):
                yy, xx = i * stride - p + ky * dil, j * stride - p + kx * dil
                if 0 <= yy < h and 0 <= xx < w:
                    col[row, i * ow + j] = x[b, g * cg + cc, yy, xx]
        a = wts[g * ng:(g + 1) * ng].reshape(ng, -1)
        out[b, g * ng:(g + 1) * ng] = a @ col
    return out.reshape(b_, n, oh, ow)


def act_ref(y: np.ndarray, name: str, dialect: str) -> np.ndarray:
    if name == "linear":
        return y
    if name == "leaky":
        if dialect == "pjreddie":   # .1*x in double, rounded
            return np.where(y > 0, y, (y.astype(np.float64) * 0.1).astype(F32))
        return np.where(y > 0, y, F32(0.1) * y)
    if name == "logistic":
        if dialect == "pjreddie":
            return (1.0 / (1.0 + np.exp(-y.astype(np.float64)))).astype(F32)
        return logistic_ab(y)
    raise ValueError(name)


def logistic_ab(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def tanh_ab(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (F32(2) / (F32(1) + np.exp(F32(-2) * x)) - F32(1)).astype(F32)


def normalize(y, mean, var, dialect):
    shape = (1, -1, 1, 1)
    if dialect == "pjreddie":
        return (y - mean.reshape(shape)) / (np.sqrt(var).reshape(shape) + F32(0.000001))
    return (y - mean.reshape(shape)) / np.sqrt(var + F32(0.00001)).reshape(shape)


def conv_ref(x, p, geo, act, dialect, train):
    """forward_convolutional_layer on one step's batch (updates p's rolling stats in training)."""
    size, stride, pad, dil, groups = geo
    with np.errstate(invalid="ignore", over="ignore"):
        y = im2col_gemm(x, p["weights"], size, stride, pad, dil, groups)
        if "scales" in p:
            if train:
                count = y.shape[0] * y.shape[2] * y.shape[3]
                mean = y.sum(axis=(0, 2, 3), dtype=F32) * F32(1.0 / count)
                var = ((y - mean.reshape(1, -1, 1, 1)) ** 2).sum(axis=(0, 2, 3), dtype=F32) \
                    * F32(1.0 / (count - 1))
                a, b = (F32(0.99), F32(0.01)) if dialect == "pjreddie" else (F32(0.9), F32(0.1))
                p["rolling_mean"] = p["rolling_mean"] * a + b * mean
                p["rolling_variance"] = p["rolling_variance"] * a + b * var
                y = normalize(y, mean, var, dialect)
            else:
                y = normalize(y, p["rolling_mean"], p["rolling_variance"], dialect)
            y = y * p["scales"].reshape(1, -1, 1, 1)
        y = y + p["biases"].reshape(1, -1, 1, 1)
        return act_ref(y.astype(F32), act, dialect)


# ------------------------------------------------------------------ oracle: [crnn]

class CrnnRef:
    """forward_crnn_layer: l.state is slot 0 of a buffer; training zeroes it and walks on."""

    def __init__(self, params, geo, act, dialect, shortcut, steps, hidden, map_shape):
        self.p, self.geo, self.act, self.dialect = params, geo, act, dialect
        self.shortcut, self.steps, self.hidden, self.map_shape = shortcut, steps, hidden, map_shape
        self.slot0 = None

    def __call__(self, x: np.ndarray, train: bool) -> np.ndarray:
        n = x.shape[0]
        batch = n // self.steps
        inp = x.reshape(n, *self.map_shape)   # pjreddie: [c][h][w] memory read as [c][w][h]
        _, h, w = self.map_shape
        shape = (batch, self.hidden, h, w)
        if self.slot0 is None or self.slot0.shape != shape:
            self.slot0 = np.zeros(shape, F32)
        if train:
            self.slot0[...] = 0
        state = self.slot0
        outs = []
        conv = lambda z, part: conv_ref(z, self.p[part], self.geo, self.act, self.dialect, train)
        for i in range(self.steps):
            x_i = inp[i * batch:(i + 1) * batch]
            from_input = conv(x_i, "input_layer")
            from_self = conv(state, "self_layer")
            new = state.copy() if self.shortcut else np.zeros(shape, F32)   # copy_cpu / fill_cpu
            new = new + from_input                                          # axpy_cpu
            new = new + from_self                                           # axpy_cpu
            if train:
                state = new                      # l.state += hidden*batch: slot 0 stays 0
            else:
                self.slot0[...] = new
                state = self.slot0
            outs.append(conv(state, "output_layer"))
        return np.concatenate(outs)


def crnn_body(dialect: str, act: str, bn: int, shortcut: int, extra: str = "", output: int = 5
              ) -> str:
    if dialect == "pjreddie":
        sizes = f"hidden_filters=4\noutput_filters={output}"
    else:
        sizes = f"hidden=4\noutput={output}"
    return (f"[crnn]\nbatch_normalize={bn}\n{sizes}\nactivation={act}\nshortcut={shortcut}\n"
            f"{extra}")


CRNN_CASES = [
    # dialect, extra options, geometry (size, stride, pad, dilation, groups), channels, output
    ("pjreddie", "", (3, 1, 1, 1, 1), 3, 5),
    ("alexeyab", "size=3\npad=1", (3, 1, 1, 1, 1), 3, 5),
    ("alexeyab", "size=1\npad=0", (1, 1, 0, 1, 1), 3, 5),
    ("alexeyab", "size=3\npad=1\ndilation=2\ngroups=2", (3, 1, 1, 2, 2), 4, 6),
]


@pytest.mark.parametrize("dialect,extra,geo,c,output", CRNN_CASES)
@pytest.mark.parametrize("act,bn,shortcut", [("leaky", 1, 0), ("logistic", 0, 1), ("leaky", 1, 1)])
def test_crnn_matches_darknet_across_calls_and_train_reset(dialect, extra, geo, c, output, act, bn,
                                                           shortcut):
    steps, h, w = 3, 5, 4                                 # non-square: pjreddie's h/w swap shows
    m = build(crnn_body(dialect, act, bn, shortcut, extra, output), c, h, w, dialect, steps)
    layer = m.module_list[0]
    assert isinstance(layer, CRNN)
    map_shape = (c, w, h) if dialect == "pjreddie" else (c, h, w)
    assert layer.out_shape == (output, *map_shape[1:])
    rng = np.random.default_rng(7)
    params = {part: randomize(getattr(layer, part), rng)
              for part in ("input_layer", "self_layer", "output_layer")}
    ref = CrnnRef(params, geo, act, dialect, shortcut, steps, layer.hidden, map_shape)
    n = 2 * steps

    # eval: the state carries from one call to the next
    for _ in range(2):
        x = rand(rng, n, c, h, w)
        close(forward(layer, x), ref(x, train=False))
    # training: starts from zeros, updates the rolling stats once per step
    layer.train()
    x = rand(rng, n, c, h, w)
    close(forward(layer, x), ref(x, train=True))
    if bn:
        for part in params:
            close(getattr(layer, part).rolling_mean.numpy(), params[part]["rolling_mean"], 1e-6)
            close(getattr(layer, part).rolling_variance.numpy(), params[part]["rolling_variance"],
                  1e-6)
    # back in eval: darknet's slot 0 was zeroed by the training call
    layer.eval()
    x = rand(rng, n, c, h, w)
    close(forward(layer, x), ref(x, train=False))


def test_crnn_state_reset_and_batch_change():
    steps, c, h, w = 2, 3, 4, 4
    m = build(crnn_body("alexeyab", "leaky", 0, 1, "size=3\npad=1"), c, h, w, "alexeyab", steps)
    layer = m.module_list[0]
    rng = np.random.default_rng(3)
    params = {part: randomize(getattr(layer, part), rng)
              for part in ("input_layer", "self_layer", "output_layer")}
    x = rand(rng, 4, c, h, w)
    first = forward(layer, x)
    assert not np.allclose(forward(layer, x), first)      # the carried state changes the output
    layer.reset_state()
    close(forward(layer, x), first)
    # another batch size: darknet would rebuild the layer, so the state starts from zeros
    x2 = x[:2]
    ref = CrnnRef(params, (3, 1, 1, 1, 1), "leaky", "alexeyab", 1, steps, 4, (c, h, w))
    close(forward(layer, x2), ref(x2, train=False))
    assert "state" not in m.state_dict()                   # not a parameter: not in state_dict


def test_crnn_batch_must_be_a_multiple_of_time_steps():
    m = build(crnn_body("alexeyab", "leaky", 0, 0, "pad=1"), 3, 4, 4, "alexeyab", 3)
    with pytest.raises(InputError, match=r"batch \(4\) must be a multiple of 3 \(darknet reads a batch "
                                         r"as \[net\] time_steps=3 steps"):
        m(torch.zeros(4, 3, 4, 4))


def test_crnn_trains_by_autograd():
    m = build(crnn_body("alexeyab", "leaky", 1, 1, "pad=1"), 3, 4, 4, "alexeyab", 2).train()
    y = m(torch.randn(4, 3, 4, 4))[0]
    y.square().sum().backward()
    layer = m.module_list[0]
    for part in ("input_layer", "self_layer", "output_layer"):
        assert getattr(layer, part).weights.grad.abs().sum() > 0


# ------------------------------------------------------------------ oracle: [conv_lstm]

def fix_nan_and_inf_ref(v: np.ndarray) -> int:
    """fix_nan_and_inf_cpu in place on a flat view; returns how many values it replaced."""
    flat = v.reshape(-1)
    fixed = 0
    with np.errstate(divide="ignore"):
        for i in range(flat.size):
            if np.isnan(flat[i]) or np.isinf(flat[i]):
                flat[i] = F32(1.0) / F32(i)
                fixed += 1
    return fixed


def constrain_ref(v: np.ndarray, alpha: float) -> np.ndarray:
    out = v.copy().reshape(-1)
    a = F32(alpha)
    for i in range(out.size):
        out[i] = np.fmin(a, np.fmax(-a, out[i]))        # C fminf/fmaxf: a NaN argument is ignored
    return out.reshape(v.shape)


class ConvLstmRef:
    """forward_conv_lstm_layer (CPU): h_cpu and c_cpu persist in training and eval."""

    def __init__(self, params, geo, act, peephole, state_constrain, steps, out_shape):
        self.p, self.geo, self.act = params, geo, act
        self.peephole, self.constrain, self.steps = peephole, state_constrain, steps
        self.out_shape = out_shape
        self.h = self.c = None
        self.fixed = 0

    def __call__(self, x: np.ndarray, train: bool) -> np.ndarray:
        n = x.shape[0]
        batch = n // self.steps
        shape = (batch, *self.out_shape)
        if self.h is None or self.h.shape != shape:
            self.h, self.c = np.zeros(shape, F32), np.zeros(shape, F32)
        conv = lambda z, gate: conv_ref(z, self.p[gate], self.geo, self.act, "alexeyab", train)
        outs = []
        with np.errstate(invalid="ignore", over="ignore"):
            for i in range(self.steps):
                x_i = x[i * batch:(i + 1) * batch]
                if self.peephole:
                    vf, vi = conv(self.c, "vf"), conv(self.c, "vi")
                wf, wi, wg, wo = (conv(self.h, g) for g in ("wf", "wi", "wg", "wo"))
                uf, ui, ug, uo = (conv(x_i, g) for g in ("uf", "ui", "ug", "uo"))
                f = wf + uf
                if self.peephole:
                    f = f + vf
                ii = wi + ui
                if self.peephole:
                    ii = ii + vi
                g = wg + ug
                f, ii, g = logistic_ab(f), logistic_ab(ii), tanh_ab(g)
                temp = ii * g
                c = self.c * f
                c = c + temp
                if self.peephole:
                    vo = conv(c, "vo")
                o = wo + uo
                if self.peephole:
                    o = o + vo
                o = logistic_ab(o)
                h = tanh_ab(c)
                h = h * o
                if self.constrain:
                    c = constrain_ref(c, self.constrain)
                self.fixed += fix_nan_and_inf_ref(c) + fix_nan_and_inf_ref(h)
                self.h, self.c = h, c
                outs.append(h.copy())
        return np.concatenate(outs)


def lstm_body(peephole: int, bn: int, act: str, state_constrain: int | None, extra: str = ""
              ) -> str:
    sc = "" if state_constrain is None else f"state_constrain={state_constrain}\n"
    return (f"[conv_lstm]\nbatch_normalize={bn}\nsize=3\npad=1\noutput=4\npeephole={peephole}\n"
            f"activation={act}\n{sc}{extra}")


@pytest.mark.parametrize("peephole,bn,act,state_constrain",
                         [(0, 0, "linear", None), (1, 1, "leaky", None), (1, 0, "linear", 1),
                          (0, 1, "leaky", 1)])
def test_conv_lstm_matches_darknet_across_calls(peephole, bn, act, state_constrain):
    steps, c, h, w = 3, 3, 4, 5
    m = build(lstm_body(peephole, bn, act, state_constrain), c, h, w, "alexeyab", steps)
    layer = m.module_list[0]
    assert isinstance(layer, ConvLSTM)
    assert layer.state_constrain == (steps * 32 if state_constrain is None else state_constrain)
    rng = np.random.default_rng(11)
    params = {g: randomize(getattr(layer, g), rng) for g in layer.gate_names}
    ref = ConvLstmRef(params, (3, 1, 1, 1, 1), act, peephole, layer.state_constrain, steps,
                      layer.out_shape)
    n = 2 * steps
    for _ in range(2):                                     # eval: h and c carry over
        x = rand(rng, n, c, h, w, scale=2.0)
        close(forward(layer, x), ref(x, train=False))
    layer.train()                                          # training: no reset either
    x = rand(rng, n, c, h, w, scale=2.0)
    close(forward(layer, x), ref(x, train=True))
    if bn:
        for g in layer.gate_names:
            close(getattr(layer, g).rolling_mean.numpy(), params[g]["rolling_mean"], 1e-6)
    layer.eval()
    x = rand(rng, n, c, h, w, scale=2.0)
    close(forward(layer, x), ref(x, train=False))
    layer.reset_state()                                    # free_state_conv_lstm
    ref.h = ref.c = None
    close(forward(layer, x), ref(x, train=False))


def test_conv_lstm_nan_and_inf_are_replaced_like_darknet():
    steps, c, h, w = 2, 2, 3, 3
    m = build(lstm_body(1, 0, "linear", 0), c, h, w, "alexeyab", steps)
    layer = m.module_list[0]
    assert layer.state_constrain == 0
    rng = np.random.default_rng(5)
    params = {g: randomize(getattr(layer, g), rng) for g in layer.gate_names}
    ref = ConvLstmRef(params, (3, 1, 1, 1, 1), "linear", 1, 0, steps, layer.out_shape)
    x = rand(rng, 2 * steps, c, h, w)
    x[0, 0, 1, 1], x[0, 1, 1, 1] = np.inf, -np.inf          # inf - inf in the convolutions: NaN
    x[3, 0, 0, 2] = np.nan
    close(forward(layer, x), ref(x, train=False))
    assert ref.fixed > 0
    x = rand(rng, 2 * steps, c, h, w)                        # the fixed state carries over
    close(forward(layer, x), ref(x, train=False))


def test_fix_nan_and_inf_and_constrain_helpers():
    v = np.array([[np.nan, 1.5, np.inf], [-np.inf, -7.0, np.nan]], F32)
    ours = fix_nan_and_inf(torch.from_numpy(v.copy())).numpy()
    ref = v.copy()
    fix_nan_and_inf_ref(ref)
    np.testing.assert_array_equal(ours, ref)
    assert ours[0, 0] == np.inf and ours[1, 0] == F32(1) / F32(3)
    for alpha in (2.0, -2.0, 0.5):
        np.testing.assert_array_equal(constrain(torch.from_numpy(v), alpha).numpy(),
                                      constrain_ref(v, alpha))


def test_conv_lstm_trains_by_autograd():
    m = build(lstm_body(1, 1, "leaky", None), 3, 4, 4, "alexeyab", 2).train()
    m(torch.randn(4, 3, 4, 4))[0].sum().backward()
    layer = m.module_list[0]
    assert all(getattr(layer, g).weights.grad is not None for g in layer.gate_names)


# ------------------------------------------------------------------ oracle: [history]

class HistoryRef:
    """forward_history_layer on flat buffers (l.batch is the whole batch here)."""

    def __init__(self, steps: int, size: int, inputs: int):
        self.steps, self.size, self.inputs = steps, size, inputs
        self.prev = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        inputs, outputs = self.inputs, self.inputs * self.size
        src = x.reshape(-1)
        out = np.zeros(n * outputs, F32)
        if self.steps == 1:
            out[:n * inputs] = src[:n * inputs]
            return out
        if self.prev is None or self.prev.size != n * outputs:
            self.prev = np.zeros(n * outputs, F32)           # prev_state_cpu (calloc)
        batch = n // self.steps
        prev_output = self.prev
        for i in range(self.steps):
            shift = inputs * (self.size - 1)
            for b in range(batch):
                i0, o0 = b * inputs + i * inputs * batch, b * outputs + i * outputs * batch
                out[o0 + inputs:o0 + inputs + shift] = prev_output[b * outputs:b * outputs + shift]
                out[o0:o0 + inputs] = src[i0:i0 + inputs]
            prev_output = out[i * outputs * batch:]
        start = (self.steps - 1) * outputs * batch
        self.prev[:batch * outputs] = out[start:start + batch * outputs]
        return out


@pytest.mark.parametrize("steps,size", [(3, 3), (2, 4), (3, 1), (1, 3)])
def test_history_matches_darknet_across_calls(steps, size):
    c, h, w = 2, 3, 2
    m = build(f"[history]\nhistory_size={size}\n", c, h, w, "alexeyab", steps)
    layer = m.module_list[0]
    assert isinstance(layer, History) and layer.out_shape == (c * size, h, w)
    ref = HistoryRef(steps, size, c * h * w)
    rng = np.random.default_rng(1)
    for mode in ("eval", "eval", "train"):                 # no reset in training either
        layer.train(mode == "train")
        x = rand(rng, 2 * steps, c, h, w)
        ours = forward(layer, x)
        assert ours.shape == (2 * steps, c * size, h, w)
        np.testing.assert_array_equal(ours.reshape(-1), ref(x))
    layer.reset_state()
    ref.prev = None
    x = rand(rng, 2 * steps, c, h, w)
    np.testing.assert_array_equal(forward(layer, x).reshape(-1), ref(x))


def test_history_newest_input_first():
    m = build("[history]\nhistory_size=3\n", 1, 1, 1, "alexeyab", 4, batch=4)
    y = m.module_list[0](torch.arange(1.0, 5.0).view(4, 1, 1, 1)).view(4, 3)
    assert y.tolist() == [[1, 0, 0], [2, 1, 0], [3, 2, 1], [4, 3, 2]]


# ------------------------------------------------------------------ weights

WEIGHT_NETS = {
    "crnn_pj": ("pjreddie", crnn_body("pjreddie", "leaky", 1, 0)),
    "crnn_pj_nobn": ("pjreddie", crnn_body("pjreddie", "leaky", 0, 0)),
    "crnn_ab": ("alexeyab", crnn_body("alexeyab", "leaky", 1, 1, "size=1")),
    "conv_lstm": ("alexeyab", lstm_body(0, 1, "linear", None)),
    "conv_lstm_peephole": ("alexeyab", lstm_body(1, 0, "linear", None)),
    "all": ("alexeyab", crnn_body("alexeyab", "leaky", 1, 0, "pad=1") + "\n"
            + "[history]\nhistory_size=2\n\n" + lstm_body(1, 1, "leaky", None)),
}


def _randomize_all(m: Darknet, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in itertools.chain(m.parameters(), m.buffers()):
            t.copy_(torch.rand(t.shape, generator=g) * 2 - 1)


@pytest.mark.parametrize("name", sorted(WEIGHT_NETS))
def test_weights_round_trip_byte_identical(name, tmp_path):
    dialect, body = WEIGHT_NETS[name]
    m = build(body, 3, 4, 4, dialect, 2)
    _randomize_all(m, 1)
    m.save_weights(tmp_path / "a.weights")
    other = build(body, 3, 4, 4, dialect, 2)
    other.load_weights(tmp_path / "a.weights", allow_partial=False)
    other.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    theirs = other.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in m.state_dict().items())


def _write(path: Path, n: int) -> np.ndarray:
    vals = np.arange(n, dtype=F32)
    path.write_bytes(H025 + vals.astype("<f4").tobytes())
    return vals


def _conv_floats(n: int, cin: int, size: int, bn: bool) -> list[tuple[str, int]]:
    """load_convolutional_weights: biases, [scales, rolling_mean, rolling_variance], weights."""
    bn_part = [("scales", n), ("rolling_mean", n), ("rolling_variance", n)] if bn else []
    return [("biases", n), *bn_part, ("weights", n * cin * size * size)]


def _check_file_order(layer, parts: list[tuple[str, int, int, bool]], vals: np.ndarray, start: int
                      ) -> int:
    """Every sub-tensor holds the next run of file floats; returns the next float."""
    pos = start
    for part, n, cin, bn in parts:
        conv = getattr(layer, part)
        for name, count in _conv_floats(n, cin, conv.size, bn):
            got = getattr(conv, name).detach().numpy().reshape(-1)
            np.testing.assert_array_equal(got, vals[pos:pos + count], err_msg=f"{part}.{name}")
            pos += count
    return pos


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_crnn_values_land_where_darknet_reads_them(dialect, tmp_path):
    body = crnn_body(dialect, "leaky", 1, 0, "size=3\npad=1" if dialect == "alexeyab" else "")
    m = build(body, 3, 4, 4, dialect, 2)
    parts = [("input_layer", 4, 3, True), ("self_layer", 4, 4, True), ("output_layer", 5, 4, True)]
    total = sum(c for p in parts for _, c in _conv_floats(p[1], p[2], 3, p[3]))
    assert layout(m, 20)[0].floats == total
    assert [t for t, _ in layout(m, 20)[0].tensors][:6] == [
        "input_layer.biases", "input_layer.scales", "input_layer.rolling_mean",
        "input_layer.rolling_variance", "input_layer.weights", "self_layer.biases"]
    vals = _write(tmp_path / "h.weights", total)
    m.load_weights(tmp_path / "h.weights", allow_partial=False)
    assert _check_file_order(m.module_list[0], parts, vals, 0) == total
    assert m.module_list[0].input_layer.weights[1, 2, 0, 0].item() == 4 * 4 + 1 * 27 + 2 * 9


@pytest.mark.parametrize("peephole", [0, 1])
def test_conv_lstm_values_land_where_darknet_reads_them(peephole, tmp_path):
    """load_weights_upto: vf, vi, vo (peephole), wf, wi, wg, wo, uf, ui, ug, uo."""
    m = build(lstm_body(peephole, 1, "linear", None) + "\n[history]\nhistory_size=2\n\n"
              + lstm_body(peephole, 0, "linear", None), 3, 4, 4, "alexeyab", 2)
    order = (["vf", "vi", "vo"] if peephole else []) + ["wf", "wi", "wg", "wo", "uf", "ui", "ug",
                                                        "uo"]
    first = [(g, 4, 3 if g.startswith("u") else 4, True) for g in order]
    second = [(g, 4, 8 if g.startswith("u") else 4, False) for g in order]   # after history: 8 ch
    floats = [sum(c for p in parts for _, c in _conv_floats(p[1], p[2], 3, p[3]))
              for parts in (first, second)]
    assert [r.floats for r in layout(m, 20)] == [floats[0], 0, floats[1]]
    vals = _write(tmp_path / "h.weights", sum(floats))
    m.load_weights(tmp_path / "h.weights", allow_partial=False)
    pos = _check_file_order(m.module_list[0], first, vals, 0)
    assert _check_file_order(m.module_list[2], second, vals, pos) == sum(floats)


# ------------------------------------------------------------------ zoo cfgs

def _zoo(name: str):
    path = ZOO / name
    if not path.is_file():
        pytest.skip(f"zoo cfg {path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return path, parse_cfg(path)


def _round_trip(m: Darknet, tmp_path: Path) -> None:
    m.save_weights(tmp_path / "a.weights")
    m.load_weights(tmp_path / "a.weights", allow_partial=False)
    m.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    assert (tmp_path / "a.weights").stat().st_size == 20 + 4 * sum(r.floats for r in layout(m, 20))


def test_zoo_yolov3_tiny_occlusion_track(tmp_path):
    path, cfg = _zoo("yolov3-tiny_occlusion_track.cfg")
    m = Darknet(path, 64, 64, dialect="alexeyab").eval()
    crnns = [i for i, layer in enumerate(m.module_list) if layer.type == "crnn"]
    assert crnns == [13, 23] and m.shapes[13] == (512, 2, 2) and m.shapes[23] == (256, 4, 4)
    steps = cfg.net["time_steps"]
    assert steps == 20
    x = torch.rand(steps, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = m(x)
    assert [tuple(o.shape) for o in outs] == [(steps, 18, 2, 2), (steps, 18, 4, 4)]
    assert all(torch.isfinite(o).all() for o in outs)
    _round_trip(m, tmp_path)


def test_zoo_crnn_train(tmp_path):
    path, cfg = _zoo("crnn.train.cfg")
    m = Darknet(path, dialect="alexeyab")                    # inputs=256: a 256x1x1 input
    assert m.shapes == [(256, 1, 1), (1024, 1, 1), (1024, 1, 1), (1024, 1, 1), (256, 1, 1),
                        (256, 1, 1), (256, 1, 1)]
    assert all(m.module_list[i].steps == 576 for i in (1, 2, 3))
    _round_trip(m, tmp_path)
    # its time_steps=576 would need a batch of 576 samples; run it as 2 steps instead
    cfg.net.options["time_steps"] = 2
    small = Darknet(cfg).eval()
    small.load_weights(tmp_path / "a.weights", allow_partial=False)
    with torch.no_grad():
        out = small(torch.rand(4, 256, 1, 1, generator=torch.Generator().manual_seed(0)))[0]
    assert out.shape == (4, 256, 1, 1) and torch.isfinite(out).all()


# ------------------------------------------------------------------ cfg errors

def _net(steps: int = 2) -> str:
    return f"[net]\nbatch=4\ntime_steps={steps}\nwidth=4\nheight=4\nchannels=3\n\n"


BAD = [
    ("alexeyab", "[crnn]\nhidden=0\noutput=2\npad=1\n", CfgError,
     r"\[crnn\]: hidden=0: expected an integer >= 1", 9),
    ("alexeyab", "[crnn]\nhidden=2\noutput=2\nsize=3\npad=0\n", CfgError,
     r"turn the 4x4 map into 2x2; expected a convolution that keeps the map size", 11),
    ("alexeyab", "[crnn]\nhidden=2\noutput=2\nstride=2\npad=1\n", CfgError,
     r"stride=2.*expected a convolution that keeps the map size", 11),
    ("alexeyab", "[crnn]\nhidden=4\noutput=4\npad=1\ngroups=2\n", CfgError,
     r"groups=2: expected a divisor of input channels \(3\), hidden \(4\), output \(4\)", 12),
    ("alexeyab", "[crnn]\nhidden=2\noutput=2\npad=1\nsize=0\n", CfgError,
     r"size=0: expected an integer >= 1", 12),
    ("pjreddie", "[crnn]\nhidden_filters=2\noutput_filters=0\n", CfgError,
     r"output_filters=0: expected an integer >= 1", 10),
    ("alexeyab", "[conv_lstm]\noutput=0\npad=1\n", CfgError,
     r"\[conv_lstm\]: output=0: expected an integer >= 1", 9),
    ("alexeyab", "[conv_lstm]\noutput=2\npad=1\nbottleneck=1\n", UnsupportedLayerError,
     r"bottleneck=1 exists only in darknet's GPU forward", 11),
    ("alexeyab", "[conv_lstm]\noutput=2\nsize=5\npad=0\npadding=1\n", CfgError,
     r"expected a convolution that keeps the map size", 10),
    ("alexeyab", "[history]\nhistory_size=0\n", CfgError,
     r"\[history\]: history_size=0: expected an integer >= 1", 9),
    ("alexeyab", "[crnn]\nhidden=2\noutput=2\npad=1\nxnor=1\n", UnsupportedLayerError,
     r"xnor=1: AlexeyAB's CPU forward binarizes", 12),
    ("alexeyab", "[conv_lstm]\noutput=2\npad=1\nxnor=1\n", UnsupportedLayerError, r"xnor=1", 11),
]


@pytest.mark.parametrize("dialect,body,cls,pattern,line", BAD)
def test_bad_options_are_one_clear_error(dialect, body, cls, pattern, line, tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text(_net() + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = parse_cfg(path, dialect=dialect)
    with pytest.raises(cls, match=pattern) as info:
        Darknet(cfg)
    assert info.value.file == str(path) and info.value.line == line
    assert f"{path}:{line}:" in str(info.value)


@pytest.mark.parametrize("section", ["[crnn]\npad=1\n", "[conv_lstm]\npad=1\n", "[history]\n"])
def test_time_steps_below_one_is_one_for_alexeyab(section, tmp_path):
    """parse_network_cfg_custom: ``if (net.time_steps < 1) net.time_steps = 1;``"""
    path = tmp_path / "t.cfg"
    path.write_text(_net(0) + section)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = parse_cfg(path, dialect="alexeyab")
    assert Darknet(cfg).module_list[0].steps == 1
