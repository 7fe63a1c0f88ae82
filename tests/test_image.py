"""Images as darknet sees them: decoding, darknet's bilinear resize, letterbox.

Oracles: darknet's stored decoded images and letterboxed tensors
(real_yolov3-tiny), and small resizes worked out by hand from darknet's
resize_image formula.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from darknet_py.errors import DataError
from darknet_py.image import (default_resize_mode, letterbox_image, letterbox_size, load_image,
                              plain_resize, prepare, resize_image, to_float)
from tests.conftest import manifest_or_empty

REAL = manifest_or_empty().get("real", {}).get("images", [])
PNGS = [im["key"] for im in REAL if im["file"].endswith(".png")]
JPGS = [im["key"] for im in REAL if im["file"].lower().endswith((".jpg", ".jpeg"))]


def _entry(manifest, key):
    return next(im for im in manifest["real"]["images"] if im["key"] == key)


@pytest.mark.parametrize("key", PNGS)
def test_png_decodes_to_darknets_bytes(conformance, manifest, key):
    entry = _entry(manifest, key)
    ours = load_image(conformance / "real_yolov3-tiny" / entry["file"])
    ref = np.load(conformance / entry["arrays"])["image_uint8_hwc"]
    assert ours.shape == ref.shape == (entry["height"], entry["width"], 3)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("key", [im["key"] for im in REAL])
def test_letterbox_equals_darknets(conformance, manifest, key):
    """Our float conversion + letterbox of darknet's own decoded pixels."""
    z = np.load(conformance / _entry(manifest, key)["arrays"])
    ours = letterbox_image(to_float(z["image_uint8_hwc"]), 416, 416)
    ref = torch.from_numpy(z["letterbox"])
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max()) <= 1e-6


@pytest.mark.parametrize("key", JPGS)
def test_jpeg_decoder_gap_is_small(conformance, manifest, key):
    """OpenCV's libjpeg vs darknet's stb_image: a few levels at most on a few
    percent of the values; the letterboxed input then moves by < 0.02."""
    entry = _entry(manifest, key)
    ours = load_image(conformance / "real_yolov3-tiny" / entry["file"])
    z = np.load(conformance / entry["arrays"])
    ref = z["image_uint8_hwc"]
    assert ours.shape == ref.shape
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    print(f"{key}: JPEG decode vs stb_image: max {diff.max()} levels, mean {diff.mean():.4f}, "
          f"{(diff != 0).mean() * 100:.2f}% of values differ")
    assert diff.max() <= 8 and (diff != 0).mean() < 0.2
    lb = letterbox_image(to_float(ours), 416, 416)
    assert float((lb - torch.from_numpy(z["letterbox"])).abs().max()) < 0.05


def test_to_float_is_true_division():
    v = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    ours = to_float(v)[0, 0].numpy()
    expected = np.array([np.float32(i / 255.0) for i in range(256)], np.float32)  # (float)(v / 255.)
    assert np.array_equal(ours, expected)
    # and it is not the multiplication by 1/255 (which rounds differently for some values)
    assert not np.array_equal(ours, (np.arange(256, dtype=np.float32) * np.float32(1 / 255.0)))


def test_resize_by_hand_upsample_x():
    """2 -> 3 columns: positions c*(2-1)/(3-1) = 0, 0.5, last copies the last pixel."""
    im = torch.tensor([[[0.0, 1.0]]])
    out = resize_image(im, 3, 1)
    assert out.tolist() == [[[0.0, 0.5, 1.0]]]


def test_resize_by_hand_downsample_2d():
    """4x3 -> 2x2: w_scale = 3/1 = 3, h_scale = 2/1 = 2: darknet samples x at
    0 and (last) 3, y at 0 and (last row) 2 -- the corners, unlike INTER_LINEAR's
    area-centred sampling."""
    im = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    out = resize_image(im, 2, 2)
    assert out.tolist() == [[[0.0, 3.0], [8.0, 11.0]]]
    import cv2
    cv = cv2.resize(im[0].numpy(), (2, 2), interpolation=cv2.INTER_LINEAR)
    assert not np.allclose(cv, out[0].numpy())


def test_resize_by_hand_fractional():
    """3x3 -> 4x4 (scale 2/3): x = 0, 2/3, 4/3, last; the y pass adds
    (1-dy)*row[iy] + dy*row[iy+1] except on the last row."""
    im = torch.tensor([[[0.0, 3.0, 6.0], [9.0, 12.0, 15.0], [18.0, 21.0, 24.0]]])
    out = resize_image(im, 4, 4)[0]
    s = np.float32(2) / np.float32(3)
    xs = [0.0, float(np.float32(1) * s), float(np.float32(2) * s), 2.0]
    row0 = [3.0 * x for x in xs]
    assert np.allclose(out[0].numpy(), row0, atol=1e-5)
    assert np.allclose(out[:, 0].numpy(), [9.0 * y for y in xs], atol=1e-5)
    assert out[3, 3].item() == 24.0


def test_letterbox_size_rule_by_hand():
    # 640x427 into 416x416: 416/640 < 416/427 -> new_w = 416, new_h = 427*416//640 = 277
    assert letterbox_size(640, 427, 416, 416) == (416, 277)
    # 300x451 (portrait): new_h = 416, new_w = 300*416//451 = 276
    assert letterbox_size(300, 451, 416, 416) == (276, 416)
    im = torch.rand(3, 427, 640)
    lb = letterbox_image(im, 416, 416)
    top = (416 - 277) // 2
    assert torch.all(lb[:, :top] == 0.5) and torch.all(lb[:, top + 277:] == 0.5)
    assert torch.equal(lb[:, top:top + 277], resize_image(im, 416, 277))


def test_plain_resize_and_modes():
    im = torch.rand(3, 20, 30)
    assert torch.equal(plain_resize(im, 16, 8), resize_image(im, 16, 8))
    assert torch.equal(prepare(im, 16, 16, "letterbox"), letterbox_image(im, 16, 16))
    assert default_resize_mode("pjreddie", 0) == "letterbox"
    assert default_resize_mode("alexeyab", 0) == "resize"
    assert default_resize_mode("alexeyab", 1) == "letterbox"
    with pytest.raises(DataError, match="unknown resize mode"):
        prepare(im, 16, 16, "stretch")


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: no such image file"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        load_image(bad)


def test_grey_and_alpha_pngs_become_rgb(tmp_path):
    import cv2
    grey = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    g = load_image(tmp_path / "g.png")
    assert g.shape == (3, 4, 3) and all(np.array_equal(g[:, :, k], grey) for k in range(3))
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 7  # blue 10, red 200, alpha 7
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    a = load_image(tmp_path / "a.png")
    assert a.shape == (2, 2, 3) and a[0, 0].tolist() == [200, 0, 10]  # RGB, alpha dropped
