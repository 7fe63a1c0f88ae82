"""The fast inference paths against the formulas they replace (and darknet).

The eval-mode conv (one BN affine + in-place activation), channels-last eval
forward, index-free max pooling, NHWC upsample, the fused oneDNN call with packed
weights and the reduced precisions each give what the plain formula path gives
(the autograd-recording forward, unchanged, which tests/test_conformance_forward.py
ties to darknet); caches follow weight changes.  Tolerances: the folding rules
documented in darknet_py/fuse.py (1e-5 of a layer's range, as test_detect's
fused checks); exact equality where the operation only moves or compares values.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darknet_py import Darknet, DarknetError
from darknet_py.detect import Detector
from darknet_py.fuse import FusedConvolutional, _cpu_has_bf16, check_precision, inference_model
from tests.conftest import manifest_or_empty

TINY = "pj_yolov3-tiny_narrow8"


def _case_model(conformance, manifest, name):
    case = manifest["cases"][name]
    model = Darknet(conformance / case["cfg"], dialect=case["implementation"].lower())
    model.load_weights(conformance / case["weights"])
    x = torch.from_numpy(np.load(conformance / case["arrays"])["input"])
    return model.eval(), x


def _formula(model, x):
    """The eval forward through the original formulas (a gradient being recorded
    selects them), NCHW."""
    model.channels_last = False
    try:
        with torch.enable_grad():
            return [o.detach() for o in model(x)]
    finally:
        model.channels_last = None


def _close(a, b, rtol=1e-5):
    scale = max(1.0, float(b.abs().max()))
    return float((a - b).abs().max()) <= rtol * scale


CASES = [n for n in (TINY, "pj_yolov2-tiny_narrow8", "ab_yolov4-tiny_narrow8")
         if n in manifest_or_empty().get("cases", {})]


@pytest.mark.parametrize("name", CASES)
def test_plain_eval_fast_path_equals_formula(conformance, manifest, name):
    """no_grad eval (channels-last, BN affine, in-place activations, slice max pool;
    yolov2-tiny's [region] and AlexeyAB's route groups take NCHW copies) = the formulas."""
    model, x = _case_model(conformance, manifest, name)
    ref = _formula(model, x)
    seen = []
    hook = model.module_list[0].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        got = model(x)
        assert model.module_list[0]._inference_path(x)
    hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)  # the fast path ran
    for a, b in zip(got, ref):
        assert a.shape == b.shape and _close(a, b)


def test_affine_follows_weight_changes(conformance, manifest):
    model, x = _case_model(conformance, manifest, TINY)
    with torch.no_grad():
        model(x)
        conv = model.module_list[0]
        conv.scales.mul_(2.0)          # in place, as an optimizer step or load_weights does
        conv.rolling_mean.add_(0.5)
        got = model(x)
    ref = _formula(model, x)
    for a, b in zip(got, ref):
        assert _close(a, b)
    # and back to the file's weights
    model.load_weights(conformance / manifest["cases"][TINY]["weights"])
    with torch.no_grad():
        again = model(x)
    for a, b in zip(again, _formula(model, x)):
        assert _close(a, b)


def test_fused_packed_weights_follow_changes(conformance, manifest):
    model, x = _case_model(conformance, manifest, TINY)
    fast = model.for_inference()
    layer = next(m for m in fast.module_list if isinstance(m, FusedConvolutional))
    with torch.inference_mode():
        before = fast(x)
    with torch.no_grad():
        layer.weight.mul_(0.5)
    with torch.inference_mode():
        after = fast(x)
        layer.weight.data.mul_(2.0)    # bypasses the version counter: repack() says so
        layer.repack()
        restored = fast(x)
        layer.use_onednn = False       # conv2d + activation: the unpacked weights
        plain = fast(x)
        layer.weight.mul_(0.5)
        halved = fast(x)
    assert not torch.equal(before[0], after[0])
    for a, b, c, d in zip(restored, plain, before, halved):
        assert _close(a, b) and _close(a, c)
    for a, b in zip(after, halved):
        assert _close(a, b)


@pytest.mark.parametrize("size,stride,hw", [(2, 2, 12), (2, 1, 13), (3, 1, 9), (3, 2, 11), (1, 1, 5)])
def test_slice_max_pool_equals_max_pool2d(size, stride, hw):
    """Index-free pooling (no gradient) = the max_pool2d path (gradient recorded): exact."""
    cfg = (f"[net]\nwidth={hw}\nheight={hw}\nchannels=4\n"
           f"[maxpool]\nsize={size}\nstride={stride}\n")
    model = Darknet(cfg).eval()
    g = torch.Generator().manual_seed(size * 10 + stride)
    x = torch.randn(2, 4, hw, hw, generator=g)
    ref = model(x.clone().requires_grad_(True))[0].detach()
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref)
        assert torch.equal(model(x.contiguous(memory_format=torch.channels_last))[0], ref)


def test_channels_last_upsample_is_exact():
    cfg = "[net]\nwidth=6\nheight=5\nchannels=3\n[upsample]\nstride=3\n"
    model = Darknet(cfg).eval()
    x = torch.randn(2, 3, 5, 6)
    ref = model.module_list[0](x)
    got = model.module_list[0](x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(got, ref) and got.is_contiguous(memory_format=torch.channels_last)


def test_fp16_on_cpu_is_refused(conformance, manifest):
    model, _ = _case_model(conformance, manifest, TINY)
    with pytest.raises(DarknetError, match="fp16 runs on CUDA devices only"):
        model.for_inference(precision="fp16", device="cpu")
    with pytest.raises(DarknetError, match="expected one of fp32, bf16, fp16"):
        check_precision("int4", "cpu")


def test_bf16_detections_agree_or_refused(conformance, manifest):
    """On a CPU with AVX512_BF16/AMX: bf16 detections on the real photos match fp32's
    (class equal, box within 2 px, prob within 0.02 at thresh 0.25, the issue's
    criterion); elsewhere a clear refusal."""
    real = manifest["real"]
    model = Darknet(conformance / real["cfg"])
    model.load_weights(conformance / real["weights"]["file"])
    if not _cpu_has_bf16():
        with pytest.raises(DarknetError, match="AVX512_BF16 or AMX"):
            Detector(model, precision="bf16")
        return
    photos = [str(conformance / "real_yolov3-tiny" / im["file"]) for im in real["images"]]
    fp32 = Detector(model, thresh=0.25)(photos)
    bf16 = Detector(model, thresh=0.25, precision="bf16")(photos)
    total = 0
    for a, b in zip(fp32, bf16):
        assert len(a.detections) == len(b.detections), a.image
        for da, db in zip(a.detections, b.detections):
            assert da.class_id == db.class_id
            assert max(abs(u - v) for u, v in zip(da.box, db.box)) <= 2.0
            assert abs(da.prob - db.prob) <= 0.02
            total += 1
    assert total >= 3
    assert json.dumps([d.to_json() for d in bf16[0].detections])  # float32 outputs, plain floats


@pytest.mark.parametrize("dialect,act", [("alexeyab", "mish"), ("pjreddie", "logistic"),
                                         ("pjreddie", "leaky"), ("alexeyab", "linear")])
def test_affine_path_per_activation(dialect, act):
    """Activations oneDNN does not fuse take the in-place affine path; every path =
    the formula path to 1e-5 of the layer's range, NCHW and channels-last."""
    cfg = (f"[net]\nwidth=10\nheight=10\nchannels=5\n"
           f"[convolutional]\nbatch_normalize=1\nfilters=7\nsize=3\nstride=1\npad=1\nactivation={act}\n"
           f"[convolutional]\nfilters=6\nsize=1\nstride=1\npad=1\nactivation={act}\n")
    model = Darknet(cfg, dialect=dialect).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        conv = model.module_list[0]
        conv.rolling_mean.copy_(torch.randn(7, generator=g))
        conv.rolling_variance.copy_(torch.rand(7, generator=g) + 0.1)
    x = torch.randn(3, 5, 10, 10, generator=g)
    ref = _formula(model, x)[0]
    with torch.no_grad():
        for channels_last in (False, None):
            model.channels_last = channels_last
            assert _close(model(x)[0], ref)
