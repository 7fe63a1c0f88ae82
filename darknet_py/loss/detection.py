"""The [detection] (YOLOv1) loss (``forward_detection_layer``).

The input is the flat connected output of each image:
``[side*side][classes]`` class scores, ``[side*side][n]`` confidences,
``[side*side][n][4]`` boxes (x, y in cell units; w, h square-rooted when
``sqrt=1``).  The truth is darknet's grid buffer (one box per cell; see
:func:`~darknet_py.loss.targets.targets_to_detection_truth`).  Per cell:

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

import torch
from torch import Tensor

from ..boxes import box_iou_cxcywh, box_rmse_cxcywh
from ..errors import DataError, UnsupportedLayerError
from .base import delta_loss, DialectParams, f32, logistic_gradient, per_head, ratio, sqrt_f, stats_dict
from .targets import targets_to_detection_truth
from .yolo import where_of

#: below this ``seen`` pjreddie's ``random=1`` chooses the responsible box at random
RANDOM_SEEN = 64000


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


@per_head
def detection_params(head: Any) -> DetectionParams:
    o = head.opts
    if head.coords != 4:
        sec = head.section
        raise UnsupportedLayerError(f"{where_of(head)}: coords={head.coords}; the loss needs 4",
                                    sec.file, sec.line)
    p = DetectionParams(where=where_of(head), dialect=head.dialect, classes=head.classes, n=head.n,
                        coords=head.coords, side=head.side, sqrt=bool(o["sqrt"]),
                        softmax=bool(o["softmax"]), rescore=bool(o["rescore"]),
                        forced=bool(o["forced"]), random=bool(o["random"]),
                        coord_scale=f32(o["coord_scale"]), object_scale=f32(o["object_scale"]),
                        noobject_scale=f32(o["noobject_scale"]), class_scale=f32(o["class_scale"]))
    return p


def detection_delta(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
                    params: DetectionParams | None = None,
                    truth_grid: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [detection] head: ``(delta (x's shape), cost, stats)``.

    ``truth_grid`` (``Tensor[N, side*side*(1+classes+4)]``) replaces ``targets``
    when given (darknet's buffer as is)."""
    p = params or detection_params(head)
    N = x.shape[0]
    L, B, C = p.side * p.side, p.n, p.classes
    flat = x.detach().float().reshape(N, -1)
    if flat.shape[1] != L * ((1 + p.coords) * B + C):
        raise DataError(f"{p.where}: input has {flat.shape[1]} values per image, expected "
                        f"{L * ((1 + p.coords) * B + C)}")
    if p.random and int(getattr(head, "seen", 0)) < RANDOM_SEEN:
        sec = head.section
        raise UnsupportedLayerError(f"{p.where}: random=1 picks boxes with rand() while seen < "
                                    f"{RANDOM_SEEN}; set random=0 or seen >= {RANDOM_SEEN}",
                                    sec.file, sec.line)
    cls = flat[:, : L * C].reshape(N, L, C)
    conf = flat[:, L * C: L * (C + B)].reshape(N, L, B)
    box = flat[:, L * (C + B):].reshape(N, L, B, 4)
    if p.softmax:
        cls = torch.softmax(cls, dim=2)
        if p.ab:
            conf, box = torch.sigmoid(conf), torch.sigmoid(box)
    if truth_grid is None:
        truth_grid = targets_to_detection_truth(targets, N, p.side, C)
    tg = truth_grid.to(flat.device).float().reshape(N, L, 1 + C + 4)
    is_obj = tg[:, :, 0].long() != 0                                   # C's (int) of the float
    t_cls = tg[:, :, 1:1 + C]
    t_box = tg[:, :, 1 + C:]

    d_cls = torch.zeros_like(cls)
    d_conf = p.noobject_scale * (0 - conf)
    d_box = torch.zeros_like(box)
    cost_ab = (p.noobject_scale * conf * conf).sum()

    truth = t_box.clone()
    truth[..., 0] = truth[..., 0] / p.side
    truth[..., 1] = truth[..., 1] / p.side
    out = box.clone()
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
    r = torch.where(rmse < 20, rmse, torch.full_like(rmse, float("inf")))
    by_rmse = torch.argmin(r, 2)
    best = torch.where(any_iou, by_iou, by_rmse)
    if p.forced:
        small = truth[..., 2] * truth[..., 3] < 0.1
        best = torch.where(small, torch.ones_like(best), torch.zeros_like(best))
    none = ~any_iou & ~torch.isfinite(r).any(2) & ~torch.as_tensor(p.forced)
    if bool((none & is_obj).any()):
        raise DataError(f"{p.where}: a truth cell has no box with IoU > 0 or RMSE < 20 "
                        f"(darknet would index box -1)")

    cell = torch.nonzero(is_obj, as_tuple=True)
    k = best[cell]
    b_conf = conf[cell[0], cell[1], k]
    b_iou = iou[cell[0], cell[1], k]
    d_cls[cell] = p.class_scale * (t_cls[cell] - cls[cell])
    target = b_iou if p.rescore else torch.ones_like(b_conf)
    d_conf[cell[0], cell[1], k] = p.object_scale * (target - b_conf)
    tbx = t_box[cell].clone()
    if p.sqrt:
        tbx[:, 2:] = sqrt_f(tbx[:, 2:])
    d_box[cell[0], cell[1], k] = p.coord_scale * (tbx - box[cell[0], cell[1], k])
    if p.ab and p.softmax:
        d_conf = d_conf * logistic_gradient(conf)
        d_box = d_box * logistic_gradient(box)
    delta = torch.cat([d_cls.reshape(N, -1), d_conf.reshape(N, -1), d_box.reshape(N, -1)], 1)
    if p.ab:
        cost = (cost_ab + (p.class_scale * (t_cls[cell] - cls[cell]) ** 2).sum()
                - (p.noobject_scale * b_conf * b_conf).sum()
                + (p.object_scale * (1 - b_conf) ** 2).sum() + ((1 - b_iou) ** 2).sum())
    else:
        cost = (delta * delta).sum()
    count = int(k.numel())
    stats = stats_dict(avg_iou=ratio(float(b_iou.sum()), count),
                       cls=ratio(float((cls[cell] * (t_cls[cell] != 0)).sum()), count),
                       obj=ratio(float(b_conf.sum()), count), no_obj=float(conf.mean()),
                       recall50=ratio(int((b_iou > 0.5).sum()), count),
                       recall75=ratio(int((b_iou > 0.75).sum()), count),
                       count=count, cost=float(cost))
    return delta.reshape(x.shape), cost, stats


def detection_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of a [detection] head; ``d loss / d x = -l.delta``."""
    delta, cost, stats = detection_delta(head, x, targets, input_hw)
    return delta_loss(x, delta, cost), stats
