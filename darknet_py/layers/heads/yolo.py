"""[yolo]: the layer, its parameters and its decode.

Eval output: x, y, objectness, classes through the logistic (AlexeyAB:
``scale_x_y``, and nothing at all with ``new_coords=1``); w, h raw.  The
training delta (``forward_yolo_layer`` of both darknets) is in
:mod:`.yolo_targets`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...builder import BuildContext
from ...cfg import Section
from ...errors import CfgError
from ...postprocess import (CORRECTIONS, DecodeContext, Detections, F32, F64, anchors64, as_f32,
                            class_probs)
from .base import DialectParams, Head, check_channels, read_anchors, register_head, where_of
from .delta import SparseDelta, f32, sparse_delta_loss
from .yolo_targets import yolo_sparse_delta

#: values of ``iou_loss=`` darknet knows (anything else means plain ``iou``)
IOU_LOSSES = ("mse", "giou", "diou", "ciou")
#: pjreddie's truth buffer holds 90 boxes per image whatever ``max=`` says
PJ_TRUTH_BOXES = 90


# ================================================================ parameters
@dataclass(frozen=True)
class YoloParams(DialectParams):
    """The options ``forward_yolo_layer`` reads, as darknet holds them (float32)."""

    where: str
    dialect: str
    classes: int
    n: int
    total: int
    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]
    max_boxes: int
    ignore_thresh: float
    truth_thresh: float
    iou_loss: str = "mse"
    iou_normalizer: float = 1.0
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    delta_normalizer: float = 1.0
    max_delta: float = math.inf
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    label_smooth_eps: float = 0.0
    focal_loss: bool = False
    objectness_smooth: bool = False
    scale_x_y: float = 1.0
    new_coords: bool = False
    class_multipliers: tuple[float, ...] | None = None
    show_details: bool = True
    #: darknet_py extension (not a darknet option): objectness target = IoU, not 1
    rescore: bool = False


def _option_int(sec: Section, key: str, default: int) -> int:
    """An option the schema may not list (darknet reads it quietly)."""
    if key in sec.options:
        return int(sec.options[key])
    raw = getattr(sec, "unused", {}).get(key)
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        raise CfgError(f"[{sec.type}]: {key}={raw} is not an integer", sec.file, sec.line) from None


def class_multipliers(counters: tuple[int, ...] | None, classes: int, max_delta: float,
                      sec: Section) -> tuple[float, ...] | None:
    """AlexeyAB's ``counters_per_class`` -> per-class multipliers
    ``max(counter) / counter`` (counters below 1 count as 1), capped at ``max_delta``."""
    if not counters:
        return None
    if len(counters) != classes:
        raise sec.error(f"counters_per_class has {len(counters)} values but classes={classes}",
                        "counters_per_class")
    c = [max(int(v), 1) for v in counters]
    top = f32(max(c))
    return tuple(f32(min(f32(top / v), max_delta)) for v in c)


def read_yolo_params(sec: Section, index: int, dialect: str, mask: tuple[int, ...]) -> YoloParams:
    """The [yolo] options the loss and decode read, converted once (float32 like darknet)."""
    o = sec.options
    total = sec["num"]
    common = dict(where=where_of(index, sec), dialect=dialect, classes=sec["classes"], n=len(mask),
                  total=total, mask=mask,
                  anchors=tuple((f32(w), f32(h)) for w, h in read_anchors(sec, total)),
                  ignore_thresh=f32(o["ignore_thresh"]), truth_thresh=f32(o["truth_thresh"]))
    if dialect != "alexeyab":
        return YoloParams(max_boxes=min(int(o["max"]), PJ_TRUTH_BOXES), **common)
    iou_loss = str(o.get("iou_loss", "mse"))
    kind = str(o.get("iou_thresh_kind", "iou"))
    max_delta = float(o.get("max_delta", math.inf))
    max_delta = math.inf if max_delta >= 3.4028234663852886e38 else f32(max_delta)
    return YoloParams(
        max_boxes=int(o["max"]),
        iou_loss=iou_loss if iou_loss in IOU_LOSSES else "iou",
        iou_normalizer=f32(o.get("iou_normalizer", 0.75)),
        obj_normalizer=f32(o.get("obj_normalizer", 1.0)),
        cls_normalizer=f32(o.get("cls_normalizer", 1.0)),
        delta_normalizer=f32(o.get("delta_normalizer", 1.0)),
        max_delta=max_delta,
        iou_thresh=f32(o.get("iou_thresh", 1.0)),
        iou_thresh_kind=kind if kind in ("iou", "giou", "diou", "ciou") else "iou",
        label_smooth_eps=f32(o.get("label_smooth_eps", 0.0)),
        focal_loss=bool(o.get("focal_loss", 0)),
        objectness_smooth=bool(o.get("objectness_smooth", 0)),
        scale_x_y=f32(o.get("scale_x_y", 1.0)),
        new_coords=bool(int(o.get("new_coords", 0))),
        class_multipliers=class_multipliers(o.get("counters_per_class"), sec["classes"], max_delta, sec),
        show_details=bool(_option_int(sec, "show_details", 1)),
        **common)


def read_mask(sec: Section) -> tuple[int, ...]:
    """``mask=`` (default: every anchor), checked against ``num=``."""
    total = sec["num"]
    mask = tuple(sec["mask"]) if sec["mask"] else tuple(range(total))
    if any(not 0 <= m < total for m in mask):
        raise sec.error(f"mask={','.join(map(str, mask))} refers to anchors outside 0..{total - 1} "
                        f"(num={total})", "mask")
    return mask


# ================================================================ decoding
@dataclass
class Candidates:
    """The predictions of one image above the objectness threshold, in darknet's
    order (location-major, then anchor): their output rows ``float32 [K, per]``,
    cells (``col``, ``row`` float32 [K]) and anchors (``float64 [K, 2]``)."""

    rows: np.ndarray
    col: np.ndarray
    row: np.ndarray
    anchors: np.ndarray
    grid_wh: tuple[int, int]


def objectness_candidates(out: Tensor, per: int, obj_entry: int, anchors: np.ndarray,
                          thresh: np.float32) -> Candidates | None:
    """``out`` Tensor[A*per, H, W] of one image; ``anchors [A, 2]`` of the mask
    positions; None when no objectness is above ``thresh``."""
    c, h, w = out.shape
    n = anchors.shape[0]
    v = out.reshape(n, per, h * w)
    obj_t = v[:, obj_entry, :].t().reshape(-1)  # location-major, then anchor: darknet's loop order
    keep = torch.nonzero(obj_t > float(thresh)).flatten()
    if keep.numel() == 0:
        return None
    sel = as_f32(v.permute(2, 0, 1).reshape(h * w * n, per)[keep])  # [K, per]
    keep_np = keep.cpu().numpy()
    loc, a = keep_np // n, keep_np % n
    return Candidates(sel, (loc % w).astype(F32), (loc // w).astype(F32), anchors[a], (w, h))


def decode_yolo(p: YoloParams, out: Tensor, ctx: DecodeContext) -> Detections:
    """``get_yolo_detections`` for one image: ``out`` is the head's ``Tensor[C, H, W]``."""
    thresh = F32(ctx.thresh)
    found = objectness_candidates(out, 5 + p.classes, 4, anchors64(p.anchors)[np.asarray(p.mask)], thresh)
    if found is None:
        return Detections.empty(p.classes)
    sel, anchors, (w, h) = found.rows, found.anchors, found.grid_wh
    bx = np.empty((len(sel), 4), F32)
    bx[:, 0] = (found.col + sel[:, 0]) / F32(w)
    bx[:, 1] = (found.row + sel[:, 1]) / F32(h)
    if p.new_coords:
        a32 = anchors.astype(F32)
        bx[:, 2] = sel[:, 2] * sel[:, 2] * F32(4) * a32[:, 0] / F32(ctx.net_w)
        bx[:, 3] = sel[:, 3] * sel[:, 3] * F32(4) * a32[:, 1] / F32(ctx.net_h)
    else:
        with np.errstate(over="ignore"):
            bx[:, 2] = (np.exp(sel[:, 2].astype(F64)) * anchors[:, 0] / ctx.net_w).astype(F32)
            bx[:, 3] = (np.exp(sel[:, 3].astype(F64)) * anchors[:, 1] / ctx.net_h).astype(F32)
    obj = sel[:, 4]
    prob = class_probs(obj, sel[:, 5:], thresh)
    boxes = CORRECTIONS[ctx.dialect](bx, ctx)
    k = len(sel)
    return Detections(boxes, obj.copy(), prob, np.zeros(k, np.int64), np.ones(k, bool), p.classes)


def traceable_anchor_boxes(y: Tensor, anchors: list[tuple[float, float]], per_anchor: int, coords: int,
                           size_wh: tuple[int, int] | None,
                           new_coords: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Torch-only box decode shared by [yolo] and [region]: ``y`` Tensor[N, A*P, H, W]
    -> boxes [N, A, H, W, 4], objectness [N, A, H, W], class [N, A, C, H, W].
    Anchor sizes are divided by ``size_wh`` (the network, pixels) or, when None,
    by the grid (anchors in grid units)."""
    n, _, h, w = y.shape
    a = len(anchors)
    v = y.view(n, a, per_anchor, h, w)
    aw = y.new_tensor([q[0] for q in anchors]).view(1, a, 1, 1)
    ah = y.new_tensor([q[1] for q in anchors]).view(1, a, 1, 1)
    gx = torch.arange(w, device=y.device, dtype=y.dtype).view(1, 1, 1, w)
    gy = torch.arange(h, device=y.device, dtype=y.dtype).view(1, 1, h, 1)
    bx = (gx + v[:, :, 0]) / w
    by = (gy + v[:, :, 1]) / h
    den_w, den_h = (w, h) if size_wh is None else size_wh
    if new_coords:
        bw = v[:, :, 2] * v[:, :, 2] * 4 * aw / den_w
        bh = v[:, :, 3] * v[:, :, 3] * 4 * ah / den_h
    else:
        bw = torch.exp(v[:, :, 2]) * aw / den_w
        bh = torch.exp(v[:, :, 3]) * ah / den_h
    return torch.stack([bx, by, bw, bh], dim=-1), v[:, :, coords], v[:, :, coords + 1:]


# ================================================================ the layer
@register_head
class Yolo(Head):
    """[yolo]: x, y, objectness, classes through the logistic (AlexeyAB: scale_x_y,
    and nothing at all with new_coords=1); w, h raw."""

    type = "yolo"
    box_entries = 4
    traceable = True
    params: YoloParams

    def __init__(self, sec: Section, ctx: BuildContext):
        mask = read_mask(sec)
        per = self.box_entries + 1 + sec["classes"]
        check_channels(sec, ctx, len(mask) * per,
                       f"{len(mask)} masks x ({self.box_entries}+1+{sec['classes']} classes)")
        super().__init__(sec, ctx, ctx.in_shape)
        self.params = self.read_params(sec, ctx.index, ctx.dialect, mask)

    @staticmethod
    def read_params(sec: Section, index: int, dialect: str, mask: tuple[int, ...]) -> YoloParams:
        return read_yolo_params(sec, index, dialect, mask)

    # views of the parameters
    @property
    def total(self) -> int:
        return self.params.total

    @property
    def mask(self) -> tuple[int, ...]:
        return self.params.mask

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def anchors(self) -> tuple[tuple[float, float], ...]:
        return self.params.anchors

    @property
    def new_coords(self) -> bool:
        return self.params.new_coords

    @property
    def scale_x_y(self) -> float:
        return self.params.scale_x_y

    @property
    def per_anchor(self) -> int:
        return self.box_entries + 1 + self.classes

    def activate(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        v = x.reshape(n, self.n, self.per_anchor, h, w)
        if self.new_coords:
            xy, rest = v[:, :, :2], v[:, :, 2:]
        else:
            xy = torch.sigmoid(v[:, :, :2])
            rest = torch.cat([v[:, :, 2:4], torch.sigmoid(v[:, :, 4:])], dim=2)
        if self.scale_x_y != 1.0:
            xy = xy * self.scale_x_y - 0.5 * (self.scale_x_y - 1)
        return torch.cat([xy, rest], dim=2).view(n, c, h, w)

    def sparse_delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
                     rescore: bool | None = None) -> tuple[SparseDelta, Tensor, dict[str, Any]]:
        p = self.params if rescore is None else replace(self.params, rescore=bool(rescore))
        return yolo_sparse_delta(p, x, targets, input_hw)

    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
              rescore: bool | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """darknet's ``l.delta``: ``(delta [N, C, H, W], cost, stats)``."""
        sd, cost, stats = self.sparse_delta(x, targets, input_hw, rescore)
        return sd.to_dense(), cost, stats

    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int], *,
             rescore: bool | None = None) -> tuple[Tensor, dict[str, Any]]:
        """``(loss, stats)``; ``d loss / d x = -l.delta`` (times AlexeyAB's
        ``delta_normalizer``, which its GPU build applies in backward).

        ``rescore=True`` (a darknet_py extension, off by default) makes the objectness
        target of assigned predictions their IoU instead of 1.
        """
        sd, cost, stats = self.sparse_delta(x, targets, input_hw, rescore)
        p = self.params
        return sparse_delta_loss(x, sd, cost, p.delta_normalizer if p.ab else 1.0), stats

    def decode(self, out: Tensor, ctx: DecodeContext) -> Detections:
        return decode_yolo(self.params, out, ctx)

    def traceable_decode(self, y: Tensor, net_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """darknet's get_yolo_detections order: location-major, anchor-minor."""
        anchors = [self.anchors[m] for m in self.mask]
        boxes, obj, cls = traceable_anchor_boxes(y, anchors, self.per_anchor, 4, (net_hw[1], net_hw[0]),
                                                 self.new_coords)
        n = y.shape[0]
        return (boxes.permute(0, 2, 3, 1, 4).reshape(n, -1, 4),
                obj.permute(0, 2, 3, 1).reshape(n, -1),
                (obj.unsqueeze(2) * cls).permute(0, 3, 4, 1, 2).reshape(n, -1, cls.shape[2]))

    def summary_columns(self) -> tuple[int | None, str, str]:
        return None, "", f"mask {','.join(map(str, self.mask))} classes {self.classes}"
