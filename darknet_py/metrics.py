"""Detection metrics: AlexeyAB's ``detector map`` and COCO AP through pycocotools.

Inputs, per image (same order in both lists):

* detections ``Array[D, 6]`` rows ``(class, prob, cx, cy, w, h)``: every
  (detection, class) pair with a probability > 0 after NMS, boxes relative to
  the image (the canonical post-NMS form of the conformance data);
* truths ``Array[N, 5]`` rows ``(class, cx, cy, w, h)`` (the label files).

:func:`evaluate_map` follows AlexeyAB's ``validate_detector_map``: each
detection is matched, within its image, to the truth of its class with the
highest IoU above ``iou_thresh`` (none: false positive); detections are ranked
by probability over the whole set; the first detection of a truth is a true
positive, later ones false positives; per class the precision/recall curve
over the ranks gives the AP with ``points``:

* ``0``: area under the curve, the precision at each recall being the best
  precision at that or any later rank (VOC 2010-2012, ImageNet; AlexeyAB's default);
* ``11``: mean of the best precision at recall >= 0, 0.1, ... 1 (VOC 2007);
* ``101``: the same at recall >= 0, 0.01, ... 1 (COCO).

mAP is the mean over all classes, including classes without truths (AP 0), as
AlexeyAB divides by ``classes``.  Ranking uses a stable sort where darknet's
``qsort`` leaves ties in an unspecified order.

:func:`coco_evaluate` gives COCO's AP, AP50, AP75, APs/m/l (and ARs) for the
same detections, through pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import DataError

POINTS = (0, 11, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """darknet's ``box_iou`` of one box ``(cx, cy, w, h)`` against ``Array[N, 4]``."""
    def overlap(x1, w1, x2, w2):
        return np.minimum(x1 + w1 / 2, x2 + w2 / 2) - np.maximum(x1 - w1 / 2, x2 - w2 / 2)
    iw = overlap(a[0], a[2], b[:, 0], b[:, 2])
    ih = overlap(a[1], a[3], b[:, 1], b[:, 3])
    inter = np.where((iw < 0) | (ih < 0), 0.0, iw * ih)
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def average_precision(precision: Sequence[float], recall: Sequence[float], points: int = 0) -> float:
    """AP of one class from its precision/recall after each of its detections
    (in rank order), AlexeyAB's way (see the module doc for ``points``)."""
    if points not in POINTS:
        raise ValueError(f"points must be one of {POINTS}, got {points}")
    p = np.asarray(precision, np.float64)
    r = np.asarray(recall, np.float64)
    if p.size == 0:
        return 0.0
    if points == 0:
        ap = 0.0
        last_r, last_p = float(r[-1]), float(p[-1])
        for k in range(len(r) - 2, -1, -1):
            ap += (last_r - r[k]) * max(last_p, p[k])  # the best precision from rank k on
            last_r, last_p = float(r[k]), max(last_p, float(p[k]))
        return ap + last_r * last_p  # from recall 0 to the first rank's recall
    total = 0.0
    for t in range(points):
        at = t * 1.0 / (points - 1)
        sel = p[r >= at]
        total += float(sel.max()) if sel.size and sel.max() > 0 else 0.0
    return total / points


@dataclass
class MapResult:
    """What AlexeyAB's ``detector map`` reports."""

    ap: np.ndarray                 # Array[classes] per-class AP
    tp: np.ndarray                 # Array[classes] TP with prob > conf_thresh
    fp: np.ndarray                 # Array[classes] FP with prob > conf_thresh
    truth_count: np.ndarray        # Array[classes] truths per class
    detections_count: int
    unique_truth_count: int
    avg_iou: float                 # mean IoU of the TPs over TP+FP at conf_thresh
    iou_thresh: float
    points: int
    conf_thresh: float
    curves: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def map(self) -> float:
        return float(self.ap.mean()) if self.ap.size else 0.0

    @property
    def precision(self) -> float:
        tp, fp = int(self.tp.sum()), int(self.fp.sum())
        return tp / (tp + fp) if tp + fp else math.nan

    @property
    def recall(self) -> float:
        tp = int(self.tp.sum())
        return tp / self.unique_truth_count if self.unique_truth_count else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else math.nan


@dataclass
class _Record:
    prob: float
    cls: int
    truth_index: int  # global truth index, -1: no truth matched


def evaluate_map(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], classes: int, *,
                 iou_thresh: float = 0.5, points: int = 0, conf_thresh: float = 0.25,
                 difficult: Sequence[np.ndarray] | None = None) -> MapResult:
    """Per-class AP and mAP as AlexeyAB's ``validate_detector_map`` computes them.

    ``difficult`` (optional, per image ``Array[N, 5]``): an unmatched detection
    overlapping a difficult truth of its class is not counted at all.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection arrays for {len(truths)} images")
    if points not in POINTS:
        raise ValueError(f"points must be one of {POINTS}, got {points}")
    truth_count = np.zeros(classes, np.int64)
    tp_t = np.zeros(classes, np.int64)
    fp_t = np.zeros(classes, np.int64)
    iou_sum = 0.0
    records: list[_Record] = []
    offset = 0
    for img, (dets, truth) in enumerate(zip(detections, truths)):
        truth = np.asarray(truth, np.float64).reshape(-1, 5)
        dets = np.asarray(dets, np.float64).reshape(-1, 6)
        t_cls = truth[:, 0].astype(np.int64)
        if np.any((t_cls < 0) | (t_cls >= classes)):
            raise DataError(f"image {img}: a truth class is outside 0..{classes - 1}")
        np.add.at(truth_count, t_cls, 1)
        dif = None if difficult is None else np.asarray(difficult[img], np.float64).reshape(-1, 5)
        checkpoint = len(records)
        for row in dets:
            cls, prob = int(row[0]), float(row[1])
            if prob <= 0:
                continue
            if not 0 <= cls < classes:
                raise DataError(f"image {img}: a detection has class {cls}, outside 0..{classes - 1}")
            ious = box_iou(row[2:6], truth[:, 1:5]) if len(truth) else np.zeros(0)
            cand = np.flatnonzero((ious > iou_thresh) & (t_cls == cls))
            truth_index, best = -1, 0.0
            if cand.size:
                j = cand[np.argmax(ious[cand])]  # the first of equal maxima, as darknet's '>'
                truth_index, best = offset + int(j), float(ious[j])
            removed = False
            if truth_index < 0 and dif is not None and len(dif):
                d_iou = box_iou(row[2:6], dif[:, 1:5])
                removed = bool(np.any((d_iou > iou_thresh) & (dif[:, 0].astype(np.int64) == cls)))
            if not removed:
                records.append(_Record(prob, cls, truth_index))
            if prob > conf_thresh:
                earlier = records[checkpoint:len(records) - (0 if removed else 1)]
                found = any(r.truth_index == truth_index for r in earlier)
                if truth_index > -1 and not found:
                    iou_sum += best
                    tp_t[cls] += 1
                else:
                    fp_t[cls] += 1
        offset += len(truth)
    n_thresh = int(tp_t.sum() + fp_t.sum())
    order = sorted(range(len(records)), key=lambda k: -records[k].prob)  # stable
    taken = np.zeros(offset, bool)
    tp_c = np.zeros(classes, np.int64)
    fp_c = np.zeros(classes, np.int64)
    prec: list[list[float]] = [[] for _ in range(classes)]
    rec: list[list[float]] = [[] for _ in range(classes)]
    for k in order:
        r = records[k]
        if r.truth_index >= 0 and not taken[r.truth_index]:
            taken[r.truth_index] = True
            tp_c[r.cls] += 1
        else:
            fp_c[r.cls] += 1
        tp, fp, n = int(tp_c[r.cls]), int(fp_c[r.cls]), int(truth_count[r.cls])
        prec[r.cls].append(tp / (tp + fp))
        rec[r.cls].append(tp / n if n else 0.0)
    curves = [(np.asarray(p), np.asarray(r)) for p, r in zip(prec, rec)]
    ap = np.array([average_precision(p, r, points) for p, r in curves], np.float64)
    return MapResult(ap, tp_t, fp_t, truth_count, len(records), offset,
                     iou_sum / n_thresh if n_thresh else 0.0, iou_thresh, points, conf_thresh,
                     curves)


def format_map_report(result: MapResult, names: Sequence[str]) -> str:
    """The text AlexeyAB's ``detector map`` prints for these numbers."""
    lines = [f" detections_count = {result.detections_count}, "
             f"unique_truth_count = {result.unique_truth_count}  "]
    for i, ap in enumerate(result.ap):
        name = names[i] if i < len(names) else str(i)
        lines.append(f"class_id = {i}, name = {name}, ap = {ap * 100:2.2f}%   \t "
                     f"(TP = {int(result.tp[i])}, FP = {int(result.fp[i])}) ")
    tp, fp = int(result.tp.sum()), int(result.fp.sum())
    lines.append("")
    lines.append(f" for conf_thresh = {result.conf_thresh:1.2f}, precision = {result.precision:1.2f}, "
                 f"recall = {result.recall:1.2f}, F1-score = {result.f1:1.2f} ")
    lines.append(f" for conf_thresh = {result.conf_thresh:0.2f}, TP = {tp}, FP = {fp}, "
                 f"FN = {result.unique_truth_count - tp}, average IoU = {result.avg_iou * 100:2.2f} % ")
    lines.append("")
    how = (f"used {result.points} Recall-points " if result.points
           else "used Area-Under-Curve for each unique Recall ")
    lines.append(f" IoU threshold = {result.iou_thresh * 100:2.0f} %, {how}")
    lines.append(f" mean average precision (mAP@{result.iou_thresh:0.2f}) = {result.map:f}, "
                 f"or {result.map * 100:2.2f} % ")
    return "\n".join(lines)


# ------------------------------------------------------------------ COCO
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray],
            sizes: Sequence[tuple[int, int]], classes: int) -> tuple[dict, list[dict]]:
    """(ground-truth dataset dict, detection result list) in COCO's json form:
    image ids 1.., category ids = class + 1, boxes ``[x, y, w, h]`` in pixels."""
    images, anns, results = [], [], []
    for k, (dets, truth, (iw, ih)) in enumerate(zip(detections, truths, sizes)):
        img_id = k + 1
        images.append({"id": img_id, "width": int(iw), "height": int(ih)})
        for t in np.asarray(truth, np.float64).reshape(-1, 5):
            w, h = t[3] * iw, t[4] * ih
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(t[0]) + 1,
                         "bbox": [(t[1] - t[3] / 2) * iw, (t[2] - t[4] / 2) * ih, w, h],
                         "area": w * h, "iscrowd": 0})
        for d in np.asarray(dets, np.float64).reshape(-1, 6):
            if d[1] <= 0:
                continue
            results.append({"image_id": img_id, "category_id": int(d[0]) + 1, "score": float(d[1]),
                            "bbox": [(d[2] - d[4] / 2) * iw, (d[3] - d[5] / 2) * ih,
                                     d[4] * iw, d[5] * ih]})
    cats = [{"id": c + 1, "name": str(c)} for c in range(classes)]
    return {"images": images, "annotations": anns, "categories": cats}, results


def coco_evaluate(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                  sizes: Sequence[tuple[int, int]], classes: int) -> dict[str, float]:
    """COCO's AP (IoU .50:.95), AP50, AP75, APs/m/l and ARs for the detections,
    computed by pycocotools' COCOeval (bbox).  ``sizes``: (w, h) of each image in
    pixels (COCO's area ranges are in pixels).  -1 where COCO has no truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt_dict, results = to_coco(detections, truths, sizes, classes)
    if not results or not gt_dict["annotations"]:
        return {k: (0.0 if gt_dict["annotations"] else -1.0) for k in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_STATS, ev.stats)}


def format_coco_report(stats: dict[str, float]) -> str:
    return (f" COCO: AP = {stats['AP']:.4f}, AP50 = {stats['AP50']:.4f}, AP75 = {stats['AP75']:.4f}, "
            f"APs = {stats['APs']:.4f}, APm = {stats['APm']:.4f}, APl = {stats['APl']:.4f}")


# ------------------------------------------------------------------ a model over a list
@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_model`."""

    result: MapResult
    coco: dict[str, float] | None
    images: int                    # images evaluated
    failed: list[str]              # images that could not be loaded (skipped)
    seconds: float


def detection_rows(dets, width: int, height: int) -> np.ndarray:
    """``Array[D, 6]`` (class, prob, cx, cy, w, h) relative to the image from a
    post-NMS :class:`~darknet_py.postprocess.Detections`: one row per
    (detection, class) with prob > 0, in darknet's order (detections, then classes)."""
    idx, cls = np.nonzero(dets.prob > 0)
    if idx.size == 0:
        return np.zeros((0, 6), np.float64)
    boxes = dets.boxes[idx].astype(np.float64)
    pixels = ~dets.relative[idx].astype(bool)
    boxes[pixels] /= np.array([width, height, width, height], np.float64)
    return np.column_stack([cls.astype(np.float64), dets.prob[idx, cls].astype(np.float64), boxes])


def evaluate_model(model, source, *, thresh: float = 0.005, iou_thresh: float = 0.5,
                   points: int = 0, conf_thresh: float = 0.25, difficult=None, coco: bool = True,
                   device=None, batch_size: int = 8, workers: int = 2,
                   progress: bool = False) -> Evaluation:
    """Run ``model`` over ``source`` (:class:`~darknet_py.data.LabeledImages`)
    as AlexeyAB's ``detector map`` does (detection threshold ``thresh`` 0.005,
    NMS 0.45 of the cfg's kind, letterbox when the cfg says so, BN folded) and
    compute :func:`evaluate_map` and, with ``coco``, :func:`coco_evaluate`.
    ``difficult``: optional :class:`~darknet_py.data.LabeledImages` of the
    same images.  Images that cannot be loaded are skipped and listed.
    ``model`` is not modified (detection runs on a folded copy).
    """
    import collections
    import time
    from concurrent.futures import ThreadPoolExecutor

    from .detect import Detector
    from .image import load_image

    t0 = time.perf_counter()
    detector = Detector(model, thresh=thresh, hier_thresh=0.0, nms=0.45, device=device,
                        batch_size=batch_size)
    classes = detector.post.heads[-1].classes

    def load(i: int):
        try:
            return load_image(source.images[i])
        except DataError:
            return None

    all_dets, truths, dif, sizes, failed = [], [], [], [], []
    indices = list(range(len(source)))
    chunks = [indices[k:k + batch_size] for k in range(0, len(indices), batch_size)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(indices), desc="map", unit="img")
        except ImportError:
            bar = None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        # a few chunks decoded ahead, not the whole list held in memory
        ahead = collections.deque(pool.submit(lambda ch: [(i, load(i)) for i in ch], ch)
                                  for ch in chunks[:max(1, workers) + 1])
        next_chunk = len(ahead)
        while ahead:
            chunk = ahead.popleft().result()
            if next_chunk < len(chunks):
                ahead.append(pool.submit(lambda ch: [(i, load(i)) for i in ch], chunks[next_chunk]))
                next_chunk += 1
            ok = [(i, im) for i, im in chunk if im is not None]
            failed += [str(source.images[i]) for i, im in chunk if im is None]
            if ok:
                for (i, im), d in zip(ok, detector.run([im for _, im in ok])):
                    h, w = im.shape[:2]
                    all_dets.append(detection_rows(d, w, h))
                    truths.append(source.labels[i])
                    dif.append(difficult.labels[i] if difficult is not None else np.zeros((0, 5)))
                    sizes.append((w, h))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    result = evaluate_map(all_dets, truths, classes, iou_thresh=iou_thresh, points=points,
                          conf_thresh=conf_thresh, difficult=dif if difficult is not None else None)
    stats = coco_evaluate(all_dets, truths, sizes, classes) if coco else None
    return Evaluation(result, stats, len(all_dets), failed, time.perf_counter() - t0)
