"""darknet_py.data against cases worked out by hand from darknet's data.c / utils.c.

Oracles: the string rules of ``fill_truth_detection`` (pjreddie) and
``replace_image_to_label`` (AlexeyAB) applied by hand; the box arithmetic of
``correct_boxes`` / ``fill_truth_detection`` / ``blend_truth_mosaic`` worked
out on paper for given crops, placements and flips; pixels of images built
here whose content is known (so boxes can be checked against the pixels);
OpenCV's 8-bit HSV definition for the colour jitter; darknet's multi-scale
formulas evaluated by hand.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from darknet_py.cfg import parse_cfg
from darknet_py.data import (AugmentConfig, CropJitter, DarknetBatchSampler, DetectionDataset,
                             LabeledImages, MultiScaleSchedule, Placement, SYNTHETIC_CLASSES,
                             augment, augment_with, collate, dataset_from_files, from_coco,
                             from_data_config, from_list, label_path, make_synthetic_dataset,
                             parse_data_file, parse_labels, pick_random_size, read_labels,
                             train_loader)
from darknet_py.data.augment import augmenter
from darknet_py.data.dataset import Sample
from darknet_py.data.image_ops import distort_hsv_float, distort_hsv_uint8
from darknet_py.data.mosaic import mosaic
from darknet_py.data.multiscale import alexeyab_size, pjreddie_size
from darknet_py.data.truth import correct_boxes, fill_truth_alexeyab, fill_truth_pjreddie
from darknet_py.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def _cfg(dialect: str, **kw) -> AugmentConfig:
    base = dict(dialect=dialect, classes=4, max_boxes=90, jitter=0.0, hue=0.0, saturation=1.0,
                exposure=1.0)
    base.update(kw)
    return AugmentConfig(**base)


# ------------------------------------------------------------------ label path rules
@pytest.mark.parametrize("image, label", [
    ("data/voc/VOCdevkit/VOC2007/JPEGImages/000001.jpg", "data/voc/VOCdevkit/VOC2007/labels/000001.txt"),
    ("coco/images/train2014/COCO_train2014_1.jpg", "coco/labels/train2014/COCO_train2014_1.txt"),
    # only the first "images" is replaced, wherever it is
    ("/d/images/x/images/a.png", "/d/labels/x/images/a.txt"),
    # "raw" is replaced anywhere, even inside a word
    ("drawings/a.JPEG", "dlabelsings/a.txt"),
])
def test_label_path_pjreddie(image, label):
    assert label_path(image, "pjreddie") == label


def test_label_path_pjreddie_first_extension_is_refused():
    """pjreddie replaces the first ".jpg" anywhere: a.jpg.d/b.jpg -> a.txt.d/b.jpg, not a
    .txt file (darknet would read the image as its labels); we refuse it."""
    from darknet_py.data.labels import pjreddie_label_path
    assert pjreddie_label_path("a.jpg.d/b.jpg") == "a.txt.d/b.jpg"
    with pytest.raises(DataError, match="cannot infer the label file"):
        label_path("a.jpg.d/b.jpg", "pjreddie")


@pytest.mark.parametrize("image, label", [
    ("coco/images/train2017/000000001.jpg", "coco/labels/train2017/000000001.txt"),
    ("coco/images/val2014/x.jpg", "coco/labels/val2014/x.txt"),
    ("VOC2007/JPEGImages/000001.jpg", "VOC2007/labels/000001.txt"),
    ("C:\\d\\JPEGImages\\a.bmp", "C:\\d\\labels\\a.txt"),
    # a generic images/ folder is NOT mapped by AlexeyAB: the label sits beside the image
    ("data/images/1.png", "data/images/1.txt"),
    ("data/obj/img.JPEG", "data/obj/img.txt"),
    ("x.jpg.d/b.jpg", "x.jpg.d/b.txt"),       # extension only at the end
    (" data/obj/1.jpg\t", "data/obj/1.txt"),  # trimmed
])
def test_label_path_alexeyab(image, label):
    assert label_path(image, "alexeyab") == label


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_label_path_unsupported_extension(dialect, tmp_path):
    with pytest.raises(DataError, match="cannot infer the label file of 'pics/a.gif'"):
        label_path("pics/a.gif", dialect)
    (tmp_path / "list.txt").write_text("pics/a.jpg\n\npics/a.gif\n")
    with pytest.raises(DataError) as err:   # in a list: the list file and its line
        from_list(tmp_path / "list.txt", 3, dialect=dialect)
    assert (err.value.file, err.value.line) == (str(tmp_path / "list.txt"), 3)


# ------------------------------------------------------------------ bad labels
@pytest.mark.parametrize("text, line, message", [
    ("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n", 2, "class 3 is out of range 0..2 \\(classes=3\\)"),
    ("-1 0.5 0.5 0.1 0.1\n", 1, "class -1 is out of range"),
    ("x 0.5 0.5 0.1 0.1\n", 1, "class 'x' is not an integer"),
    ("1.0 0.5 0.5 0.1 0.1\n", 1, "class '1.0' is not an integer"),
    ("\n\n0 0.5 abc 0.1 0.1\n", 3, "cy 'abc' is not a number"),
    ("0 0.5 0.5 1.2 0.1\n", 1, "w=1.2 is outside \\[0, 1\\]"),
    ("0 -0.01 0.5 0.2 0.1\n", 1, "cx=-0.01 is outside"),
    ("0 0.5 0.5 0.1 nan\n", 1, "h=nan is outside"),
    ("0 0.5 0.5 0.1\n", 1, "expected 5 fields 'class cx cy w h', got 4"),
    ("0 0.5 0.5 0.1 0.1 7\n", 1, "expected 5 fields"),
])
def test_bad_label_names_file_and_line(tmp_path, text, line, message):
    f = tmp_path / "img.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_labels(f, classes=3)
    assert err.value.file == str(f) and err.value.line == line
    assert str(err.value).startswith(f"{f}:{line}: ")


def test_good_labels_parse():
    arr = parse_labels("2 0.5 0.25 .1 1\n\n  0 1 0 0 0  \n", classes=3)
    np.testing.assert_array_equal(arr, np.array([[2, .5, .25, .1, 1], [0, 1, 0, 0, 0]], np.float32))
    assert parse_labels("", classes=3).shape == (0, 5)


def _dataset_folder(tmp_path: Path, labels: dict[str, str]) -> Path:
    """images/<name>.png (8x8 grey) with labels beside them (AlexeyAB rule), a list, a .data."""
    import cv2
    (tmp_path / "obj").mkdir()
    entries = []
    for name, text in labels.items():
        cv2.imwrite(str(tmp_path / "obj" / f"{name}.png"), np.full((8, 8, 3), 100, np.uint8))
        if text is not None:
            (tmp_path / "obj" / f"{name}.txt").write_text(text)
        entries.append(f"obj/{name}.png")
    (tmp_path / "train.txt").write_text("\n".join(entries) + "\n\n")
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    (tmp_path / "t.data").write_text("# comment\nclasses= 3\ntrain  = train.txt\nnames = names.txt\n"
                                     "backup = backup/\neval=coco\n")
    return tmp_path / "t.data"


def test_list_source_reports_bad_label_file_and_line(tmp_path):
    data = _dataset_folder(tmp_path, {"a": "0 .5 .5 .1 .1\n", "b": "1 .5 .5 .1 .1\n2 .5 .5 .1 1.5\n"})
    cfg = parse_data_file(data)
    with pytest.raises(DataError) as err:
        from_data_config(cfg, "train")
    assert err.value.file.endswith(os.path.join("obj", "b.txt")) and err.value.line == 2


def test_data_file_and_list_source(tmp_path, monkeypatch):
    data = _dataset_folder(tmp_path, {"a": "0 .5 .5 .1 .1\n", "b": None})
    monkeypatch.chdir("/")  # relative paths resolve against the .data folder
    cfg = parse_data_file(data)
    assert (cfg.classes, cfg.train, cfg.valid, cfg.names, cfg.backup) == \
        (3, "train.txt", "train.txt", "names.txt", "backup/")
    assert cfg.extra == {"eval": "coco"}
    assert cfg.names_list() == ["a", "b", "c"]
    src = from_data_config(cfg, "train")
    assert [p.name for p in src.images] == ["a.png", "b.png"] and all(p.is_file() for p in src.images)
    np.testing.assert_allclose(src.labels[0], [[0, .5, .5, .1, .1]])
    assert src.labels[1].shape == (0, 5)  # missing label file = no objects (AlexeyAB)
    assert [p.name for p in src.missing_labels] == ["b.txt"]


def test_data_file_errors(tmp_path):
    f = tmp_path / "x.data"
    f.write_text("classes = 2\ntrain = t.txt\nclasses = two\n")
    with pytest.raises(DataError, match="classes='two' is not an integer") as err:
        parse_data_file(f)
    assert err.value.line == 3
    f.write_text("classes = 2\njust words\n")
    with pytest.raises(DataError, match="expected 'key = value'") as err:
        parse_data_file(f)
    assert err.value.line == 2
    data = _dataset_folder(tmp_path / "d" if (tmp_path / "d").mkdir() is None else None, {"a": ""})
    text = data.read_text().replace("classes= 3", "classes = 4")
    data.write_text(text)
    with pytest.raises(DataError, match="3 names for classes=4"):
        parse_data_file(data).names_list()


def test_data_file_says_which_key_is_missing_and_the_default(tmp_path, monkeypatch):
    """Keys a .data file leaves out: the message says so and names darknet's default
    (detector.c: classes 20, train data/train.list, names data/names.list; AlexeyAB's
    train -map evaluates on the train list when there is no valid=)."""
    from darknet_py.data.datafile import DataDefaultWarning
    monkeypatch.chdir(tmp_path)  # darknet's defaults are relative to the current directory
    data = _dataset_folder(tmp_path, {"a": "0 .5 .5 .1 .1\n"})
    data.write_text("train = train.txt\nnames = names.txt\n")
    cfg = parse_data_file(data)
    assert cfg.missing == {"classes", "valid", "backup"} and cfg.classes == 20
    with pytest.raises(DataError) as err:
        cfg.names_list()
    assert str(err.value) == (f"names.txt: 3 names, but {data} has no classes= line "
                              f"(darknet's default is classes=20); add 'classes = 3'")
    assert cfg.setting("classes") == f"classes=20 (darknet's default: {data} has no classes= line)"
    with pytest.warns(DataDefaultWarning, match=r"no valid= line; evaluating on the train list train.txt"):
        assert [p.name for p in from_data_config(cfg, "valid", dialect="alexeyab").images] == ["a.png"]

    data.write_text("classes = 3\nnames = names.txt\n")
    cfg = parse_data_file(data)
    with pytest.raises(DataError) as err:
        from_data_config(cfg, "train")
    assert str(err.value) == (f"{data}: no train= line, and darknet's default train list "
                              f"data/train.list does not exist")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.list").write_text("obj/a.png\n")
    with pytest.warns(DataDefaultWarning, match="no train= line; using darknet's default data/train.list"):
        assert len(cfg.train_images()) == 1

    data.write_text("classes = 3\ntrain = train.txt\n")
    with pytest.raises(DataError, match=r"t.data: no names= line, and darknet's default names file "
                                        r"data/names.list does not exist"):
        parse_data_file(data).names_list()


# ------------------------------------------------------------------ box transformations
def test_alexeyab_crop_flip_by_hand():
    """Image 100x80, crop pleft=10 pright=-10 ptop=5 pbot=15 (100x60), flipped.
    Box px [40,60) x [30,50): after the crop x [30,50)/100, y [25,45)/60; flipped
    x [50,70)/100.  So cx=.6, cy=35/60, w=.2, h=20/60."""
    img = np.zeros((80, 100, 3), np.uint8)
    img[30:50, 40:60] = 255
    labels = np.array([[1, .5, .5, .2, .25]], np.float32)
    crop = CropJitter(10, -10, 5, 15, flip=True)
    out, truth = augment_with(img, labels, crop, 100, 60, _cfg("alexeyab"))
    np.testing.assert_allclose(truth, [[1, .6, 35 / 60, .2, 20 / 60]], atol=1e-6)
    # the pixels agree: the white block is where the box says (output = crop size, no scaling)
    ys, xs = np.nonzero(out[..., 0] > 0.5)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (50, 70, 25, 45)
    # the padded columns (original x >= 100, i.e. output x < 10 after the flip) hold the mean colour
    mean = round(255 * 400 / 8000) / 255  # 400 white pixels of 8000
    np.testing.assert_allclose(out[:, :10], mean, atol=1e-6)


def test_pjreddie_placement_by_hand():
    """Image 100x80 scaled to nw=64 x nh=40 at (dx, dy) = (0, 12) on a 64x64 input.
    Box px [20,40) x [30,50) -> x [.2,.4) (scale .64/.64), y (15+12)/64 .. (25+12)/64;
    flipped: x [.6,.8)."""
    img = np.zeros((80, 100, 3), np.uint8)
    img[30:50, 20:40] = 255
    labels = np.array([[3, .3, .5, .2, .25]], np.float32)
    for flip, cx in ((False, .3), (True, .7)):
        out, truth = augment_with(img, labels, Placement(64, 40, 0, 12, flip), 64, 64, _cfg("pjreddie"))
        np.testing.assert_allclose(truth, [[3, cx, 32 / 64, .2, 10 / 64]], atol=1e-6)
        ys, xs = np.nonzero(out[..., 0] > 0.75)
        # bilinear edges: within a pixel of the box
        assert abs(xs.min() - (cx - .1) * 64) <= 1 and abs(xs.max() + 1 - (cx + .1) * 64) <= 1
        assert abs(ys.min() - 27) <= 1 and abs(ys.max() + 1 - 37) <= 1
        assert np.all(out[:12] == 0.5) and np.all(out[52:] == 0.5)  # the canvas outside the image


def test_alexeyab_letter_box_crop_by_hand():
    """letter_box=1, no jitter: a 200x100 image for a square input is cropped 200x200,
    50 pixels of padding above and below.  Box y [30,70) -> [80,120)/200 = [.4,.6)."""
    cfg = _cfg("alexeyab", letter_box=True, flip=False)
    crop = augmenter("alexeyab").sample(np.random.default_rng(0), 200, 100, 64, 64, cfg)
    assert (crop.pleft, crop.pright, crop.ptop, crop.pbot) == (0, 0, -50, -50)
    labels = np.array([[2, .5, .5, .2, .4]], np.float32)
    out, truth = augment_with(np.zeros((100, 200, 3), np.uint8), labels, crop, 64, 64, cfg)
    np.testing.assert_allclose(truth, [[2, .5, .5, .2, .2]], atol=1e-6)


def test_alexeyab_crop_ranges_with_resize():
    """jitter .2 and resize 1.5 on a 100x80 image: each side moves by U(-20, 20) (x) or
    U(-16, 16) (y) plus the resize term, between ow*(1-1.5)/2 = -25 and
    ow*(1-1/1.5)/2 = 16 (x), -20 and 13 (y)."""
    cfg = _cfg("alexeyab", jitter=0.2, resize=1.5)
    aug = augmenter("alexeyab")
    crops = [aug.sample(np.random.default_rng(s), 100, 80, 64, 64, cfg) for s in range(300)]
    xs = [v for c in crops for v in (c.pleft, c.pright)]
    ys = [v for c in crops for v in (c.ptop, c.pbot)]
    assert -45 <= min(xs) and max(xs) <= 36 and min(xs) < -35 and max(xs) > 26
    assert -36 <= min(ys) and max(ys) <= 29 and min(ys) < -28 and max(ys) > 21
    assert {c.flip for c in crops} == {False, True}


def test_augment_config_from_real_cfgs(conformance):
    """Values read by hand from the darknets' own cfg files."""
    ab = AugmentConfig.from_cfg(parse_cfg(conformance / "zoo" / "alexeyab" / "yolov4.cfg"))
    assert (ab.dialect, ab.classes, ab.max_boxes, ab.mosaic, ab.flip, ab.letter_box) == \
        ("alexeyab", 80, 200, True, True, False)
    assert (ab.jitter, ab.hue, ab.saturation, ab.exposure) == pytest.approx((.3, .1, 1.5, 1.5))
    pj = AugmentConfig.from_cfg(parse_cfg(conformance / "zoo" / "pjreddie" / "yolov3.cfg"))
    assert (pj.dialect, pj.classes, pj.max_boxes, pj.mosaic) == ("pjreddie", 80, 90, False)
    assert pj.jitter == pytest.approx(.3)
    sched = MultiScaleSchedule.from_cfg(parse_cfg(conformance / "zoo" / "pjreddie" / "yolov3.cfg"))
    assert sched is not None and sched.dialect == "pjreddie" and sched.max_batches == 500200


def test_clipping_and_dropping_rules():
    """100x100 image cropped at pleft=20 (80x100 output):
    A px [15,35) -> [-5,15)/80 -> clipped [0, .1875): cx .09375, w .1875;
    B px [5,15) -> wholly left of the crop -> w 0 -> dropped;
    C px [80,100) -> [60,80)/80: cx .875, w .25;
    D px [50, 50.5) -> w .5/80 = .00625: dropped by AlexeyAB (< 1 pixel = 1/80),
      kept by pjreddie (>= .001)."""
    labels = np.array([[0, .25, .5, .2, .2], [1, .1, .5, .1, .2], [2, .9, .5, .2, .2],
                       [3, .5025, .5, .005, .2]], np.float32)
    crop = CropJitter(20, 0, 0, 0)
    ab = augment_with(np.zeros((100, 100, 3), np.uint8), labels, crop, 80, 100, _cfg("alexeyab"))[1]
    np.testing.assert_allclose(ab, [[0, .09375, .5, .1875, .2], [2, .875, .5, .25, .2]], atol=1e-6)
    # pjreddie: the same corrected boxes through its rule: B (w 0) leaves an empty slot and
    # pjreddie's layers stop reading the truths there, so C and D are lost too
    corrected = correct_boxes(labels, *crop.correct_args(100, 100, 80, 100), False, "pjreddie")
    pj = fill_truth_pjreddie(corrected, 90, 80, 100)
    np.testing.assert_allclose(pj, [[0, .09375, .5, .1875, .2]], atol=1e-6)
    # without the empty box, pjreddie keeps the half-pixel box D
    pj2 = fill_truth_pjreddie(corrected[[0, 2, 3]], 90, 80, 100)
    np.testing.assert_allclose(pj2[:, 0], [0, 2, 3])
    np.testing.assert_allclose(pj2[2, 3], .00625, atol=1e-6)


def test_max_boxes_truncates_before_dropping():
    """AlexeyAB and pjreddie cut the list to max_boxes before the drop rule."""
    boxes = np.array([[0, .5, .5, .0001, .1], [1, .5, .5, .2, .2], [2, .3, .3, .2, .2]], np.float32)
    assert fill_truth_alexeyab(boxes, 2, 416, 416)[:, 0].tolist() == [1]
    assert fill_truth_alexeyab(boxes, 3, 416, 416)[:, 0].tolist() == [1, 2]
    assert fill_truth_pjreddie(boxes, 3, 416, 416).shape == (0, 5)     # stops at the empty slot
    assert fill_truth_pjreddie(boxes[1:], 1, 416, 416)[:, 0].tolist() == [1]


def test_zero_centre_box_is_invalid():
    """Darknet marks x == y == 0 boxes with 999999 (dropped here in both dialects)."""
    boxes = np.array([[0, 0, 0, .2, .2], [1, .5, .5, .2, .2]], np.float32)
    for dialect, fill in (("alexeyab", fill_truth_alexeyab), ("pjreddie", fill_truth_pjreddie)):
        out = fill(correct_boxes(boxes, 0, 0, 1, 1, False, dialect), 90, 100, 100)
        assert out[:, 0].tolist() == [1]


def test_random_augmentation_keeps_boxes_on_the_pixels():
    """Random jitter/flip (both dialects): a white box on black must stay under its truth."""
    img = np.zeros((90, 120, 3), np.uint8)
    img[20:60, 30:80] = 255
    labels = np.array([[0, 55 / 120, 40 / 90, 50 / 120, 40 / 90]], np.float32)
    for dialect in ("pjreddie", "alexeyab"):
        cfg = _cfg(dialect, jitter=0.2)
        for seed in range(6):
            out, truth = augment(img, labels, np.random.default_rng(seed), 96, 64, cfg)
            assert out.shape == (64, 96, 3) and out.dtype == np.float32
            if len(truth) == 0:
                continue
            _, cx, cy, w, h = truth[0]
            mask = out[..., 0] > 0.75 if dialect == "pjreddie" else out[..., 0] > 0.5
            ys, xs = np.nonzero(mask)
            assert abs(xs.min() - (cx - w / 2) * 96) <= 1.5 and abs(xs.max() + 1 - (cx + w / 2) * 96) <= 1.5
            assert abs(ys.min() - (cy - h / 2) * 64) <= 1.5 and abs(ys.max() + 1 - (cy + h / 2) * 64) <= 1.5


# ------------------------------------------------------------------ colour
def test_hsv_jitter_by_hand():
    red = np.zeros((1, 1, 3), np.float32)
    red[..., 0] = 1.0
    # a third of a turn of hue turns red into green; half saturation: (1, .5, .5)
    np.testing.assert_allclose(distort_hsv_float(red, 1 / 3, 1, 1)[0, 0], [0, 1, 0], atol=1e-5)
    np.testing.assert_allclose(distort_hsv_float(red, 0, .5, 1)[0, 0], [1, .5, .5], atol=1e-5)
    np.testing.assert_allclose(distort_hsv_float(red, -1 / 3, 1, .5)[0, 0], [0, 0, .5], atol=1e-5)
    # exposure above 1 saturates at 1 (clip)
    np.testing.assert_allclose(distort_hsv_float(np.full((1, 1, 3), .8, np.float32), 0, 1, 2)[0, 0], 1)
    # AlexeyAB, OpenCV 8-bit HSV: hue 0 + 179/3 = 59.67 -> 60 (= 120 degrees) -> green
    red8 = np.array([[[255, 0, 0]]], np.uint8)
    assert distort_hsv_uint8(red8, 1 / 3, 1, 1)[0, 0].tolist() == [0, 255, 0]
    # ... and hue does not wrap below 0: it saturates at 0 (red stays red)
    assert distort_hsv_uint8(red8, -1 / 3, 1, 1)[0, 0].tolist() == [255, 0, 0]
    # saturation 255 * .5 = 127.5 -> 128 (8-bit); g = b = 255 * (1 - 128/255) = 127
    assert distort_hsv_uint8(red8, 0, .5, 1)[0, 0].tolist() == [255, 127, 127]


# ------------------------------------------------------------------ mosaic
def test_mosaic_quadrants_and_boxes_agree():
    """Four plain images (each one full-image box); no jitter: each quadrant shows
    one image and its box becomes the quadrant rectangle."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]

    def load(i):
        return np.full((50, 70, 3), colours[i], np.uint8), np.array([[i, .5, .5, 1, 1]], np.float32)

    cfg = _cfg("alexeyab", mosaic=True, flip=False)
    for seed in range(4):
        out, truth = mosaic(load, [0, 1, 2, 3], np.random.default_rng(seed), 96, 80, cfg)
        red = out[..., 0] > .5
        cut_x = int(np.argmin(red[0]))          # first non-red column in the top row
        cut_y = int(np.argmin(red[:, 0]))       # first non-red row in the left column
        assert 19 <= cut_x <= 76 and 16 <= cut_y <= 64
        rects = {0: (0, cut_x, 0, cut_y), 1: (cut_x, 96, 0, cut_y), 2: (0, cut_x, cut_y, 80),
                 3: (cut_x, 96, cut_y, 80)}
        assert sorted(truth[:, 0].tolist()) == [0, 1, 2, 3]
        for cls, cx, cy, w, h in truth:
            x0, x1, y0, y1 = rects[int(cls)]
            part = out[y0:y1, x0:x1]
            np.testing.assert_allclose(part, np.broadcast_to(np.array(colours[int(cls)]) / 255, part.shape),
                                       atol=1e-6)
            assert abs((cx - w / 2) * 96 - x0) <= 1 and abs((cx + w / 2) * 96 - x1) <= 1
            assert abs((cy - h / 2) * 80 - y0) <= 1 and abs((cy + h / 2) * 80 - y1) <= 1


def test_mosaic_boxes_follow_the_pixels_with_jitter():
    """Random crops, flips, corner moves (mosaic_bound=1): every kept box is a white
    block of the mosaic and the white pixels are covered by the boxes."""
    def load(i):
        img = np.zeros((60, 80, 3), np.uint8)
        x0, y0 = 10 + 7 * i, 8 + 5 * i
        img[y0:y0 + 30, x0:x0 + 36] = 255
        return img, np.array([[i, (x0 + 18) / 80, (y0 + 15) / 60, 36 / 80, 30 / 60]], np.float32)

    cfg = _cfg("alexeyab", mosaic=True, mosaic_bound=True, jitter=0.3)
    for seed in range(12):
        out, truth = mosaic(load, [0, 1, 2, 3], np.random.default_rng(seed), 128, 96, cfg)
        white = out.min(axis=2) > 0.5
        covered = np.zeros_like(white)
        for _, cx, cy, w, h in truth:
            x0, x1 = int(round((cx - w / 2) * 128)), int(round((cx + w / 2) * 128))
            y0, y1 = int(round((cy - h / 2) * 96)), int(round((cy + h / 2) * 96))
            # darknet truncates the mosaic box edges to whole pixels: allow one pixel
            assert white[y0 + 1:y1 - 1, x0 + 1:x1 - 1].mean() > 0.95
            covered[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
        assert (white & ~covered).sum() <= 0.02 * white.sum()


# ------------------------------------------------------------------ dataset, collate, sampler
def test_collate_layout():
    s0 = Sample(torch.zeros(3, 4, 6), torch.tensor([[1, .5, .5, .2, .2], [0, .1, .2, .1, .1]]), 7,
                (60, 40), [])
    s1 = Sample(torch.ones(3, 4, 6), torch.zeros(0, 5), 3, (6, 4), ["bad.png"])
    s2 = Sample(torch.full((3, 4, 6), 2.0), torch.tensor([[3, .9, .9, .05, .05]]), 5, (6, 4), [])
    skipped = Sample(None, torch.zeros(0, 5), 9, (0, 0), ["gone.png"])
    b = collate([s0, s1, skipped, s2])
    assert b.images.shape == (3, 3, 4, 6) and b.images.dtype == torch.float32
    assert b.images[2].eq(2).all()
    expected = torch.tensor([[0, 1, .5, .5, .2, .2], [0, 0, .1, .2, .1, .1], [2, 3, .9, .9, .05, .05]])
    assert torch.equal(b.targets, expected)
    assert b.indices == [7, 3, 5] and b.sizes == [(60, 40), (6, 4), (6, 4)]
    assert b.failed == ["bad.png", "gone.png"]
    assert collate([s1]).targets.shape == (0, 6)


def _tiny_source(tmp_path: Path, n: int = 4, broken: int | None = None) -> LabeledImages:
    import cv2
    images, labels = [], []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        if i == broken:
            p.write_bytes(b"not a png")
        else:
            img = np.zeros((40, 50, 3), np.uint8)
            img[10:30, 10 + i:30 + i] = 200
            cv2.imwrite(str(p), img)
        images.append(p)
        labels.append(np.array([[i % 4, (20 + i) / 50, .5, .4, .5]], np.float32))
    return LabeledImages(images, labels)


def test_dataset_training_samples(tmp_path):
    src = _tiny_source(tmp_path, broken=1)
    cfg = _cfg("alexeyab", jitter=.2, hue=.1, saturation=1.5, exposure=1.5)
    ds = DetectionDataset(src, 64, 48, augment=cfg, seed=3)
    a, b = ds[(0, 96, 64, 11)], ds[(0, 96, 64, 11)]
    assert a.image.shape == (3, 64, 96) and torch.equal(a.image, b.image) and torch.equal(a.truth, b.truth)
    assert ds[0].image.shape == (3, 48, 64)
    assert not torch.equal(ds[(0, 96, 64, 12)].image, a.image)
    bad = ds[(1, 64, 48, 5)]  # undecodable: replaced by another image, reported
    assert bad.failed == [str(src.images[1])] and bad.index != 1 and bad.image is not None


def test_dataset_eval_letterbox_and_failures(tmp_path):
    src = _tiny_source(tmp_path, broken=2)
    ds = DetectionDataset(src, 64, 64, letterbox=True)
    s = ds[0]
    assert s.size == (50, 40) and s.image.shape == (3, 64, 64)
    # letterbox: 50x40 -> 64x51, centred: rows 0..6 and 58..63 are the 0.5 border
    assert torch.all(s.image[:, :6] == 0.5) and torch.all(s.image[:, 58:] == 0.5)
    assert torch.equal(s.truth, torch.from_numpy(src.labels[0]))  # eval keeps the original boxes
    b = collate([ds[i] for i in range(4)])
    assert b.indices == [0, 1, 3] and b.failed == [str(src.images[2])]


def test_sampler_sizes_ranks_and_resume():
    sched = MultiScaleSchedule(416, 416, dialect="alexeyab", random=1.0, max_batches=10000, seed=5)
    kw = dict(size=(416, 416), subdivisions=2, schedule=sched, seed=9)
    r0 = DarknetBatchSampler(100, 4, rank=0, num_minibatches=60, **kw)
    r1 = DarknetBatchSampler(100, 4, rank=1, num_minibatches=60, **kw)
    b0, b1 = list(r0), list(r1)
    sizes = [(k[0][1], k[0][2]) for k in b0]
    # one darknet iteration = 2 minibatches; a new size every 10 iterations = 20 minibatches
    assert sizes == [sched.size(m // 2) for m in range(60)]
    assert len(set(sizes[:20])) == 1 and sizes[0] == (608, 608)  # AlexeyAB's first pick: the largest
    assert [(k[0][1], k[0][2]) for k in b1] == sizes                # all ranks use the same size
    assert [k[0][0] for k in b0] != [k[0][0] for k in b1]          # but draw different images
    resumed = DarknetBatchSampler(100, 4, rank=0, start_minibatch=30, num_minibatches=10,
                                  size=(416, 416), seed=9)
    assert [[(i, s) for i, _, _, s in k] for k in resumed] == \
        [[(i, s) for i, _, _, s in k] for k in b0[30:40]]


def test_train_loader_with_worker(tmp_path):
    src = _tiny_source(tmp_path)
    ds = DetectionDataset(src, 64, 64, augment=_cfg("pjreddie", jitter=.1))
    sampler = DarknetBatchSampler(len(ds), 3, size=(64, 32), seed=1, num_minibatches=2)
    batches = list(train_loader(ds, sampler, workers=1))
    again = list(train_loader(ds, DarknetBatchSampler(len(ds), 3, size=(64, 32), seed=1,
                                                      num_minibatches=2), workers=0))
    assert len(batches) == 2 and batches[0].images.shape == (3, 3, 32, 64)
    for a, b in zip(batches, again):  # same keys -> same samples, whichever process loads them
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert batches[0].targets.shape[1] == 6


# ------------------------------------------------------------------ multi-scale
def test_multiscale_formulas_by_hand():
    # AlexeyAB: roundl(r * 416/32 + 1) * 32
    assert alexeyab_size(1.0, 416, 416) == (448, 448)                # 13 + 1 = 14
    assert alexeyab_size(1 / 1.4, 416, 416) == (320, 320)            # 9.29 + 1 -> 10
    assert alexeyab_size(0.98, 416, 416) == (416, 416)               # shrink that grows: initial size
    assert alexeyab_size(1.3, 416, 256) == (576, 352)                # 16.9+1 -> 18, 10.4+1 -> 11
    assert alexeyab_size(0.9, 416, 416, first=True) == (608, 608)    # 1.4*13 + 1 = 19.2 -> 19
    assert alexeyab_size(0.9, 416, 416, iteration=950, max_batches=1000) == (608, 608)
    assert alexeyab_size(0.05, 100, 100, resize_step=32) == (32, 32)  # never below the step
    # pjreddie: (k + 10) * 32, and 608 in the last 200 iterations
    assert pjreddie_size(0) == (320, 320) and pjreddie_size(9) == (608, 608)
    assert pjreddie_size(3, iteration=801, max_batches=1000) == (608, 608)
    assert pjreddie_size(3, iteration=799, max_batches=1000) == (416, 416)


def test_pick_random_size_ranges():
    rng = np.random.default_rng(0)
    ab = {pick_random_size(rng, 416, 416, dialect="alexeyab", max_batches=10 ** 6) for _ in range(400)}
    assert ab <= {(d, d) for d in range(320, 609, 32)} and len(ab) >= 8
    pj = {pick_random_size(rng, 416, 416, dialect="pjreddie", max_batches=10 ** 6)[0] for _ in range(400)}
    assert pj == set(range(320, 609, 32))
    cfg = parse_cfg(REPO / "cfg" / "yolov3-tiny.cfg")  # random=1, as darknet's
    sched = MultiScaleSchedule.from_cfg(cfg, seed=1)
    assert sched is not None and sched.init_w == cfg.net["width"]
    assert MultiScaleSchedule.from_cfg(parse_cfg(REPO / "cfg" / "tiny-shapes.cfg")) is None
    assert all(sched.size(k) == sched.size(k - k % 10) for k in range(40))


# ------------------------------------------------------------------ COCO json
def test_coco_source(tmp_path):
    ann = {
        "images": [{"id": 5, "file_name": "b.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "a.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [20, 10, 40, 50], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [180, 60, 40, 60], "area": 2400, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        ]}
    f = tmp_path / "ann.json"
    f.write_text(json.dumps(ann))
    src = from_coco(f, tmp_path / "imgs")
    assert src.names == ["cat", "dog"]                       # by category id: 3, 7
    assert [p.name for p in src.images] == ["a.jpg", "b.jpg"] and src.sizes == [(100, 100), (200, 100)]
    assert src.labels[0].shape == (0, 5)
    # dog [20,60)x[10,60) of 200x100; cat [180,220) clipped to [180,200) x [60,100) (crowd skipped)
    np.testing.assert_allclose(src.labels[1], [[1, .2, .35, .2, .5], [0, .95, .8, .1, .4]], atol=1e-6)
    with pytest.raises(DataError, match="COCO annotation file not found"):
        from_coco(tmp_path / "nope.json", tmp_path)


# ------------------------------------------------------------------ synthetic dataset
def test_synthetic_dataset_deterministic_and_valid(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_valid=3, size=64, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_valid=3, size=64, seed=7)
    files_a = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.parent) for p in b.parent.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 9 + 5
    for rel in files_a:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel
    c = make_synthetic_dataset(tmp_path / "c", n_train=6, n_valid=3, size=64, seed=8)
    assert (c.parent / "train/000000.png").read_bytes() != (a.parent / "train/000000.png").read_bytes()
    # valid darknet format, readable by both label rules
    data = parse_data_file(a)
    assert data.classes == len(SYNTHETIC_CLASSES) == len(data.names_list())
    for dialect in ("pjreddie", "alexeyab"):
        for split, n in (("train", 6), ("valid", 3)):
            src = from_data_config(data, split, dialect=dialect)
            assert len(src) == n and not src.missing_labels
            assert all(len(l) >= 1 for l in src.labels)
    # cached: a second call reuses the folder untouched
    mtime = (a.parent / "train/000000.png").stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path / "a", n_train=6, n_valid=3, size=64, seed=7) == a
    assert (a.parent / "train/000000.png").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="does not hold this synthetic dataset"):
        make_synthetic_dataset(tmp_path / "a", n_train=7, n_valid=3, size=64, seed=7)


def test_dataset_from_files_checks_classes(tmp_path):
    data = make_synthetic_dataset(tmp_path / "s", n_train=3, n_valid=2, size=64)
    cfg = parse_cfg(REPO / "cfg" / "tiny-shapes.cfg")
    ds = dataset_from_files(data, cfg, "train")
    assert ds.augment is not None and ds.augment.classes == 4 and len(ds) == 3
    assert ds[0].image.shape == (3, cfg.net["height"], cfg.net["width"])
    text = (REPO / "cfg" / "tiny-shapes.cfg").read_text().replace("classes=4", "classes=5")
    with pytest.raises(DataError, match="classes=4 but the cfg's detection layer has classes=5"):
        dataset_from_files(data, parse_cfg(text), "train")


def test_unloadable_image_is_reported_once(tmp_path, caplog):
    """The training loader replaces an unreadable image at every draw, but says so
    once per image (not at every epoch or mosaic part)."""
    import logging

    import cv2
    cv2.imwrite(str(tmp_path / "good.png"), np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    src = LabeledImages([tmp_path / "bad.png", tmp_path / "good.png"],
                        [np.zeros((0, 5), np.float32)] * 2)
    ds = DetectionDataset(src, 16, 16, augment=_cfg("alexeyab"))
    with caplog.at_level(logging.WARNING, logger="darknet_py.data"):
        for seed in range(3):
            sample = ds[(0, 16, 16, seed)]
            assert sample.index == 1 and set(sample.failed) == {str(tmp_path / "bad.png")}
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [f"{tmp_path / 'bad.png'}: not a readable image (unknown format or corrupt data) (skipped)"]
