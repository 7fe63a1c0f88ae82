"""darknet_py.metrics against APs worked out by hand (AlexeyAB's
``validate_detector_map`` rules, VOC 11-point and COCO 101-point variants) and
against pycocotools itself."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from darknet_py.metrics import (average_precision, coco_evaluate, detection_rows, evaluate_map,
                                format_map_report)

REPO = Path(__file__).resolve().parents[1]


def _det(cls, prob, cx, cy, w, h):
    return [cls, prob, cx, cy, w, h]


# one image: class 0 has truths T1 T2 T3, class 1 has T4; class 2 has nothing
T1, T2, T3, T4 = (.2, .2, .1, .1), (.5, .5, .1, .1), (.8, .8, .1, .1), (.2, .8, .1, .1)
TRUTH = np.array([[0, *T1], [0, *T2], [0, *T3], [1, *T4]])
DETS = np.array([
    _det(0, .9, *T1),                 # TP
    _det(0, .8, .5, .2, .1, .1),      # FP (nothing there)
    _det(0, .7, *T2),                 # TP
    _det(0, .6, .35, .35, .1, .1),    # FP
    _det(1, .95, *T4),                # TP, the highest-ranked detection of all
])


def test_ap_by_hand_three_ways():
    """Class 0 ranks: TP, FP, TP, FP over 3 truths ->
    precision 1, 1/2, 2/3, 1/2 and recall 1/3, 1/3, 2/3, 2/3.
    * area under the curve: 1/3 * 1 + (2/3 - 1/3) * 2/3 = 5/9
    * 11 points: recall >= 0, .1, .2, .3 -> 1 (4 points); .4, .5, .6 -> 2/3 (3 points) -> 6/11
    * 101 points: t/100 <= 1/3 for t = 0..33 -> 1 (34 points); t = 34..66 -> 2/3 (33 points)
      -> (34 + 22) / 101.
    Class 1: a single TP -> 1 (also with AUC: its recall is reached at the very first
    rank, the segment from recall 0 counts).  Class 2 has no truth -> 0."""
    expected = {0: 5 / 9, 11: 6 / 11, 101: 56 / 101}
    for points, ap0 in expected.items():
        r = evaluate_map([DETS], [TRUTH], 3, points=points)
        np.testing.assert_allclose(r.ap, [ap0, 1.0, 0.0], rtol=1e-12)
        assert r.map == pytest.approx((ap0 + 1) / 3, rel=1e-12)   # AlexeyAB divides by all classes
    r = evaluate_map([DETS], [TRUTH], 3)
    assert r.tp.tolist() == [2, 1, 0] and r.fp.tolist() == [2, 0, 0]
    assert r.truth_count.tolist() == [3, 1, 0]
    assert (r.detections_count, r.unique_truth_count) == (5, 4)
    assert r.avg_iou == pytest.approx(3 / 5)        # IoU 1 for 3 TPs, over TP + FP
    assert (r.precision, r.recall) == (pytest.approx(3 / 5), pytest.approx(3 / 4))
    # conf_thresh only moves the TP/FP counts, not the AP
    r2 = evaluate_map([DETS], [TRUTH], 3, conf_thresh=0.75)
    assert r2.tp.tolist() == [1, 1, 0] and r2.fp.tolist() == [1, 0, 0]
    np.testing.assert_allclose(r2.ap, r.ap)


def test_average_precision_direct():
    assert average_precision([1, .5, 2 / 3, .5], [1 / 3, 1 / 3, 2 / 3, 2 / 3], 0) == pytest.approx(5 / 9)
    assert average_precision([], [], 0) == 0.0
    # a curve with a dip: the precision envelope from the right is used
    p, r = [0, .5, 2 / 3, .75], [0, .25, .5, .75]
    # AUC: .25 * .75 + .25 * .75 + .25 * .75 (best precision at or after each recall step)
    assert average_precision(p, r, 0) == pytest.approx(.5625)
    # 11 points: recall >= 0 .. .7 -> .75 (8 points), .8 .. 1 -> 0
    assert average_precision(p, r, 11) == pytest.approx(8 * .75 / 11)
    with pytest.raises(ValueError):
        average_precision(p, r, 7)


def test_taken_truth_is_not_reassigned():
    """AlexeyAB matches a detection to its best-IoU truth only: A = (.3,.5,.2,.2),
    B = (.4,.5,.2,.2).  det1 = A exactly (TP).  det2 = (.345,.5,.2,.2) has IoU .633 with A
    and .569 with B: its truth is A, already taken -> FP (COCO would give it B).
    Ranks TP, FP over 2 truths: precision 1, 1/2, recall 1/2, 1/2 -> AP = 1/2."""
    truth = np.array([[0, .3, .5, .2, .2], [0, .4, .5, .2, .2]])
    dets = np.array([_det(0, .9, .3, .5, .2, .2), _det(0, .8, .345, .5, .2, .2)])
    r = evaluate_map([dets], [truth], 1)
    assert r.ap[0] == pytest.approx(0.5)
    assert r.tp.tolist() == [1] and r.fp.tolist() == [1]
    # a detection matching nothing above the IoU threshold is a false positive
    r = evaluate_map([dets], [truth], 1, iou_thresh=0.7)
    assert r.ap[0] == pytest.approx(0.5) and r.fp.tolist() == [1]


def test_duplicates_across_images_and_global_ranking():
    """Two images; the same truth detected twice (second = FP); ranking is global by
    probability: img0 TP .9, img1 TP .6, img0 duplicate .8 ->
    ranks TP(.9), FP(.8), TP(.6): precision 1, 1/2, 2/3, recall 1/2, 1/2, 1 ->
    AUC = 1/2 * 1 + 1/2 * 2/3 = 5/6."""
    t0, t1 = np.array([[0, .5, .5, .4, .4]]), np.array([[0, .3, .3, .2, .2]])
    d0 = np.array([_det(0, .9, .5, .5, .4, .4), _det(0, .8, .52, .5, .4, .4)])
    d1 = np.array([_det(0, .6, .3, .3, .2, .2)])
    r = evaluate_map([d0, d1], [t0, t1], 1)
    assert r.ap[0] == pytest.approx(5 / 6)
    assert r.tp.tolist() == [2] and r.fp.tolist() == [1]  # the duplicate above conf_thresh


def test_difficult_truths_remove_detections():
    """An unmatched detection on a 'difficult' truth is not counted: ranks FP(.9), TP(.8)
    give AP 1/2, without the FP (difficult) AP 1.  It still counts as FP at conf_thresh
    (AlexeyAB does the TP/FP tally after removing it)."""
    truth = np.array([[0, .3, .3, .2, .2]])
    dif = np.array([[0, .7, .7, .2, .2]])
    dets = np.array([_det(0, .9, .7, .7, .2, .2), _det(0, .8, .3, .3, .2, .2)])
    assert evaluate_map([dets], [truth], 1).ap[0] == pytest.approx(0.5)
    r = evaluate_map([dets], [truth], 1, difficult=[dif])
    assert r.ap[0] == pytest.approx(1.0) and r.detections_count == 1
    assert r.tp.tolist() == [1] and r.fp.tolist() == [1]


def test_report_text_as_alexeyab_prints_it():
    r = evaluate_map([DETS], [TRUTH], 3)
    text = format_map_report(r, ["cat", "dog", "cow"])
    assert "class_id = 0, name = cat, ap = 55.56%   \t (TP = 2, FP = 2) " in text
    assert "class_id = 1, name = dog, ap = 100.00%" in text
    assert " for conf_thresh = 0.25, precision = 0.60, recall = 0.75, F1-score = 0.67 " in text
    assert " for conf_thresh = 0.25, TP = 3, FP = 2, FN = 1, average IoU = 60.00 % " in text
    assert " IoU threshold = 50 %, used Area-Under-Curve for each unique Recall " in text
    assert f" mean average precision (mAP@0.50) = {(5 / 9 + 1) / 3:f}, or {(5 / 9 + 1) / 3 * 100:2.2f} % " in text
    r11 = evaluate_map([DETS], [TRUTH], 3, points=11)
    assert "used 11 Recall-points" in format_map_report(r11, ["cat", "dog", "cow"])


# ------------------------------------------------------------------ COCO
def _random_set(seed: int, separated: bool):
    """Images with truths and noisy detections (+ false positives)."""
    rng = np.random.default_rng(seed)
    sizes = [(100, 80), (64, 64), (200, 100), (120, 160)]
    dets, truths = [], []
    for k in range(len(sizes)):
        rows, drows = [], []
        slots = rng.permutation(9)[:3 + k % 2] if separated else range(4)
        for s in slots:
            cls = int(rng.integers(3))
            if separated:   # on a 3x3 grid, far apart: no contested matches
                cx, cy, w, h = (s % 3 + .5) / 3, (s // 3 + .5) / 3, rng.uniform(.1, .25), rng.uniform(.1, .25)
            else:
                cx, cy, w, h = rng.uniform(.2, .8), rng.uniform(.2, .8), rng.uniform(.05, .4), rng.uniform(.05, .4)
            rows.append([cls, cx, cy, w, h])
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, .01 if separated else .04, 4)
                drows.append([cls, rng.uniform(.05, .99), cx + j[0], cy + j[1], w * (1 + j[2]), h * (1 + j[3])])
        for _ in range(2):
            drows.append([int(rng.integers(3)), rng.uniform(.05, .99), rng.uniform(.1, .9),
                          rng.uniform(.1, .9), .05, .05])
        truths.append(np.array(rows))
        dets.append(np.array(drows).reshape(-1, 6))
    return dets, truths, sizes


def _pycocotools_direct(dets, truths, sizes, classes):
    """COCOeval run on json built here, independently of darknet_py.metrics."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images = [{"id": 100 + i, "width": w, "height": h} for i, (w, h) in enumerate(sizes)]
    anns, res = [], []
    for i, (t, d, (w, h)) in enumerate(zip(truths, dets, sizes)):
        for c, cx, cy, bw, bh in t:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": 10 * (int(c) + 1),
                         "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                         "area": bw * w * bh * h, "iscrowd": 0})
        for c, p, cx, cy, bw, bh in d:
            res.append({"image_id": 100 + i, "category_id": 10 * (int(c) + 1), "score": p,
                        "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": 10 * (c + 1)} for c in range(classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_stats_equal_pycocotools(seed):
    dets, truths, sizes = _random_set(seed, separated=False)
    ours = coco_evaluate(dets, truths, sizes, 3)
    ev = _pycocotools_direct(dets, truths, sizes, 3)
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")],
                               ev.stats[:6], rtol=1e-12, atol=1e-12)
    assert 0 < ours["AP50"] <= 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_101_point_map_equals_coco_ap50_without_contested_matches(seed):
    """With well separated truths AlexeyAB's and COCO's matching agree, and the
    101-point mAP is COCO's AP at IoU .5 (same recall points, same envelope)."""
    dets, truths, sizes = _random_set(seed, separated=True)
    ev = _pycocotools_direct(dets, truths, sizes, 3)
    prec = ev.eval["precision"][0, :, :, 0, 2]     # IoU .50, all recalls, classes, area all, 100 dets
    present = [c for c in range(3) if any((t[:, 0] == c).any() for t in truths)]
    coco_ap50_per_class = [float(np.mean(prec[:, c])) for c in present]
    ours = evaluate_map(dets, truths, 3, points=101)
    np.testing.assert_allclose(ours.ap[present], coco_ap50_per_class, rtol=1e-9)


def test_detection_rows_from_postprocess():
    from darknet_py.postprocess import Detections
    d = Detections(boxes=np.array([[.5, .5, .2, .4], [50, 20, 10, 10]], np.float32),
                   objectness=np.array([.9, .8], np.float32),
                   prob=np.array([[.7, 0, .2], [0, .6, 0]], np.float32),
                   sort_class=np.zeros(2, np.int64), relative=np.array([True, False]), classes=3)
    rows = detection_rows(d, 100, 40)
    np.testing.assert_allclose(rows, [[0, .7, .5, .5, .2, .4], [2, .2, .5, .5, .2, .4],
                                      [1, .6, .5, .5, .1, .25]], rtol=1e-6)


# ------------------------------------------------------------------ the command
def test_map_command_on_a_perfect_detector(tmp_path, monkeypatch, capsys):
    """`darknet-py map` plumbing (lists, label rule, relative boxes, sizes, report):
    with detections equal to the labels every AP is 1 and so is COCO's AP."""
    from darknet_py.detect import Detector
    from darknet_py.cli import main as cli_main
    from darknet_py.data import make_synthetic_dataset, parse_data_file, from_data_config
    from darknet_py.model import Darknet
    from darknet_py.postprocess import Detections

    data = make_synthetic_dataset(tmp_path / "syn", n_train=1, n_valid=4, size=64, seed=3)
    src = from_data_config(parse_data_file(data), "valid")
    by_pixels = {}
    from darknet_py.image import load_image
    for p, lab in zip(src.images, src.labels):
        by_pixels[load_image(p).tobytes()] = lab
    model = Darknet(REPO / "cfg" / "tiny-shapes.cfg")
    weights = tmp_path / "w.weights"
    model.save_weights(weights)

    def perfect(self, images):
        out = []
        for im in images:
            lab = by_pixels[im.tobytes()]
            prob = np.zeros((len(lab), 4), np.float32)
            prob[np.arange(len(lab)), lab[:, 0].astype(int)] = 0.9
            out.append(Detections(lab[:, 1:5].astype(np.float32), np.full(len(lab), .9, np.float32),
                                  prob, np.zeros(len(lab), np.int64), np.ones(len(lab), bool), 4))
        return out

    monkeypatch.setattr(Detector, "run", perfect)
    out_json = tmp_path / "map.json"
    rc = cli_main(["map", str(data), str(REPO / "cfg" / "tiny-shapes.cfg"), str(weights),
                   "--points", "101", "--json", str(out_json), "--workers", "1"])
    text = capsys.readouterr().out
    assert rc == 0
    present = sorted({int(c) for lab in src.labels for c in lab[:, 0]})
    for c in present:
        assert f"class_id = {c}, name = " in text and "ap = 100.00%" in text
    numbers = json.loads(out_json.read_text())
    assert numbers["images"] == 4 and numbers["coco"]["AP"] == pytest.approx(1.0)
    assert numbers["map"] == pytest.approx(len(present) / 4)  # absent classes count as 0
    # a bad .data is one line naming the file
    bad = tmp_path / "bad.data"
    bad.write_text(data.read_text().replace("classes = 4", "classes = 5").replace(
        "synthetic.names", str(data.parent / "synthetic.names")))
    assert cli_main(["map", str(bad), str(REPO / "cfg" / "tiny-shapes.cfg"), str(weights)]) == 1
    err = capsys.readouterr().err
    assert "darknet-py map: error:" in err and "4 names for classes=5" in err


def test_map_command_reads_a_converted_model(tmp_path, capsys):
    """`map DATA MODEL.pt` (cfg inside) gives the numbers of `map DATA CFG WEIGHTS`."""
    from darknet_py.cli import main as cli_main
    from darknet_py.data import make_synthetic_dataset
    import torch

    from darknet_py.model import Darknet

    data = make_synthetic_dataset(tmp_path / "syn", n_train=1, n_valid=3, size=64, seed=5)
    cfg = REPO / "cfg" / "tiny-shapes.cfg"
    torch.manual_seed(0)
    weights = tmp_path / "w.weights"
    Darknet(cfg).save_weights(weights)
    assert cli_main(["convert", "--cfg", str(cfg), str(weights), str(tmp_path / "m.pt")]) == 0

    def numbers(*model: str) -> dict:
        out = tmp_path / "map.json"
        assert cli_main(["map", str(data), *model, "--json", str(out), "--workers", "1",
                         "--thresh", "0.0001"]) == 0
        return json.loads(out.read_text())

    want = numbers(str(cfg), str(weights))
    assert want["images"] == 3
    assert numbers(str(tmp_path / "m.pt")) == want
    capsys.readouterr()
    with pytest.raises(SystemExit):  # DATA and three more files is a usage error
        cli_main(["map", str(data), str(cfg), str(weights), str(weights)])
    assert "expected DATA CFG WEIGHTS or DATA MODEL" in capsys.readouterr().err
