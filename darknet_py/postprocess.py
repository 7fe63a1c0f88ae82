"""From head outputs to darknet's detections: decode, map back to the image, NMS.

This reproduces, step by step and in darknet's float32/float64 arithmetic,
what ``get_network_boxes`` and ``do_nms_sort`` / ``diounms_sort`` do:

* each head's ``decode(out, ctx)`` (:mod:`darknet_py.layers.heads`) turns one
  image's head output (darknet's ``l.output``) into :class:`Detections` in
  darknet's array order, with the helpers of this module (box correction,
  class probabilities);
* :data:`CORRECTIONS` maps a dialect to its ``correct_yolo_boxes`` (the box
  back to the original image, for a letterboxed or a plainly resized input);
* :func:`nms_sort` is ``do_nms_sort`` (per class, stable sort by probability,
  strict ``> thresh`` suppression; probabilities are zeroed, nothing removed)
  and AlexeyAB's ``diounms_sort`` for ``nms_kind`` greedynms / diounms /
  cornersnms (:data:`NMS_OVERLAPS`).

``thresh`` follows darknet: a [yolo] box is kept when objectness > thresh and
each class probability ``objectness * p`` is kept when > thresh (else 0);
[region] and [detection] always emit every box.  ``hier_thresh`` is only read
by pjreddie's [region] with ``tree=`` (yolo9000): each box gets the one class
``hierarchy_top_prediction`` walks down to (:mod:`darknet_py.tree`);
AlexeyAB's tree [region] ignores it (it keeps the last class, by index, whose
path probability is > .5).  darknet's ``map`` argument of ``get_network_boxes``
(only its validation passes one, from the .data file) is not supported.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import boxes as B
from .image import letterbox_size

F32 = np.float32
F64 = np.float64


@dataclass
class Detections:
    """darknet's ``detection`` array for one image, in darknet's order.

    ``boxes``: ``float32 [N, 4]`` centre (x, y, w, h), relative to the image
    when ``relative[i]`` (every head but yolov1's [detection], whose boxes
    darknet gives in pixels); ``objectness``: ``[N]``; ``prob``:
    ``[N, classes]`` (0 where not above thresh or suppressed); ``sort_class``:
    ``[N]`` as darknet leaves it (``classes - 1`` after NMS).
    """

    boxes: np.ndarray
    objectness: np.ndarray
    prob: np.ndarray
    sort_class: np.ndarray
    relative: np.ndarray
    classes: int = 0

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty(classes: int) -> "Detections":
        return Detections(np.zeros((0, 4), F32), np.zeros(0, F32), np.zeros((0, classes), F32),
                          np.zeros(0, np.int64), np.zeros(0, bool), classes)

    @staticmethod
    def concat(parts: Sequence["Detections"], classes: int) -> "Detections":
        if not parts:
            return Detections.empty(classes)
        return Detections(np.concatenate([p.boxes for p in parts]),
                          np.concatenate([p.objectness for p in parts]),
                          np.concatenate([p.prob for p in parts]),
                          np.concatenate([p.sort_class for p in parts]),
                          np.concatenate([p.relative for p in parts]), classes)

    def take(self, order: np.ndarray) -> "Detections":
        return Detections(self.boxes[order], self.objectness[order], self.prob[order],
                          self.sort_class[order], self.relative[order], self.classes)

    def rows(self) -> np.ndarray:
        """``float32 [N, 6 + classes]``: darknet's ``[x, y, w, h, objectness,
        sort_class, prob...]`` rows (the conformance ``dets_*`` layout)."""
        return np.concatenate([self.boxes, self.objectness[:, None],
                               self.sort_class[:, None].astype(F32), self.prob], axis=1)

    def pairs(self, thresh: float, dialect: str = "pjreddie",
              names: Sequence[str] | None = None) -> list[tuple[int, int, float]]:
        """``(det index, class, prob)`` for every prob > thresh, in the order
        darknet prints them.

        pjreddie (``draw_detections``): detections in array order, classes
        ascending.  AlexeyAB (``draw_detections_v3``): a detection is kept when
        a class whose name does not start with ``dont_show`` is above thresh;
        its best such class (the first maximum) comes first, then its other
        classes above thresh ascending; detections sorted by their left edge
        ``x - w/2``.
        """
        t = F32(thresh)
        above = self.prob > t
        if dialect != "alexeyab":
            idx, cls = np.nonzero(above)
            return [(int(i), int(c), float(self.prob[i, c])) for i, c in zip(idx, cls)]
        shown = np.ones(self.classes, bool)
        if names is not None:
            shown[:len(names)] = [not str(n).startswith("dont_show") for n in names[:self.classes]]
        masked = np.where(above & shown, self.prob, -np.inf)
        keep = np.nonzero(np.isfinite(masked).any(axis=1))[0]
        left = self.boxes[keep, 0] - self.boxes[keep, 2] / F32(2)
        out = []
        for i in keep[np.argsort(left, kind="stable")]:
            best = int(np.argmax(masked[i]))
            out.append((int(i), best, float(self.prob[i, best])))
            out.extend((int(i), int(c), float(self.prob[i, c])) for c in np.nonzero(above[i])[0] if c != best)
        return out

    def corners(self, index: int, width: int, height: int, clip: bool = True) -> tuple[float, ...]:
        """``(left, top, right, bottom)`` of detection ``index`` in pixels of a
        ``width x height`` image (darknet's ``draw_detections`` arithmetic,
        without its int truncation; clipped to ``[0, width-1] x [0, height-1]``)."""
        x, y, w, h = (float(v) for v in self.boxes[index])
        sx, sy = (width, height) if self.relative[index] else (1.0, 1.0)
        left, right = (x - w / 2.0) * sx, (x + w / 2.0) * sx
        top, bot = (y - h / 2.0) * sy, (y + h / 2.0) * sy
        if clip:
            left, top = max(left, 0.0), max(top, 0.0)
            right, bot = min(right, width - 1.0), min(bot, height - 1.0)
        return left, top, right, bot


@dataclass(frozen=True)
class DecodeContext:
    """What ``get_network_boxes`` is called with: the original image size, the
    network size, thresholds, whether the input was letterboxed, the dialect."""

    image_w: int
    image_h: int
    net_w: int
    net_h: int
    thresh: float = 0.25
    hier_thresh: float = 0.5
    letter: bool = True
    dialect: str = "pjreddie"
    relative: bool = True


# ------------------------------------------------- helpers (the heads' decode uses them)
def as_f32(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def logistic_f32(x: np.ndarray) -> np.ndarray:
    """``1.f / (1.f + expf(-x))`` (AlexeyAB's float logistic)."""
    with np.errstate(over="ignore"):
        return (F32(1) / (F32(1) + np.exp(-x.astype(F32)))).astype(F32)


def anchors64(anchors) -> np.ndarray:
    """``[n, 2]`` anchors as darknet holds them (float32), widened to double."""
    return np.asarray(anchors, dtype=F32).reshape(-1, 2).astype(F64)


def grid_cells(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) float32 of every location ``i = row * w + col``."""
    loc = np.arange(h * w)
    return (loc % w).astype(F32), (loc // w).astype(F32)


def class_probs(obj: np.ndarray, p: np.ndarray, thresh: np.float32) -> np.ndarray:
    """``prob = obj * p`` in float; kept where > thresh, else 0."""
    prob = (obj[:, None] * p).astype(F32)
    return np.where(prob > thresh, prob, F32(0)).astype(F32)


# ------------------------------------------------------------ box correction
def _new_size(ctx: DecodeContext) -> tuple[int, int]:
    if ctx.letter:
        return letterbox_size(ctx.image_w, ctx.image_h, ctx.net_w, ctx.net_h)
    return ctx.net_w, ctx.net_h


def correct_boxes_pjreddie(b: np.ndarray, ctx: DecodeContext) -> np.ndarray:
    """pjreddie ``correct_yolo_boxes`` / ``correct_region_boxes`` (and AlexeyAB's
    Gaussian one): offsets in double, ``w *= (float)netw / new_w``."""
    new_w, new_h = _new_size(ctx)
    nw, nh = ctx.net_w, ctx.net_h
    out = np.empty_like(b)
    out[:, 0] = ((b[:, 0].astype(F64) - (nw - new_w) / 2.0 / nw) / F64(F32(new_w) / F32(nw))).astype(F32)
    out[:, 1] = ((b[:, 1].astype(F64) - (nh - new_h) / 2.0 / nh) / F64(F32(new_h) / F32(nh))).astype(F32)
    out[:, 2] = b[:, 2] * (F32(nw) / F32(new_w))
    out[:, 3] = b[:, 3] * (F32(nh) / F32(new_h))
    return _to_pixels(out, ctx)


def correct_boxes_alexeyab(b: np.ndarray, ctx: DecodeContext) -> np.ndarray:
    """AlexeyAB ``correct_yolo_boxes``: float ratios, ``w *= 1 / ratiow``."""
    new_w, new_h = _new_size(ctx)
    nw, nh = ctx.net_w, ctx.net_h
    ratiow, ratioh = F32(new_w) / F32(nw), F32(new_h) / F32(nh)
    out = np.empty_like(b)
    out[:, 0] = ((b[:, 0].astype(F64) - F64(F32(nw - new_w)) / 2.0 / nw) / F64(ratiow)).astype(F32)
    out[:, 1] = ((b[:, 1].astype(F64) - F64(F32(nh - new_h)) / 2.0 / nh) / F64(ratioh)).astype(F32)
    out[:, 2] = b[:, 2] * (F32(1) / ratiow)
    out[:, 3] = b[:, 3] * (F32(1) / ratioh)
    return _to_pixels(out, ctx)


def _to_pixels(b: np.ndarray, ctx: DecodeContext) -> np.ndarray:
    if not ctx.relative:
        b = b * np.array([ctx.image_w, ctx.image_h, ctx.image_w, ctx.image_h], F32)
    return b.astype(F32)


#: dialect -> correct_yolo_boxes
CORRECTIONS: dict[str, Callable[[np.ndarray, DecodeContext], np.ndarray]] = {
    "pjreddie": correct_boxes_pjreddie,
    "alexeyab": correct_boxes_alexeyab,
}


def get_network_boxes(heads: Sequence, outputs: Sequence[Tensor], ctx: DecodeContext,
                      batch_index: int = 0) -> Detections:
    """darknet's ``get_network_boxes`` for image ``batch_index``: every head's
    detections, in layer order.  ``outputs[k]``: head ``k``'s ``Tensor[N, C, H, W]``
    (``[N, outputs]`` for [detection])."""
    classes = 0
    parts = []
    for head, out in zip(heads, outputs):
        parts.append(head.decode(out[batch_index], ctx))
        classes = classes or head.classes
    return Detections.concat(parts, classes)


# ----------------------------------------------------------------------- NMS
#: nms_kind -> overlap(a, b) compared with ``> thresh`` (beta only for diounms)
NMS_OVERLAPS: dict[str, Callable[[Tensor, Tensor, float, str], Tensor]] = {
    "default": lambda a, b, beta, dialect: B.box_iou_cxcywh(a, b, dialect),
    "cornersnms": lambda a, b, beta, dialect: B.box_iou_cxcywh(a, b, "alexeyab"),
    "greedynms": lambda a, b, beta, dialect: B.box_diou_cxcywh(a, b),
    "diounms": lambda a, b, beta, dialect: B.box_diounms_cxcywh(a, b, beta),
}


def _move_empty_to_end(objectness: np.ndarray) -> tuple[np.ndarray, int]:
    """darknet's in-place swap loop sending objectness == 0 detections to the end."""
    order = np.arange(len(objectness))
    k = len(order) - 1
    i = 0
    while i <= k:
        if objectness[order[i]] == 0:
            order[i], order[k] = order[k], order[i]
            k -= 1
        else:
            i += 1
    return order, k + 1


def nms_sort(dets: Detections, thresh: float, kind: str = "default", beta: float = 0.6,
             dialect: str = "pjreddie") -> Detections:
    """``do_nms_sort`` (``kind="default"``) or AlexeyAB's ``diounms_sort``:
    returns the detections in darknet's final order with suppressed
    probabilities set to 0.  ``dialect`` selects darknet's ``box_iou``."""
    if kind not in NMS_OVERLAPS:
        raise ValueError(f"unknown nms_kind {kind!r}; expected one of {', '.join(NMS_OVERLAPS)}")
    order, total = _move_empty_to_end(dets.objectness)
    out = dets.take(order)
    if total == 0 or dets.classes == 0:
        return out
    prob = out.prob.copy()
    bx = torch.from_numpy(out.boxes[:total])
    overlap = NMS_OVERLAPS[kind](bx[:, None, :], bx[None, :, :], beta, dialect).numpy()
    over = overlap > F32(thresh)  # over[a, b]: a suppresses b (NaN never does)
    perm = np.arange(total)
    for k in range(dets.classes):
        pk = prob[perm, k]
        perm = perm[np.argsort(-pk, kind="stable")]  # glibc's qsort is a stable merge sort
        active = int(np.count_nonzero(prob[perm, k]))
        for i in range(active):
            a = perm[i]
            if prob[a, k] == 0:
                continue
            later = perm[i + 1:]
            prob[later[over[a, later]], k] = 0
    final = np.concatenate([perm, np.arange(total, len(order))])
    result = Detections(out.boxes[final], out.objectness[final], prob[final], out.sort_class[final].copy(),
                        out.relative[final], out.classes)
    result.sort_class[:total] = dets.classes - 1
    return result


def nms_kind_of(model) -> tuple[str, float]:
    """The NMS darknet's detector applies for ``model``: AlexeyAB reads
    ``nms_kind`` / ``beta_nms`` of the network's LAST layer (when it is a yolo
    head); pjreddie always uses ``do_nms_sort``."""
    if model.dialect != "alexeyab":
        return "default", 0.6
    last = model.module_list[len(model.module_list) - 1]
    opts = last.section.options
    kind = opts.get("nms_kind", "default") or "default"
    if last.type == "yolo" and kind == "cornersnms":
        kind = "default"  # [yolo]'s parser knows only greedynms / diounms
    if kind not in NMS_OVERLAPS:
        kind = "default"  # darknet maps unknown names to the default NMS
    return kind, float(opts.get("beta_nms", 0.6))


@dataclass
class Postprocessor:
    """Decode + NMS for one model, with darknet's defaults."""

    heads: list
    net_w: int
    net_h: int
    dialect: str
    thresh: float = 0.25
    hier_thresh: float = 0.5
    nms: float = 0.45
    nms_kind: str = "default"
    beta_nms: float = 0.6
    letter: bool = True

    @classmethod
    def for_model(cls, model, **kw) -> "Postprocessor":
        kind, beta = nms_kind_of(model)
        kw.setdefault("nms_kind", kind)
        kw.setdefault("beta_nms", beta)
        heads = [model.module_list[i] for i in model.heads]
        return cls(heads, model.width, model.height, model.dialect, **kw)

    def context(self, image_w: int, image_h: int) -> DecodeContext:
        return DecodeContext(image_w, image_h, self.net_w, self.net_h, self.thresh, self.hier_thresh,
                             self.letter, self.dialect)

    def __call__(self, outputs: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Head outputs of a batch and each image's ``(width, height)`` ->
        per image the post-NMS :class:`Detections`."""
        result = []
        for b, (iw, ih) in enumerate(sizes):
            dets = get_network_boxes(self.heads, outputs, self.context(iw, ih), b)
            if self.nms > 0:
                dets = nms_sort(dets, self.nms, self.nms_kind, self.beta_nms, self.dialect)
            result.append(dets)
        return result

    def with_(self, **kw) -> "Postprocessor":
        return replace(self, **kw)
