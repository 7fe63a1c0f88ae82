"""Truth boxes through darknet's augmentation: shuffle, correct, clip, drop.

Boxes are ``Array[N, 5]`` float32 rows ``(class, cx, cy, w, h)`` relative to the
image.  The arithmetic is done in float32 in darknet's order (data.c:
``read_boxes``, ``randomize_boxes``, ``correct_boxes``, ``fill_truth_detection``,
``blend_truth_mosaic``).  A box darknet marks as invalid (its 999999 marker)
comes back with NaN coordinates and is always dropped by the fill functions.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

F32 = np.float32

#: pjreddie drops boxes thinner than this (relative), after clipping
PJREDDIE_MIN_SIZE = 0.001


def randomize_boxes(rng: np.random.Generator, boxes: np.ndarray) -> np.ndarray:
    """Darknet's shuffle: for every i, swap box i with a uniformly drawn box."""
    out = boxes.copy()
    n = len(out)
    for i in range(n):
        j = int(rng.integers(n))
        out[[i, j]] = out[[j, i]]
    return out


def correct_boxes(boxes: np.ndarray, dx: float, dy: float, sx: float, sy: float, flip: bool,
                  dialect: str) -> np.ndarray:
    """Darknet's ``correct_boxes``: map the box edges by ``edge*s - d`` per axis,
    mirror when ``flip``, clip the edges to [0, 1], recompute centre and size.

    ``Array[N, 5]`` -> ``Array[N, 5]``.  Boxes with x == y == 0 (both dialects)
    and, in AlexeyAB, boxes lying wholly outside the original image are marked
    invalid (NaN).
    """
    b = boxes.astype(F32, copy=True)
    x, y, w, h = b[:, 1], b[:, 2], b[:, 3], b[:, 4]
    half_w, half_h = w / F32(2), h / F32(2)
    invalid = (x == 0) & (y == 0)
    if dialect == "alexeyab":
        invalid |= (x + half_w < 0) | (y + half_h < 0) | (x - half_w > 1) | (y - half_h > 1)
    sx, sy, dx, dy = F32(sx), F32(sy), F32(dx), F32(dy)
    left = (x - half_w) * sx - dx
    right = (x + half_w) * sx - dx
    top = (y - half_h) * sy - dy
    bottom = (y + half_h) * sy - dy
    if flip:
        left, right = F32(1) - right, F32(1) - left
    left, right = np.clip(left, 0, 1), np.clip(right, 0, 1)
    top, bottom = np.clip(top, 0, 1), np.clip(bottom, 0, 1)
    b[:, 1] = (left + right) / F32(2)
    b[:, 2] = (top + bottom) / F32(2)
    b[:, 3] = np.clip(right - left, 0, 1)
    b[:, 4] = np.clip(bottom - top, 0, 1)
    b[invalid, 1:] = np.nan
    return b


def fill_truth_pjreddie(boxes: np.ndarray, max_boxes: int, net_w: int, net_h: int) -> np.ndarray:
    """pjreddie's ``fill_truth_detection`` after ``correct_boxes``.

    At most ``max_boxes`` boxes are considered; a box with w or h < 0.001 is
    skipped but leaves an empty slot, and pjreddie's [yolo]/[region] layers stop
    reading the truth list at the first empty slot, so every box after it is
    lost as well.  That is what darknet trains on, so it is what we return.
    """
    out = []
    for row in boxes[:max_boxes]:
        if np.isnan(row[1]):
            continue  # darknet would write its 999999 marker (undefined behaviour later)
        if row[3] < PJREDDIE_MIN_SIZE or row[4] < PJREDDIE_MIN_SIZE:
            break
        out.append(row)
    return np.asarray(out, F32).reshape(-1, 5)


def fill_truth_alexeyab(boxes: np.ndarray, max_boxes: int, net_w: int, net_h: int) -> np.ndarray:
    """AlexeyAB's ``fill_truth_detection`` after ``correct_boxes``: of the first
    ``max_boxes`` boxes keep those at least one network pixel wide and high,
    valid, with the centre in (0, 1]; the list is compacted."""
    lowest_w, lowest_h = F32(1) / F32(net_w), F32(1) / F32(net_h)
    out = []
    for row in boxes[:max_boxes]:
        x, y, w, h = row[1], row[2], row[3], row[4]
        if np.isnan(x) or w < lowest_w or h < lowest_h:
            continue
        if x <= 0 or x > 1 or y <= 0 or y > 1:
            continue
        r = row.copy()
        r[3], r[4] = min(w, F32(1)), min(h, F32(1))
        out.append(r)
    return np.asarray(out, F32).reshape(-1, 5)


#: dialect -> (boxes after correct_boxes, max_boxes, net_w, net_h) -> kept boxes
FILL_TRUTH: dict[str, Callable[[np.ndarray, int, int, int], np.ndarray]] = {
    "pjreddie": fill_truth_pjreddie,
    "alexeyab": fill_truth_alexeyab,
}


def _c_int(v: float) -> int:
    """C's float -> int conversion (truncation toward zero)."""
    return int(v)


def blend_truth_mosaic(kept: np.ndarray, part: np.ndarray, max_boxes: int, w: int, h: int,
                       cut_x: int, cut_y: int, quadrant: int, shifts: tuple[int, int, int, int],
                       mosaic_bound: bool) -> np.ndarray:
    """AlexeyAB's ``blend_truth_mosaic``: move the boxes of one mosaic part
    (``part``, relative to its own w x h image) into the mosaic and append the
    survivors to ``kept``.

    ``quadrant`` 0..3 = top-left, top-right, bottom-left, bottom-right;
    ``shifts`` = (left, right, top, bottom) shifts of the part.  Boxes are
    clipped to the image (or, with ``mosaic_bound``, to their quadrant) in whole
    pixels and dropped unless they end up inside the image, centre in (0, 1),
    size in (1/w, 1).  Only the first ``max_boxes - len(kept)`` boxes of the
    part are considered.
    """
    left_shift, right_shift, top_shift, bot_shift = shifts
    fw, fh = F32(w), F32(h)
    lowest_w, lowest_h = F32(1) / fw, F32(1) / fh
    out = [r for r in kept]
    for row in part[: max(0, max_boxes - len(kept))]:
        xb, yb, wb, hb = (F32(v) for v in row[1:5])
        if quadrant in (0, 2):
            xb = xb - F32(w - cut_x - right_shift) / fw
        else:
            xb = xb + F32(cut_x - left_shift) / fw
        if quadrant in (0, 1):
            yb = yb - F32(h - cut_y - bot_shift) / fh
        else:
            yb = yb + F32(cut_y - top_shift) / fh
        left = _c_int((xb - wb / F32(2)) * fw)
        right = _c_int((xb + wb / F32(2)) * fw)
        top = _c_int((yb - hb / F32(2)) * fh)
        bot = _c_int((yb + hb / F32(2)) * fh)
        if mosaic_bound:
            lb, rb = (0, cut_x) if quadrant in (0, 2) else (cut_x, w)
            tb, bb = (0, cut_y) if quadrant in (0, 1) else (cut_y, h)
            left, right, top, bot = max(left, lb), min(right, rb), max(top, tb), min(bot, bb)
            xb = F32(right + left) / F32(2) / fw
            wb = F32(right - left) / fw
            yb = F32(bot + top) / F32(2) / fh
            hb = F32(bot - top) / fh
        else:
            if left < 0:
                diff = F32(left) / fw
                xb, wb = xb - diff / F32(2), wb + diff
            if right > w:
                diff = F32(right - w) / fw
                xb, wb = xb - diff / F32(2), wb - diff
            if top < 0:
                diff = F32(top) / fh
                yb, hb = yb - diff / F32(2), hb + diff
            if bot > h:
                diff = F32(bot - h) / fh
                yb, hb = yb - diff / F32(2), hb - diff
            left = _c_int((xb - wb / F32(2)) * fw)
            right = _c_int((xb + wb / F32(2)) * fw)
            top = _c_int((yb - hb / F32(2)) * fh)
            bot = _c_int((yb + hb / F32(2)) * fh)
        if (left >= 0 and right <= w and top >= 0 and bot <= h and 0 < wb < 1 and 0 < hb < 1
                and 0 < xb < 1 and 0 < yb < 1 and wb > lowest_w and hb > lowest_h):
            out.append(np.array([row[0], xb, yb, wb, hb], F32))
    return np.asarray(out, F32).reshape(-1, 5)
