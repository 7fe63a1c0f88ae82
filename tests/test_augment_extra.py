"""AlexeyAB's mixup / cutmix / blur / gaussian_noise for detector training data,
checked against what AlexeyAB's C code does (parser.c ``parse_net_options``,
data.c ``load_data_detection`` / ``blend_truth`` / ``fill_truth_detection``,
image_opencv.cpp ``image_data_augmentation`` / ``blend_images_cv``), worked out
by hand: constant images whose blend is known, a single bright pixel spread by
the Gaussian kernel OpenCV builds for darknet's kernel size, the moments of
darknet's rectified (uint8) noise computed from the normal distribution.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from darknet_py.cfg import parse_cfg
from darknet_py.data import (AugmentConfig, CropJitter, DarknetBatchSampler, DetectionDataset,
                             augment_with, dataset_from_files,
                             make_synthetic_dataset, train_loader)
from darknet_py.data.augment import (UNSUPPORTED_NET_KEYS, AlexeyABAugmenter, detector_mixup_mode,
                                     draw_blur, draw_noise, effective_blur, min_box_side,
                                     net_mixup_mode)
from darknet_py.data.image_ops import blur_ksize, blur_uint8, gaussian_noise_uint8
from darknet_py.data.mixup import blend, blend_truth, mixup
from darknet_py.data.mosaic import mosaic
from darknet_py.errors import DataError
from tests.test_data import _tiny_source


def _cfg(**kw) -> AugmentConfig:
    base = dict(dialect="alexeyab", classes=4, max_boxes=90, jitter=0.0, hue=0.0,
                saturation=1.0, exposure=1.0, flip=False)
    base.update(kw)
    return AugmentConfig(**base)


def _ab_cfg(net_lines: str, dialect: str = "alexeyab"):
    text = (f"[net]\nwidth=64\nheight=64\nchannels=3\n{net_lines}\n"
            "[convolutional]\nfilters=27\nsize=1\nstride=1\nactivation=linear\n"
            "[yolo]\nmask=0,1,2\nanchors=10,13,16,30,33,23\nclasses=4\nnum=3\n")
    return parse_cfg(text.splitlines(True), dialect=dialect, warn_unused=False)


# ------------------------------------------------------------------ parsing / combination
@pytest.mark.parametrize("mixup, cutmix, mosaic, net_mode, detector_mode", [
    (0, 0, 0, 0, 0),
    (1, 0, 0, 1, 1),       # mixup
    (0, 1, 0, 2, 0),       # cutmix: "isn't supported for Detector" -> off
    (0, 0, 1, 3, 3),       # mosaic
    (1, 0, 1, 3, 3),       # mosaic replaces mixup
    (0, 1, 1, 4, 3),       # cutmix + mosaic -> mosaic
    (1, 1, 1, 4, 3),
    (1, 1, 0, 2, 0),
])
def test_mixup_modes_as_darknet_combines_them(mixup, cutmix, mosaic, net_mode, detector_mode):
    assert net_mixup_mode(mixup, cutmix, mosaic) == net_mode
    assert detector_mixup_mode(net_mode) == detector_mode


def test_odd_mixup_values():
    """parser: mixup is read as an int and kept; the loader maps 2 -> 0 and 4 -> 3;
    other values have no detector branch in darknet: refused."""
    assert detector_mixup_mode(net_mixup_mode(2, 0, 0)) == 0
    assert detector_mixup_mode(net_mixup_mode(3, 0, 0)) == 3
    with pytest.raises(DataError, match="mixup=5"):
        detector_mixup_mode(net_mixup_mode(5, 0, 0))


@pytest.mark.parametrize("lines, mosaic, mix, ignored", [
    ("mixup=1", False, True, ()),
    ("mosaic=1", True, False, ()),
    ("mixup=1\nmosaic=1", True, False, ("mixup",)),
    ("cutmix=1", False, False, ("cutmix",)),
    ("cutmix=1\nmosaic=1", True, False, ("cutmix",)),
    ("mixup=1\ncutmix=1", False, False, ("mixup", "cutmix")),
    ("", False, False, ()),
])
def test_from_cfg_mixup_cutmix_mosaic(lines, mosaic, mix, ignored):
    a = AugmentConfig.from_cfg(_ab_cfg(lines))
    assert (a.mosaic, a.mixup, a.ignored) == (mosaic, mix, ignored)


def test_from_cfg_blur_noise_and_ignored():
    a = AugmentConfig.from_cfg(_ab_cfg("blur=5\ngaussian_noise=30\nmixup=1\nangle=7"))
    assert (a.blur, a.gaussian_noise, a.mixup) == (5, 30, True)
    assert a.ignored == ("angle",)           # the implemented keys are no longer reported
    assert set(UNSUPPORTED_NET_KEYS) == {"angle", "track", "contrastive"}
    d = AugmentConfig.from_cfg(_ab_cfg(""))
    assert (d.blur, d.gaussian_noise, d.mixup, d.mosaic) == (0, 0, False, False)
    # pjreddie reads none of them (the cfg parser reports them as unused)
    p = AugmentConfig.from_cfg(_ab_cfg("blur=5\ngaussian_noise=30\nmixup=1", dialect="pjreddie"))
    assert (p.blur, p.gaussian_noise, p.mixup, p.mosaic) == (0, 0, False, False)


# ------------------------------------------------------------------ mixup
def _const(value, boxes):
    return (np.full((30, 40, 3), value, np.uint8), np.asarray(boxes, np.float32).reshape(-1, 5))


def test_mixup_of_two_constant_images():
    """No jitter/flip/colour: each part is its constant image; blend_images_cv(new, .5,
    old, .5) -> (a + b) / 2 / 255; the truth is the first image's boxes, then the
    second's (blend_truth)."""
    a = _const((200, 40, 0), [[1, .5, .5, .4, .6]])
    b = _const((100, 60, 255), [[2, .25, .25, .2, .2], [3, .75, .75, .2, .2]])
    parts = {0: a, 1: b}
    out, truth = mixup(parts.__getitem__, [0, 1], np.random.default_rng(0), 48, 32, _cfg())
    expected = np.float32(.5) * (np.array([100, 60, 255], np.float32) / np.float32(255)) + \
        np.float32(.5) * (np.array([200, 40, 0], np.float32) / np.float32(255))
    assert out.shape == (32, 48, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=0, atol=1e-7)
    assert truth[0].tolist() == pytest.approx([1, .5, .5, .4, .6])
    assert sorted(truth[1:, 0].tolist()) == [2, 3] and len(truth) == 3


def test_blend_truth_keeps_first_and_caps_at_max():
    t1 = np.array([[0, .5, .5, .1, .1], [1, .4, .4, .1, .1]], np.float32)
    t2 = np.array([[2, .3, .3, .1, .1], [3, .2, .2, .1, .1]], np.float32)
    assert blend_truth(t1, t2, 3)[:, 0].tolist() == [0, 1, 2]
    assert blend_truth(t1, t2, 90)[:, 0].tolist() == [0, 1, 2, 3]
    img = np.zeros((2, 2, 3), np.float32)
    out, t = blend((img, t1), (img + 1, np.zeros((0, 5), np.float32)), 90)
    assert np.all(out == .5) and t.tolist() == t1.tolist()


# ------------------------------------------------------------------ blur
def _kernel(k: int) -> np.ndarray:
    """OpenCV's getGaussianKernel(k, 0): the fixed table for k <= 7, else the
    Gaussian with sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8, normalised."""
    tables = {1: [1.], 3: [.25, .5, .25], 5: [.0625, .25, .375, .25, .0625],
              7: [.03125, .109375, .21875, .28125, .21875, .109375, .03125]}
    if k in tables:
        return np.array(tables[k])
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def test_blur_kernel_sizes():
    assert [blur_ksize(b) for b in (1, 2, 3, 4, 5, 8, 9)] == [17, 3, 3, 5, 5, 9, 9]


@pytest.mark.parametrize("blur", [4, 9, 17])
def test_whole_image_blur_spreads_a_bright_pixel(blur):
    """blur > 1: the whole image, kernel (blur/2)*2+1, sigma from the kernel size."""
    img = np.zeros((41, 41, 3), np.uint8)
    img[20, 20] = 255
    k = blur_ksize(blur)
    g = _kernel(k)
    expected = np.zeros((41, 41))
    r = k // 2
    expected[20 - r:21 + r, 20 - r:21 + r] = 255 * np.outer(g, g)
    out = blur_uint8(img, blur, np.zeros((0, 5), np.float32))
    for c in range(3):   # OpenCV's fixed-point uint8 filter: within one level
        np.testing.assert_allclose(out[..., c].astype(float), expected, atol=1.0)
    assert out[20, 20, 0] < 255 and out[20, 20 + r + 1, 0] == 0


def test_background_blur_keeps_the_boxes_sharp():
    """blur == 1: 17x17 Gaussian everywhere, then the truth boxes' pixels copied back
    from the unblurred image (box edges truncated to whole pixels)."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[32, 10] = 255                      # a background dot
    img[40:56, 36:60] = 255                # an object
    img[40, 36] = 0                        # a detail inside the object
    truth = np.array([[0, 48 / 64, 48 / 64, 24 / 64, 16 / 64]], np.float32)
    out = blur_uint8(img, 1, truth)
    np.testing.assert_array_equal(out[40:56, 36:60], img[40:56, 36:60])
    g = _kernel(17)
    assert abs(int(out[32, 10, 0]) - 255 * g[8] ** 2) <= 1
    assert abs(int(out[32, 14, 0]) - 255 * g[8] * g[12]) <= 1
    # the object's edge outside its box is blurred
    assert 0 < out[39, 48, 0] < 255


def test_blur_limited_by_the_smallest_box():
    """fill_truth_detection returns the smallest side in whole net pixels; a blur > 1
    is lowered to min_w_h / 8 when that is smaller."""
    truth = np.array([[0, .5, .5, .25, .5], [1, .3, .3, .5, .45]], np.float32)
    assert min_box_side(truth, 64, 64) == 16                      # .25 * 64
    assert effective_blur(5, truth, 64, 64) == 2                  # 16 // 8
    assert effective_blur(2, truth, 64, 64) == 2
    assert effective_blur(1, truth, 64, 64) == 1                  # background blur kept
    assert effective_blur(5, np.zeros((0, 5), np.float32), 64, 64) == 0
    small = np.array([[0, .5, .5, .2, .2]], np.float32)           # 12.8 -> 12 px -> 1
    assert effective_blur(9, small, 64, 64) == 1


def test_blur_and_noise_draw_probabilities():
    """rand_int(0, 2): none / background / cfg value; rand_int(0, 1) == 1: noise."""
    n = 6000
    rng = np.random.default_rng(1)
    blurs = [draw_blur(rng, 7) for _ in range(n)]
    noises = [draw_noise(rng, 25)[0] for _ in range(n)]
    tol = 5 * math.sqrt(1 / 3 * 2 / 3 / n)
    for v in (0, 1, 7):
        assert abs(blurs.count(v) / n - 1 / 3) < tol
    assert set(blurs) == {0, 1, 7}
    assert abs(noises.count(25) / n - .5) < 5 * math.sqrt(.25 / n) and set(noises) == {0, 25}
    assert [draw_blur(rng, 1) for _ in range(50)].count(1) > 20     # blur=1: 1 (2/3) or 0
    assert {draw_blur(rng, 1) for _ in range(50)} == {0, 1}
    assert draw_blur(rng, 0) == 0 and draw_noise(rng, 0) == (0, 0)


def test_sample_draws_blur_noise_after_the_crop():
    """The new draws come after darknet's others: geometry and colour are unchanged."""
    base = _cfg(jitter=.3, hue=.1, saturation=1.5, exposure=1.5, flip=True)
    extra = _cfg(jitter=.3, hue=.1, saturation=1.5, exposure=1.5, flip=True, blur=3,
                 gaussian_noise=9)
    aug = AlexeyABAugmenter()
    seen = set()
    for s in range(40):
        a = aug.sample(np.random.default_rng(s), 100, 80, 64, 64, base)
        b = aug.sample(np.random.default_rng(s), 100, 80, 64, 64, extra)
        assert (a.pleft, a.pright, a.ptop, a.pbot, a.flip, a.colour) == \
            (b.pleft, b.pright, b.ptop, b.pbot, b.flip, b.colour)
        assert (a.blur, a.noise) == (0, 0)
        seen.add((b.blur, b.noise))
    assert {bl for bl, _ in seen} == {0, 1, 3} and {no for _, no in seen} == {0, 9}


# ------------------------------------------------------------------ gaussian noise
def _rectified_moments(sigma: float) -> tuple[float, float]:
    """Mean and variance of clip(round(N(0, sigma)), 0, 255): what cv::randn writes
    into darknet's uint8 noise image."""
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    p = {k: phi((k + .5) / sigma) - phi((k - .5) / sigma) for k in range(1, 255)}
    p[255] = 1 - phi(254.5 / sigma)
    m1 = sum(k * q for k, q in p.items())
    m2 = sum(k * k * q for k, q in p.items())
    return m1, m2 - m1 * m1


def test_gaussian_noise_moments():
    """A constant 100 image: 100 + rectified noise (the negative draws saturate to 0)."""
    sigma, value = 20, 100
    img = np.full((200, 200, 3), value, np.uint8)
    out = gaussian_noise_uint8(img, sigma, np.random.default_rng(5)).astype(np.float64)
    mean, var = _rectified_moments(sigma)
    n = out.size
    noise = out - value
    assert noise.min() == 0 and (noise == 0).mean() == pytest.approx(
        0.5 * (1 + math.erf(.5 / sigma / math.sqrt(2))), abs=5 * math.sqrt(.25 / n))
    assert abs(noise.mean() - mean) < 5 * math.sqrt(var / n)
    # the sample variance's standard error: sqrt((m4 - var^2) / n), m4 <= ~3 var^2 here
    assert abs(noise.var() - var) < 5 * math.sqrt(2 * var * var / n)
    assert mean == pytest.approx(sigma / math.sqrt(2 * math.pi), rel=0.02)


def test_gaussian_noise_saturates_and_clamps():
    img = np.full((50, 50, 3), 250, np.uint8)
    out = gaussian_noise_uint8(img, 1000, np.random.default_rng(0))   # sigma clamped to 127
    assert out.min() == 250 and out.max() == 255
    assert gaussian_noise_uint8(img, 0, np.random.default_rng(0)) is img


def test_augment_with_noise_and_blur_is_reproducible():
    img = np.full((40, 50, 3), 90, np.uint8)
    labels = np.array([[0, .5, .5, .4, .5]], np.float32)
    crop = CropJitter(0, 0, 0, 0, blur=1, noise=12, noise_seed=77)
    a, ta = augment_with(img, labels, crop, 64, 48, _cfg())
    b, tb = augment_with(img, labels, crop, 64, 48, _cfg())
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    assert a.min() >= np.float32(90 / 255) and a.mean() > np.float32(90 / 255)


# ------------------------------------------------------------------ mosaic with blur / noise
def test_mosaic_parts_get_noise():
    def load(i):
        return _const((60, 60, 60), [[i, .5, .5, .5, .5]])
    cfg = _cfg(mosaic=True, gaussian_noise=30)
    outs = [mosaic(load, [0, 1, 2, 3], np.random.default_rng(s), 64, 64, cfg)[0]
            for s in range(6)]
    assert all(o.min() >= np.float32(60 / 255) - 1e-6 for o in outs)
    assert any(o.max() > .5 for o in outs)
    plain = mosaic(load, [0, 1, 2, 3], np.random.default_rng(0), 64, 64, _cfg(mosaic=True))[0]
    np.testing.assert_allclose(plain, 60 / 255, atol=1e-6)


# ------------------------------------------------------------------ dataset
def test_dataset_mixup_samples(tmp_path):
    """With mixup, half the samples hold two images' boxes."""
    ds = DetectionDataset(_tiny_source(tmp_path), 64, 48, augment=_cfg(mixup=True), seed=3)
    counts = [len(ds[(0, 64, 48, s)].truth) for s in range(30)]
    assert set(counts) == {1, 2}
    a, b = ds[(2, 64, 48, 11)], ds[(2, 64, 48, 11)]
    assert torch.equal(a.image, b.image) and torch.equal(a.truth, b.truth)


def test_dataset_batches_with_everything_enabled(tmp_path):
    data = make_synthetic_dataset(tmp_path / "s", n_train=4, n_valid=2, size=64)
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "cfg" / "tiny-shapes.cfg").read_text().replace(
        "[net]\n", "[net]\nmixup=1\nblur=3\ngaussian_noise=20\n", 1)
    cfg = parse_cfg(text.splitlines(True), dialect="alexeyab", warn_unused=False)
    ds = dataset_from_files(data, cfg, "train", seed=2)
    assert (ds.augment.mixup, ds.augment.blur, ds.augment.gaussian_noise) == (True, 3, 20)
    assert ds.augment.ignored == ()
    sampler = DarknetBatchSampler(len(ds), 4, size=(64, 64), seed=1, num_minibatches=3)
    batches = list(train_loader(ds, sampler))
    assert len(batches) == 3
    for b in batches:
        assert b.images.shape == (4, 3, 64, 64) and torch.isfinite(b.images).all()
        assert 0 <= float(b.images.min()) and float(b.images.max()) <= 1
        assert b.targets.shape[1] == 6 and len(b.targets) > 0
    again = list(train_loader(ds, DarknetBatchSampler(len(ds), 4, size=(64, 64), seed=1,
                                                      num_minibatches=3)))
    assert all(torch.equal(x.images, y.images) for x, y in zip(batches, again))
