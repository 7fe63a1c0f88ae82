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


# ------------------------------------------------- EXIF orientation: ignored everywhere
def exif_rotated_jpeg(path, pixels: np.ndarray, orientation: int = 6) -> bytes:
    """Write ``pixels`` (uint8 RGB [H, W, 3]) as a JPEG whose APP1 Exif segment
    says ``Orientation = orientation`` (6: shown rotated 90 degrees clockwise).
    Returns the JPEG without the Exif segment (the same compressed data)."""
    import struct

    import cv2
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(pixels[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    plain = buf.tobytes()
    # TIFF header (big endian, IFD at offset 8), one IFD entry: 0x0112 Orientation, SHORT, 1 value
    tiff = b"MM" + struct.pack(">HI", 42, 8) + struct.pack(">H", 1) \
        + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(payload)) + payload
    path.write_bytes(plain[:2] + app1 + plain[2:])  # right after SOI
    return plain


def test_exif_orientation_is_ignored_by_detect_map_and_training(tmp_path):
    """darknet reads pixels as stored (stb_image knows no EXIF), so labels written
    for the stored image stay right: detect, map and the training loader all see
    the 40x24 image, equal to the same JPEG without its Exif segment."""
    import cv2

    from darknet_py.data import DetectionDataset, LabeledImages
    from darknet_py.data.augment import AugmentConfig
    rng = np.random.default_rng(3)
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[:, :20] = (250, 10, 10)  # red left half, noisy blue right half
    pixels[:, 20:] = rng.integers(0, 60, (24, 20, 3)).astype(np.uint8) + np.uint8([0, 0, 180])
    tagged = tmp_path / "rotated.jpg"
    plain = exif_rotated_jpeg(tagged, pixels)
    assert cv2.imread(str(tagged)).shape == (40, 24, 3)  # the tag is real: OpenCV's default obeys it
    untagged = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    ours = load_image(tagged)  # detect and map
    assert ours.shape == (24, 40, 3) and np.array_equal(ours, untagged)

    src = LabeledImages([tagged], [np.zeros((0, 5), np.float32)])
    sample = DetectionDataset(src, 32, 32)[0]  # map's / -map's evaluation loader
    assert sample.size == (40, 24) and sample.failed == []
    aug = AugmentConfig(dialect="alexeyab", classes=1, max_boxes=10, jitter=0.0, hue=0.0,
                        saturation=1.0, exposure=1.0, flip=False)
    train = DetectionDataset(src, 32, 32, augment=aug)[0]  # the training loader
    assert train.size == (40, 24)
