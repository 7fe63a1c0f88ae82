"""[detection] (YOLOv1): the layer, darknet's training delta
(``forward_detection_layer``) and its decode.

The input is the flat connected output of each image:
``[side*side][classes]`` class scores, ``[side*side][n]`` confidences,
``[side*side][n][4]`` boxes (x, y in cell units; w, h square-rooted when
``sqrt=1``).  The truth is darknet's grid buffer (one box per cell; see
:func:`~.targets.targets_to_detection_truth`).  Per cell:

* every confidence: ``noobject_scale * (0 - conf)``;
* a cell holding a truth: class deltas ``class_scale * (onehot - p)``; the
  responsible box is the one with the highest IoU with the truth (the first
  one), or with the smallest RMSE when no IoU is positive (``forced=1``: box 1
  for small truths, else box 0); its confidence delta is
  ``object_scale * (1 - conf)`` (``rescore``: ``iou - conf``) and its box delta
  ``coord_scale * (truth - output)`` (square roots of w, h when ``sqrt=1``).

pjreddie reports ``cost = sum(delta^2)``; AlexeyAB keeps the older running sum
(``noobject_scale*conf^2`` ... ``+ (1 - iou)^2``) and, with ``softmax=1``, also
applies the logistic to confidences and boxes (deltas times its derivative).
With ``random=1`` and ``seen < 64000`` pjreddie picks the box with ``rand()``;
that is not reproducible here and raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...boxes import box_iou_cxcywh, box_rmse_cxcywh
from ...builder import BuildContext
from ...cfg import Section
from ...errors import DataError, UnsupportedLayerError
from ...postprocess import DecodeContext, Detections, F32, F64, as_f32, class_probs, grid_cells
from .base import DialectParams, Head, check_channels, register_head, where_of
from .delta import DeltaResult, delta_loss, f32, logistic_gradient, ratio, sqrt_f, stats_dict
from .targets import targets_to_detection_truth

#: below this ``seen`` pjreddie's ``random=1`` chooses the responsible box at random
RANDOM_SEEN = 64000
#: a truth cell whose boxes all have an RMSE of at least this has no responsible box
RMSE_LIMIT = 20
#: with ``forced=1`` truths smaller than this (w*h) go to box 1, the others to box 0
FORCED_SMALL = 0.1


# ================================================================ parameters
@dataclass(frozen=True)
class DetectionParams(DialectParams):
    where: str
    dialect: str
    classes: int
    n: int
    coords: int
    side: int
    sqrt: bool
    softmax: bool
    rescore: bool
    forced: bool
    random: bool
    coord_scale: float
    object_scale: float
    noobject_scale: float
    class_scale: float


def read_detection_params(sec: Section, index: int, dialect: str) -> DetectionParams:
    o = sec.options
    return DetectionParams(where=where_of(index, sec), dialect=dialect, classes=sec["classes"],
                           n=sec["num"], coords=sec["coords"], side=sec["side"], sqrt=bool(o["sqrt"]),
                           softmax=bool(o["softmax"]), rescore=bool(o["rescore"]),
                           forced=bool(o["forced"]), random=bool(o["random"]),
                           coord_scale=f32(o["coord_scale"]), object_scale=f32(o["object_scale"]),
                           noobject_scale=f32(o["noobject_scale"]), class_scale=f32(o["class_scale"]))


# ================================================================ the delta, phase by phase
@dataclass
class Outputs:
    """One call's predictions as the delta formulas read them: ``cls [N, L, C]``,
    ``conf [N, L, B]``, ``box [N, L, B, 4]`` (``L = side*side`` cells, ``B = n``)."""

    cls: Tensor
    conf: Tensor
    box: Tensor


def split_outputs(p: DetectionParams, x: Tensor) -> Outputs:
    """The flat input, checked and split; ``softmax=1`` activates the classes
    (AlexeyAB: and the logistic on confidences and boxes)."""
    N = x.shape[0]
    L, B, C = p.side * p.side, p.n, p.classes
    flat = x.detach().float().reshape(N, -1)
    if flat.shape[1] != L * ((1 + p.coords) * B + C):
        raise DataError(f"{p.where}: input has {flat.shape[1]} values per image, expected "
                        f"{L * ((1 + p.coords) * B + C)}")
    cls = flat[:, : L * C].reshape(N, L, C)
    conf = flat[:, L * C: L * (C + B)].reshape(N, L, B)
    box = flat[:, L * (C + B):].reshape(N, L, B, 4)
    if p.softmax:
        cls = torch.softmax(cls, dim=2)
        if p.ab:
            conf, box = torch.sigmoid(conf), torch.sigmoid(box)
    return Outputs(cls, conf, box)


def responsible_boxes(p: DetectionParams, o: Outputs, t_box: Tensor, is_obj: Tensor) -> tuple[Tensor, Tensor]:
    """Per cell, the box responsible for its truth: the first with the highest IoU,
    else the smallest RMSE below 20 (``forced``: by the truth's size).  Returns
    ``(box index [N, L], IoU of every box [N, L, B])``; a truth cell without a
    candidate is a DataError (darknet would index box -1)."""
    truth = t_box.clone()
    truth[..., 0] = truth[..., 0] / p.side
    truth[..., 1] = truth[..., 1] / p.side
    out = o.box.clone()
    out[..., 0] = out[..., 0] / p.side
    out[..., 1] = out[..., 1] / p.side
    if p.sqrt:
        out[..., 2] = out[..., 2] * out[..., 2]
        out[..., 3] = out[..., 3] * out[..., 3]
    tb = truth[:, :, None, :].expand_as(out)
    iou = box_iou_cxcywh(out, tb, p.dialect)                            # [N, L, B]
    rmse = box_rmse_cxcywh(out, tb)
    any_iou = (torch.nan_to_num(iou, nan=0.0) > 0).any(2)
    by_iou = torch.argmax(torch.nan_to_num(iou, nan=0.0), 2)
    r = torch.where(rmse < RMSE_LIMIT, rmse, torch.full_like(rmse, float("inf")))
    by_rmse = torch.argmin(r, 2)
    best = torch.where(any_iou, by_iou, by_rmse)
    if p.forced:
        small = truth[..., 2] * truth[..., 3] < FORCED_SMALL
        best = torch.where(small, torch.ones_like(best), torch.zeros_like(best))
    none = ~any_iou & ~torch.isfinite(r).any(2) & ~torch.as_tensor(p.forced)
    if bool((none & is_obj).any()):
        raise DataError(f"{p.where}: a truth cell has no box with IoU > 0 or RMSE < {RMSE_LIMIT} "
                        f"(darknet would index box -1)")
    return best, iou


@dataclass
class TruthGrid:
    """darknet's [detection] truth buffer split per cell: ``is_obj [N, L]``,
    ``cls [N, L, C]`` one-hot, ``box [N, L, 4]`` (x, y in the cell)."""

    is_obj: Tensor
    cls: Tensor
    box: Tensor


def read_truth_grid(p: DetectionParams, truth_grid: Tensor, o: Outputs) -> TruthGrid:
    N, L, C = o.cls.shape[0], p.side * p.side, p.classes
    tg = truth_grid.to(o.cls.device).float().reshape(N, L, 1 + C + 4)
    return TruthGrid(tg[:, :, 0].long() != 0, tg[:, :, 1:1 + C], tg[:, :, 1 + C:])  # is_obj: C's (int)


@dataclass
class Responsible:
    """The truth cells (``cell``: (image, cell) index tensors), the box responsible
    in each (``k``) and that box's confidence and IoU with the truth."""

    cell: tuple[Tensor, Tensor]
    k: Tensor
    conf: Tensor
    iou: Tensor


def truth_cell_deltas(p: DetectionParams, o: Outputs, t: TruthGrid, d_cls: Tensor, d_conf: Tensor,
                      d_box: Tensor) -> Responsible:
    """Class deltas of every truth cell, confidence (towards 1, ``rescore``: IoU) and
    box deltas of its responsible box; in place on the delta tensors."""
    best, iou = responsible_boxes(p, o, t.box, t.is_obj)
    cell = torch.nonzero(t.is_obj, as_tuple=True)
    k = best[cell]
    r = Responsible(cell, k, o.conf[cell[0], cell[1], k], iou[cell[0], cell[1], k])
    d_cls[cell] = p.class_scale * (t.cls[cell] - o.cls[cell])
    target = r.iou if p.rescore else torch.ones_like(r.conf)
    d_conf[cell[0], cell[1], k] = p.object_scale * (target - r.conf)
    tbx = t.box[cell].clone()
    if p.sqrt:
        tbx[:, 2:] = sqrt_f(tbx[:, 2:])
    d_box[cell[0], cell[1], k] = p.coord_scale * (tbx - o.box[cell[0], cell[1], k])
    return r


def detection_cost(p: DetectionParams, o: Outputs, t: TruthGrid, r: Responsible, delta: Tensor) -> Tensor:
    """pjreddie: ``sum(delta^2)``; AlexeyAB: the older running sum."""
    if not p.ab:
        return (delta * delta).sum()
    return ((p.noobject_scale * o.conf * o.conf).sum()
            + (p.class_scale * (t.cls[r.cell] - o.cls[r.cell]) ** 2).sum()
            - (p.noobject_scale * r.conf * r.conf).sum()
            + (p.object_scale * (1 - r.conf) ** 2).sum() + ((1 - r.iou) ** 2).sum())


def detection_delta(p: DetectionParams, o: Outputs, truth_grid: Tensor) -> DeltaResult:
    """darknet's ``l.delta`` of a [detection] head (flat ``Tensor[N, outputs]``) from
    the split outputs and darknet's truth buffer ``truth_grid``
    (``Tensor[N, side*side*(1+classes+4)]``): ``(delta, cost, stats)``."""
    t = read_truth_grid(p, truth_grid, o)
    d_cls = torch.zeros_like(o.cls)
    d_conf = p.noobject_scale * (0 - o.conf)              # every confidence towards 0
    d_box = torch.zeros_like(o.box)
    r = truth_cell_deltas(p, o, t, d_cls, d_conf, d_box)
    if p.ab and p.softmax:
        d_conf = d_conf * logistic_gradient(o.conf)
        d_box = d_box * logistic_gradient(o.box)
    N = o.cls.shape[0]
    delta = torch.cat([d_cls.reshape(N, -1), d_conf.reshape(N, -1), d_box.reshape(N, -1)], 1)
    cost = detection_cost(p, o, t, r, delta)
    count = int(r.k.numel())
    stats = stats_dict(avg_iou=ratio(float(r.iou.sum()), count),
                       cls=ratio(float((o.cls[r.cell] * (t.cls[r.cell] != 0)).sum()), count),
                       obj=ratio(float(r.conf.sum()), count), no_obj=float(o.conf.mean()),
                       recall50=ratio(int((r.iou > 0.5).sum()), count),
                       recall75=ratio(int((r.iou > 0.75).sum()), count),
                       count=count, cost=float(cost))
    return delta, cost, stats


# ================================================================ decoding
def decode_detection(p: DetectionParams, out: Tensor, ctx: DecodeContext) -> Detections:
    """``get_detection_detections`` (yolov1): boxes in PIXELS of the image
    (darknet multiplies by the image size here and applies no correction)."""
    side, n, classes = p.side, p.n, p.classes
    s2 = side * side
    flat = as_f32(out).reshape(-1)
    cls = flat[:s2 * classes].reshape(s2, classes)
    conf = flat[s2 * classes:s2 * (classes + n)].reshape(s2, n)
    coords = flat[s2 * (classes + n):].reshape(s2, n, 4)
    col, row = grid_cells(side, side)
    W, H = F32(ctx.image_w), F32(ctx.image_h)
    power = 2.0 if p.sqrt else 1.0
    bx = np.empty((s2, n, 4), F32)
    bx[:, :, 0] = (coords[:, :, 0] + col[:, None]) / F32(side) * W
    bx[:, :, 1] = (coords[:, :, 1] + row[:, None]) / F32(side) * H
    bx[:, :, 2] = (np.power(coords[:, :, 2].astype(F64), power) * ctx.image_w).astype(F32)
    bx[:, :, 3] = (np.power(coords[:, :, 3].astype(F64), power) * ctx.image_h).astype(F32)
    thresh = F32(ctx.thresh)
    obj = conf.reshape(-1)
    cls_rep = np.repeat(cls, n, axis=0)  # det index i*n + a reads the cell's class scores
    prob = class_probs(obj, cls_rep, thresh)
    k = s2 * n
    return Detections(bx.reshape(-1, 4), obj.copy(), prob, np.zeros(k, np.int64), np.zeros(k, bool), classes)


# ================================================================ the layer
@register_head
class DetectionHead(Head):
    """[detection] (yolov1): the flat connected output, [side*side][classes] class
    scores, [side*side][n] confidences, [side*side][n][coords] boxes; with
    softmax=1 the class scores of each cell get a softmax, otherwise nothing is
    activated."""

    type = "detection"
    params: DetectionParams

    def __init__(self, sec: Section, ctx: BuildContext):
        classes, n, coords, side = sec["classes"], sec["num"], sec["coords"], sec["side"]
        s2 = side * side
        check_channels(sec, ctx, s2 * ((1 + coords) * n + classes),
                       f"side^2={s2} x ((1+{coords} coords) x num={n} + {classes} classes)", flat=True)
        super().__init__(sec, ctx, ctx.in_shape)
        self.params = read_detection_params(sec, ctx.index, ctx.dialect)

    # views of the parameters
    @property
    def n(self) -> int:
        return self.params.n

    @property
    def coords(self) -> int:
        return self.params.coords

    @property
    def side(self) -> int:
        return self.params.side

    @property
    def sqrt(self) -> bool:
        return self.params.sqrt

    @property
    def softmax(self) -> bool:
        return self.params.softmax

    def activate(self, x: Tensor) -> Tensor:
        if not self.softmax:
            return x
        n = x.shape[0]
        flat = x.reshape(n, -1)
        s2 = self.side * self.side
        cls = torch.softmax(flat[:, : s2 * self.classes].view(n, s2, self.classes), dim=2)
        return torch.cat([cls.reshape(n, -1), flat[:, s2 * self.classes:]], dim=1).view_as(x)

    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
              truth_grid: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """darknet's ``l.delta``: ``(delta (x's shape), cost, stats)``; ``truth_grid``
        (``Tensor[N, side*side*(1+classes+4)]``, darknet's buffer as is) replaces
        ``targets`` when given."""
        p, sec = self.params, self.section
        if p.coords != 4:
            raise UnsupportedLayerError(f"{p.where}: coords={p.coords}; the loss needs 4", sec.file, sec.line)
        o = split_outputs(p, x)
        if p.random and int(self.seen) < RANDOM_SEEN:
            raise UnsupportedLayerError(f"{p.where}: random=1 picks boxes with rand() while seen < "
                                        f"{RANDOM_SEEN}; set random=0 or seen >= {RANDOM_SEEN}",
                                        sec.file, sec.line)
        if truth_grid is None:
            truth_grid = targets_to_detection_truth(targets, x.shape[0], p.side, p.classes)
        delta, cost, stats = detection_delta(p, o, truth_grid)
        return delta.reshape(x.shape), cost, stats

    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """``(loss, stats)``; ``d loss / d x = -l.delta``."""
        delta, cost, stats = self.delta(x, targets, input_hw)
        return delta_loss(x, delta, cost), stats

    def decode(self, out: Tensor, ctx: DecodeContext) -> Detections:
        return decode_detection(self.params, out, ctx)
