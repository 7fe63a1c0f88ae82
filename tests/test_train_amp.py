"""``Trainer(..., amp=True)``: mixed precision for autograd mode (CUDA).

No GPU here: the refusals are checked as they are, and the loss-scale plumbing runs
with CPU bfloat16 autocast put in the table of AMP dtypes for the test.  Scaling a
loss by a power of two and dividing the gradients by it again is exact in binary
floating point (no overflow or underflow in between), so two scales must give the
same update buffers to the bit; a scale that overflows must drop the pass.
"""
from __future__ import annotations

import pytest
import torch

from darknet_py import Darknet, Trainer
from darknet_py.errors import TrainingError
from darknet_py.train import amp as amp_mod
from darknet_py.train.amp import LossScale
from tests.test_train_distributed import CFG  # a 2-image, 32x32 [yolo] network



def _batch():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 32, 32, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 0, 0.3, 0.6, 0.2, 0.2]])
    return images, targets


def _trainer(**kw):
    torch.manual_seed(0)
    return Trainer(Darknet(CFG), **kw)


def test_amp_needs_autograd_mode_and_cuda():
    with pytest.raises(TrainingError, match="mode='autograd'"):
        _trainer(mode="exact", amp=True)
    with pytest.raises(TrainingError, match="runs on CUDA; the model is on cpu"):
        _trainer(mode="autograd", amp=True)


@pytest.fixture
def cpu_bf16(monkeypatch):
    monkeypatch.setitem(amp_mod.AMP_DTYPES, "cpu", torch.bfloat16)


def _buffers_after_pass(scale: float):
    t = _trainer(mode="autograd", amp=True)
    t.amp.scale = scale
    t.forward_backward(*_batch())
    return t, {k: v.clone() for k, v in t.updates.items()}


def test_power_of_two_loss_scales_give_the_same_gradients(cpu_bf16):
    _, a = _buffers_after_pass(2.0 ** 4)
    _, b = _buffers_after_pass(2.0 ** 16)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.isfinite(a[k]).all(), k
        assert torch.equal(a[k], b[k]), k


def test_an_overflow_drops_the_pass_and_halves_the_scale(cpu_bf16):
    t, buffers = _buffers_after_pass(2.0 ** 200)   # loss * scale overflows float32
    assert t.amp.skipped == 1 and t.amp.scale == 2.0 ** 199
    assert all(bool((v == 0).all()) for v in buffers.values())
    t.update()                                     # the update then is decay and momentum only


def test_loss_scale_grows_after_its_interval():
    s = LossScale(init=8.0, growth_interval=3)
    g = [torch.full((2,), 16.0)]
    for _ in range(3):
        assert s.unscale_(g)
    assert s.scale == 16.0 and float(g[0][0]) == 16.0 / 8 ** 3
    assert not s.unscale_([torch.tensor([float("inf")])])
    assert s.scale == 8.0 and s.good == 0
    s2 = LossScale()
    s2.load_state_dict(s.state_dict())
    assert s2.state_dict() == s.state_dict()
