"""The compiled training tail (BN + bias + activation, ``darknet_py.train.conv_tail``).

Oracles:

* exact mode: the torch/numpy path it replaces (``DarknetBatchNorm``, ``DarknetBias``
  and the activation), which ``test_train_step`` holds to Python transcriptions of
  darknet's C loops and to darknet's trajectories.  Same order, same roundings: the
  two must agree to the bit, forward, rolling statistics and every gradient.
* autograd mode: float64 autograd of the same formula on the same float32 inputs.
  The tail rounds ``x - mean``, ``x_hat``, ``z`` and the activation's gradient to
  float32 (4 roundings of 2^-24 relative each) before its float64 sums, and its
  output once; with the O(1) data below (no cancellation beyond the mean's, which
  the |dx| scale already contains) that is below 10 * 4 * 2^-24 ~ 2.4e-6 of
  max|dx|; the bound used is 1e-5 of each gradient's max.
"""
from __future__ import annotations

import copy

import pytest
import torch

from darknet_py import Darknet
from darknet_py.train import darknet_grad, kernels
from darknet_py.train.conv_tail import ConvTail

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")

CFG = """[net]
batch={batch}
width={w}
height={h}
channels=3

[convolutional]
batch_normalize=1
filters={c}
size=3
stride=1
pad=1
activation={act}
"""

CASES = [  # dialect, activation, batch, channels, height, width
    ("pjreddie", "leaky", 2, 5, 18, 20),
    ("alexeyab", "leaky", 3, 16, 9, 7),
    ("pjreddie", "linear", 2, 1, 6, 6),
    ("alexeyab", "linear", 1, 3, 5, 11),
    ("pjreddie", "leaky", 4, 33, 4, 4),
]


def _model(dialect, act, batch, c, h, w, seed=0):
    m = Darknet(CFG.format(batch=batch, w=w, h=h, c=c, act=act), dialect=dialect)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        m.module_list[0].scales.add_(2.0)  # away from 0: O(1) normalised outputs
    return m.train()


def _run(model, mode, use_tail, x, gy):
    model = copy.deepcopy(model)
    backward = darknet_grad.install(model, mode)
    layer = model.module_list[0]
    if not use_tail:
        layer.__dict__["train_tail"] = None
    else:
        assert isinstance(layer.__dict__["train_tail"], ConvTail)
    y = model(x)[0]
    y.backward(gy)
    parts = {k: v.clone() for k, v in backward.bias_parts.items()}
    return {"y": y.detach(), "weights": layer.weights.grad, "scales": layer.scales.grad,
            "biases": layer.biases.grad, "rolling_mean": layer.rolling_mean,
            "rolling_variance": layer.rolling_variance, "parts": list(parts.values())}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_exact_tail_is_the_torch_path_to_the_bit(case):
    dialect, act, batch, c, h, w = case
    model = _model(*case)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, h, w, generator=g)
    gy = torch.randn(batch, c, h, w, generator=g)
    tail = _run(model, "exact", True, x, gy)
    ref = _run(model, "exact", False, x, gy)
    for k in ("y", "weights", "scales", "biases", "rolling_mean", "rolling_variance"):
        assert torch.equal(tail[k], ref[k]), k
    assert len(tail["parts"]) == len(ref["parts"]) == 1
    assert torch.equal(tail["parts"][0], ref["parts"][0])   # per-image bias sums


def _reference_dx(z, scales, biases, gy, dialect, act):
    """float64 autograd of act((z - mean)/std(var_unbiased) * scales + biases)."""
    z = z.double().requires_grad_(True)
    s, b = scales.double().requires_grad_(True), biases.double().requires_grad_(True)
    dims = (0, 2, 3)
    mean = z.mean(dims, keepdim=True)
    var = z.var(dims, unbiased=True, keepdim=True)
    std = torch.sqrt(var) + 1e-6 if dialect == "pjreddie" else torch.sqrt(var + 1e-5)
    y = (z - mean) / std * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    if act == "leaky":
        y = torch.where(y > 0, y, y * 0.1)
    y.backward(gy.double())
    return z.grad, s.grad, b.grad


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_autograd_tail_is_the_gradient_of_the_forward(case):
    dialect, act, batch, c, h, w = case
    g = torch.Generator().manual_seed(2)
    z = torch.randn(batch, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    gy = torch.randn(batch, c, h, w, generator=g)
    scales, biases = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    layer = _model(*case).module_list[0]
    with torch.no_grad():
        layer.scales.copy_(scales)
        layer.biases.copy_(biases)
    tail = ConvTail("autograd", dialect, act, {})
    zz = z.clone().requires_grad_(True)
    y = tail(layer, zz)
    assert y is not None and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(gy)
    ref = _reference_dx(z, scales, biases, gy, dialect, act)
    for got, want, name in zip((zz.grad, layer.scales.grad, layer.biases.grad), ref,
                               ("x", "scales", "biases")):
        bound = 1e-5 * float(want.abs().max())
        assert float((got.double() - want).abs().max()) <= bound, name


def test_tail_steps_aside_where_it_does_not_apply():
    """NCHW, float64 and a single value per channel run the layer's own steps (None)."""
    layer = _model("pjreddie", "leaky", 2, 4, 6, 6).module_list[0]
    tail = ConvTail("exact", "pjreddie", "leaky", {})
    assert tail(layer, torch.randn(2, 4, 6, 6)) is None                          # NCHW
    cl = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    assert tail(layer, cl.double()) is None                                      # float64
    assert tail(layer, torch.randn(1, 4, 1, 1)) is None                          # N*H*W = 1
    assert tail(layer, cl) is not None


def test_other_activations_keep_the_torch_steps():
    m = Darknet(CFG.format(batch=2, w=8, h=8, c=4, act="mish"), dialect="alexeyab")
    assert not ConvTail.supports(m.module_list[0])
    darknet_grad.install(m, "exact")
    assert m.module_list[0].__dict__["train_tail"] is None


def test_without_numba_no_tail_is_installed(monkeypatch):
    monkeypatch.setattr(kernels, "numba", None)
    m = _model("pjreddie", "leaky", 2, 4, 6, 6)
    darknet_grad.install(m, "exact")
    assert m.module_list[0].__dict__["train_tail"] is None
    m(torch.randn(2, 3, 6, 6))[0].sum().backward()        # the torch steps train it
    assert m.module_list[0].weights.grad is not None
