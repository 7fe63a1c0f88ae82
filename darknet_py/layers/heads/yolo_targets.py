"""darknet's [yolo] training delta (``forward_yolo_layer``), phase by phase.

What darknet does, in its order (per image; images are independent):

1. every prediction: objectness delta ``-obj`` (AlexeyAB: ``obj_normalizer*(0-obj)``),
   cancelled when its decoded box has IoU > ``ignore_thresh`` with a truth
   (AlexeyAB: only if the prediction has a class output > 0.25;
   ``objectness_smooth`` keeps ``max(delta, obj_normalizer*(iou-obj))``); with IoU
   > ``truth_thresh`` the prediction is made responsible for its best truth
   (:func:`no_object_deltas`, :func:`responsible_deltas`);
2. every truth in buffer order: best anchor by shape IoU over all ``anchors``;
   if this layer's ``mask`` holds it, the cell containing the centre gets the
   box, objectness and class deltas (AlexeyAB ``iou_thresh`` < 1: also every
   other anchor of the mask whose shape IoU passes the threshold)
   (:func:`assign_truths_to_anchors`, :func:`assigned_deltas`);
3. AlexeyAB with ``iou_thresh`` < 1: box deltas divided by the number of classes
   with a positive delta in that cell/anchor (:func:`average_box_deltas`).

Several truths writing the same cell/anchor are processed in "waves": wave r
applies, to every slot at once, the r-th write darknet makes to it, so
overwrites (pjreddie), accumulation (AlexeyAB ``+=``), the class rule for an
already-assigned slot and ``objectness_smooth``'s "only if still 0" all follow
the sequential C code exactly.  The Python loop runs over waves (the largest
number of truths sharing one slot), never over truths, cells or predictions.

Only the objectness plane is dense; box and class deltas are computed for the
slots darknet writes (a :class:`~.delta.SparseDelta`).  [Gaussian_yolo] reuses
the grid, the truth reading and the assignment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import IOU_KINDS, box_giou_cxcywh, box_iou_cxcywh, dx_box_iou_cxcywh
from ...errors import DataError
from .delta import SparseDelta, f32, focal_gradient, log_f, ratio, split_head_input, sqrt_f, stats_dict
from .targets import (Assignments, BestTruths, Truths, TruthStats, best_anchor, best_truths,
                      order_in_slot, select_truths, shape_ious, truth_cells)

if TYPE_CHECKING:
    from .yolo import YoloParams

#: AlexeyAB counts a prediction as matching a truth only with a class output above this
CLASS_MATCH = 0.25


# ================================================================ box and class deltas
def mask_lookup(mask: tuple[int, ...], total: int) -> list[int]:
    """darknet's ``int_index(l.mask, n, l.n)`` for every anchor n: its first
    position in ``mask``, or -1."""
    lut = [-1] * total
    for pos, n in reversed(list(enumerate(mask))):
        lut[n] = pos
    return lut


def pred_boxes(out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor, grid_wh: tuple[int, int],
               net_wh: tuple[int, int], new_coords: bool) -> Tensor:
    """darknet's ``get_yolo_box``: ``out [K, >=4]`` (layer output: x, y activated,
    w, h raw), cell ``i, j [K]``, anchors in pixels ``[K, 2]`` -> ``Tensor[K, 4]``."""
    W, H = grid_wh
    nw, nh = net_wh
    bx = (i.to(out.dtype) + out[:, 0]) / W
    by = (j.to(out.dtype) + out[:, 1]) / H
    if new_coords:
        bw = out[:, 2] * out[:, 2] * 4 * anchor_wh[:, 0] / nw
        bh = out[:, 3] * out[:, 3] * 4 * anchor_wh[:, 1] / nh
    else:  # exp() is double in C: exp(x) * bias / w evaluated in double, stored as float
        bw = (torch.exp(out[:, 2].double()) * anchor_wh[:, 0].double() / nw).to(out.dtype)
        bh = (torch.exp(out[:, 3].double()) * anchor_wh[:, 1].double() / nh).to(out.dtype)
    return torch.stack([bx, by, bw, bh], 1)


def iou_gradient_box_delta(p: YoloParams, out: Tensor, pred: Tensor, truth: Tensor,
                           norm: Tensor) -> Tensor:
    """AlexeyAB's IoU-family box delta (``iou_loss`` != mse): darknet's ``dx_box_iou``
    of the predicted box, through exp() for w, h, scaled by ``norm [K]``, non-finite
    values zeroed, clipped to ``max_delta``."""
    fixed = pred.clone()
    fixed[:, 2] = torch.where(pred[:, 2] == 0, torch.ones_like(pred[:, 2]), pred[:, 2])
    fixed[:, 3] = torch.where(pred[:, 3] == 0, torch.ones_like(pred[:, 3]), pred[:, 3])
    g = dx_box_iou_cxcywh(fixed, truth, p.iou_loss)
    if not p.new_coords:  # d/dt of exp(t): dw *= exp(t) in double
        g = g.clone()
        g[:, 2:] = (g[:, 2:].double() * torch.exp(out[:, 2:4].double())).to(g.dtype)
    g = g * norm[:, None]
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    if math.isfinite(p.max_delta):
        g = g.clamp(-p.max_delta, p.max_delta)
    return g


def mse_box_delta(p: YoloParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
                  truth: Tensor, grid_wh: tuple[int, int], net_wh: tuple[int, int],
                  norm: Tensor) -> Tensor:
    """The MSE box delta ``(2 - w*h) * (target - output)`` in the network's
    coordinates (log or, ``new_coords``, sqrt of the size ratio); AlexeyAB scales it
    by ``norm [K]``."""
    W, H = grid_wh
    nw, nh = net_wh
    scale = 2 - truth[:, 2] * truth[:, 3]
    tx = truth[:, 0] * W - i.to(truth.dtype)
    ty = truth[:, 1] * H - j.to(truth.dtype)
    if p.new_coords:
        tw = sqrt_f(truth[:, 2] * nw / (4 * anchor_wh[:, 0]))
        th = sqrt_f(truth[:, 3] * nh / (4 * anchor_wh[:, 1]))
    else:
        tw = log_f(truth[:, 2] * nw / anchor_wh[:, 0])
        th = log_f(truth[:, 3] * nh / anchor_wh[:, 1])
    t = torch.stack([tx, ty, tw, th], 1)
    d = scale[:, None] * (t - out[:, :4])
    if p.ab:
        d = d * norm[:, None]
    return d


def box_delta(p: YoloParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
              truth: Tensor, grid_wh: tuple[int, int], net_wh: tuple[int, int],
              norm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``delta_yolo_box``: the 4 box deltas of K assignments, and the IoU / GIoU of
    the predicted box with the truth (for the statistics).

    ``out [K, >=4]`` layer output rows; ``truth [K, 4]``; ``norm [K]`` AlexeyAB's
    ``iou_normalizer * class_multiplier`` (ignored by pjreddie).
    """
    pred = pred_boxes(out, i, j, anchor_wh, grid_wh, net_wh, p.new_coords)
    iou = box_iou_cxcywh(pred, truth, p.dialect)
    giou = box_giou_cxcywh(pred, truth) if p.ab else iou
    if p.ab and p.iou_loss != "mse":
        return iou_gradient_box_delta(p, out, pred, truth, norm), iou, giou
    return mse_box_delta(p, out, i, j, anchor_wh, truth, grid_wh, net_wh, norm), iou, giou


def smooth_label(p: YoloParams, y: Tensor) -> Tensor:
    """``y*(1-eps) + 0.5*eps`` with darknet's float/double mix."""
    if not p.label_smooth_eps:
        return y
    eps = p.label_smooth_eps
    return ((y * f32(1 - eps)).double() + 0.5 * eps).to(y.dtype)


def class_deltas(p: YoloParams, D: Tensor, P: Tensor, c: Tensor, mult: Tensor | None) -> Tensor:
    """``delta_yolo_class`` applied to K slots at once.

    ``D [K, C]`` current class deltas, ``P [K, C]`` class outputs, ``c [K]`` class
    ids, ``mult [K]`` AlexeyAB class multipliers (None without counters_per_class).
    A slot that already holds a delta only gets its truth's class updated
    ("already assigned": pjreddie looks at class 0, AlexeyAB at the class itself).
    Returns the new class deltas.
    """
    rows = torch.arange(D.shape[0], device=D.device)
    onehot = F.one_hot(c, p.classes).to(D.dtype)
    pc = P[rows, c]
    if not p.ab:
        part = D.clone()
        part[rows, c] = 1 - pc
        return torch.where((D[:, 0] != 0)[:, None], part, onehot - P)
    cur = D[rows, c]
    r = smooth_label(p, torch.ones_like(pc)) - pc
    part = D.clone()
    part_c = torch.where(torch.isfinite(r), r, cur)
    if mult is not None:
        part_c = part_c * mult
    part[rows, c] = part_c
    if p.focal_loss:
        full = (onehot - P) * (0.5 * focal_gradient(pc))[:, None]
    else:
        rr = smooth_label(p, onehot) - P
        full = torch.where(torch.isfinite(rr), rr, D)
        if mult is not None:
            full = full.clone()
            full[rows, c] = full[rows, c] * (mult * p.cls_normalizer)
    return torch.where((cur != 0)[:, None], part, full)


# ================================================================ the delta, phase by phase
@dataclass
class YoloGrid:
    """One call's input and the per-call constants every phase of the delta reads.

    ``raw``: the detached input ``Tensor[N, A, K, H, W]``; slots are flat indices
    ``((image * A + anchor) * H + row) * W + col`` over ``S = N*A*H*W``."""

    N: int
    A: int
    K: int
    H: int
    W: int
    net_w: int
    net_h: int
    raw: Tensor
    anchors: Tensor                 # [total, 2] pixels
    mask: Tensor                    # [A] anchor of each mask position
    mask_pos: Tensor                # [total] position in the mask, or -1
    class_mult: Tensor | None       # [classes] AlexeyAB counters_per_class

    @property
    def HW(self) -> int:
        return self.H * self.W

    @property
    def S(self) -> int:
        return self.N * self.A * self.HW

    @property
    def device(self) -> torch.device:
        return self.raw.device

    def slot_rows(self, slots: Tensor) -> Tensor:
        """Raw input rows ``[R, K]`` of flat ``slots [R]``."""
        return self.raw.view(self.N * self.A, self.K, self.HW)[slots // self.HW, :, slots % self.HW]

    def slot_cells(self, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(col, row, mask position) of flat ``slots``."""
        return slots % self.W, (slots // self.W) % self.H, (slots // self.HW) % self.A

    def multipliers(self, cls: Tensor) -> Tensor | None:
        return self.class_mult[cls] if self.class_mult is not None else None


def yolo_grid(p: YoloParams, x: Tensor, input_hw: tuple[int, int], box_entries: int = 4) -> YoloGrid:
    """Check ``x`` against the head and gather the per-call constants."""
    A = p.n
    K = box_entries + 1 + p.classes
    N, H, W = split_head_input(x, A, K, p.where)
    dev = x.device
    return YoloGrid(
        N, A, K, H, W, int(input_hw[1]), int(input_hw[0]),
        raw=x.detach().float().view(N, A, K, H, W),
        anchors=torch.tensor(p.anchors, dtype=torch.float32, device=dev),
        mask=torch.tensor(p.mask, dtype=torch.long, device=dev),
        mask_pos=torch.tensor(mask_lookup(p.mask, p.total), dtype=torch.long, device=dev),
        class_mult=(torch.tensor(p.class_multipliers, dtype=torch.float32, device=dev)
                    if p.class_multipliers else None))


def read_truths(p: YoloParams, targets: Tensor, g: YoloGrid, skip_bad_classes: bool) -> Truths:
    """The truths darknet reads; a class outside ``0..classes-1`` is skipped
    (AlexeyAB [yolo]'s ``continue``) or a DataError."""
    tr = select_truths(targets, g.N, p.max_boxes, p.where, g.device)
    if not tr.count:
        return tr
    bad = (tr.cls < 0) | (tr.cls >= p.classes)
    if skip_bad_classes:
        return tr.subset(~bad)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise DataError(f"{p.where}: truth of image {int(tr.img[k])} has class {int(tr.cls[k])}, "
                        f"outside 0..{p.classes - 1}")
    return tr


def activate_rows(p: YoloParams, raw: Tensor) -> Tensor:
    """The layer output of K gathered rows ``raw [K, 5+C]`` (darknet's forward:
    logistic on x, y, objectness, classes unless ``new_coords``; x, y scaled by
    ``scale_x_y`` as ``x*s + (-0.5*(s-1))`` in float)."""
    out = raw.clone() if p.new_coords else torch.sigmoid(raw)
    out[:, 2:4] = raw[:, 2:4]
    if p.scale_x_y != 1.0:
        out[:, 0:2] = out[:, 0:2] * p.scale_x_y + f32(-0.5 * (p.scale_x_y - 1))
    return out


def plane_boxes(xy: Tensor, wh: Tensor, anchor_wh: Tensor, net_wh: tuple[int, int],
                new_coords: bool) -> Tensor:
    """``get_yolo_box`` for every prediction at once: ``xy``, ``wh`` ``[N, A, 2, H, W]``
    (x, y activated), ``anchor_wh [A, 2]`` px -> ``Tensor[N, A*H*W, 4]``."""
    N, A, _, H, W = xy.shape
    nw, nh = net_wh
    ii = torch.arange(W, device=xy.device, dtype=xy.dtype)
    jj = torch.arange(H, device=xy.device, dtype=xy.dtype)[:, None]
    bx = (ii + xy[:, :, 0]) / W
    by = (jj + xy[:, :, 1]) / H
    aw = anchor_wh[:, 0].view(1, A, 1, 1)
    ah = anchor_wh[:, 1].view(1, A, 1, 1)
    if new_coords:
        bw = wh[:, :, 0] * wh[:, :, 0] * 4 * aw / nw
        bh = wh[:, :, 1] * wh[:, :, 1] * 4 * ah / nh
    else:  # float32 here (darknet: double exp); boxes differ by an ulp at most, which
        # only matters for an IoU within ~1e-7 of a threshold; the deltas use double
        bw = torch.exp(wh[:, :, 0]) * aw / nw
        bh = torch.exp(wh[:, :, 1]) * ah / nh
    return torch.stack([bx, by, bw, bh], -1).view(N, A * H * W, 4)


def decode_predictions(p: YoloParams, g: YoloGrid, tr: Truths) -> tuple[Tensor, Tensor]:
    """Every prediction's objectness ``Tensor[S]`` and decoded box ``Tensor[N, A*H*W, 4]``."""
    v = g.raw
    obj = v[:, :, 4] if p.new_coords else torch.sigmoid(v[:, :, 4])              # [N, A, H, W]
    if p.ab and tr.count:  # darknet zeroes a non-finite objectness while matching truths
        has_truth = torch.zeros(g.N, dtype=torch.bool, device=g.device)
        has_truth[tr.img] = True
        obj = torch.where(has_truth[:, None, None, None] & ~torch.isfinite(obj), torch.zeros_like(obj), obj)
    xy = v[:, :, 0:2] if p.new_coords else torch.sigmoid(v[:, :, 0:2])
    if p.scale_x_y != 1.0:
        xy = xy * p.scale_x_y + f32(-0.5 * (p.scale_x_y - 1))
    pred = plane_boxes(xy, v[:, :, 2:4], g.anchors[g.mask], (g.net_w, g.net_h), p.new_coords)
    return obj.reshape(-1), pred


def no_object_deltas(p: YoloParams, g: YoloGrid, obj: Tensor, best: BestTruths) -> Tensor:
    """Phase 1, every prediction: the objectness delta towards 0, cancelled where the
    prediction overlaps a truth by more than ``ignore_thresh`` (AlexeyAB: only with a
    class output > 0.25; ``objectness_smooth``: towards the IoU instead)."""
    if not p.ab:
        return torch.where(best.iou > p.ignore_thresh, torch.zeros_like(obj), -obj)
    on = p.obj_normalizer
    cls_max = g.raw[:, :, 5:].amax(2).reshape(-1)
    if not p.new_coords:  # the logistic is monotonic: any(p_c > .25) == p(max) > .25
        cls_max = torch.sigmoid(cls_max)
    match_iou = torch.where(cls_max > CLASS_MATCH, best.iou, torch.zeros_like(best.iou))
    d_obj = on * (0 - obj)
    ignored = match_iou > p.ignore_thresh
    if p.objectness_smooth:
        towards_iou = on * (match_iou - obj)
        return torch.where(ignored & (towards_iou > d_obj), towards_iou, d_obj)
    return torch.where(ignored, torch.zeros_like(d_obj), d_obj)


def assign_truths_to_anchors(p: YoloParams, g: YoloGrid, tr: Truths, cells: tuple[Tensor, Tensor],
                             extra_anchors: bool) -> Assignments:
    """Phase 2's assignment: each truth's best anchor by shape IoU over all anchors
    and, with ``extra_anchors`` (AlexeyAB ``iou_thresh`` < 1), every other anchor
    whose shape IoU (``iou_thresh_kind``) passes ``iou_thresh``; only anchors of
    this layer's mask are kept.  ``cells``: each truth's (col, row).  Writes to one
    slot are ordered as darknet makes them (truth order, best anchor first)."""
    if not tr.count:
        return Assignments.none(g.device)
    dev = g.device
    anc_norm = g.anchors / torch.tensor([g.net_w, g.net_h], dtype=torch.float32, device=dev)
    best = best_anchor(tr.box[:, 2:4], anc_norm, p.dialect)
    truth, anchor, order = torch.arange(tr.count, device=dev), best, torch.zeros_like(best)
    if extra_anchors:
        ious = shape_ious(tr.box[:, 2:4], anc_norm, IOU_KINDS[p.iou_thresh_kind])   # [M, total]
        n_all = torch.arange(p.total, device=dev)
        extra = (g.mask_pos[None, :] >= 0) & (n_all[None, :] != best[:, None]) & (ious > p.iou_thresh)
        et, en = torch.nonzero(extra, as_tuple=True)
        truth, anchor, order = torch.cat([truth, et]), torch.cat([anchor, en]), torch.cat([order, en + 1])
    in_mask = g.mask_pos[anchor] >= 0
    truth, anchor, order = truth[in_mask], anchor[in_mask], order[in_mask]
    col, row = cells[0][truth], cells[1][truth]
    slot = (tr.img[truth] * g.A + g.mask_pos[anchor]) * g.HW + row * g.W + col
    outside = (slot < 0) | (slot >= g.S)
    if slot.numel() and bool(outside.any()):
        k = int(torch.nonzero(outside)[0, 0])
        raise DataError(f"{p.where}: truth {tr.box[truth[k]].tolist()} of image "
                        f"{int(tr.img[truth[k]])} falls outside the layer's grid")
    wave = order_in_slot(slot, truth * (p.total + 1) + order)
    return Assignments(truth, anchor, slot, col, row, wave)


@dataclass
class TouchedRows:
    """The delta rows ``rows [R, K]`` of the slots darknet writes besides the
    objectness plane (``slots [R]``, sorted), and the layer output of each slot."""

    slots: Tensor
    rows: Tensor
    output: Callable[[Tensor], Tensor]

    def at(self, slots: Tensor) -> Tensor:
        """Positions in ``rows`` of ``slots`` (each one of ``self.slots``)."""
        return torch.searchsorted(self.slots, slots)


def touched_rows(p: YoloParams, g: YoloGrid, d_obj: Tensor, obj: Tensor, *slot_sets: Tensor) -> TouchedRows:
    """Rows for the union of ``slot_sets``, starting from their no-object delta."""
    slots = torch.unique(torch.cat(slot_sets))
    rows = torch.zeros(slots.numel(), g.K, device=g.device)
    rows[:, 4] = d_obj[slots]

    def output(s: Tensor) -> Tensor:
        o = activate_rows(p, g.slot_rows(s))
        o[:, 4] = obj[s]
        return o

    return TouchedRows(slots, rows, output)


def responsible_deltas(p: YoloParams, g: YoloGrid, tr: Truths, best: BestTruths,
                       resp: Tensor, touched: TouchedRows) -> None:
    """Phase 1, predictions with IoU > ``truth_thresh`` (``resp [R]`` slots): made
    responsible for their best truth: objectness towards 1 (AlexeyAB
    ``objectness_smooth``: towards IoU^2), class and box deltas.  In place."""
    if not resp.numel():
        return
    t = best.truth_of(resp)
    c = tr.cls[t]
    mult = g.multipliers(c)
    o = touched.output(resp)
    at = touched.at(resp)
    rows = touched.rows[at]
    bi = best.iou[resp]
    if p.ab:
        on = p.obj_normalizer
        rows[:, 4] = on * (bi * bi - o[:, 4]) if p.objectness_smooth else on * (1 - o[:, 4])
    else:
        rows[:, 4] = 1 - o[:, 4]
    rows[:, 5:] = class_deltas(p, rows[:, 5:], o[:, 5:], c, mult)
    if p.ab and p.objectness_smooth:
        k = torch.arange(resp.numel(), device=g.device)
        rows[k, 5 + c] = (mult if mult is not None else 1.0) * (bi * bi - o[k, 5 + c])
    norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(bi))
    ri, rj, ra = g.slot_cells(resp)
    d, _, _ = box_delta(p, o, ri, rj, g.anchors[g.mask[ra]], tr.box[t], (g.W, g.H), (g.net_w, g.net_h), norm)
    rows[:, :4] = rows[:, :4] + d if p.ab else d
    touched.rows[at] = rows


def assigned_deltas(p: YoloParams, g: YoloGrid, tr: Truths, asg: Assignments,
                    touched: TouchedRows) -> TruthStats:
    """Phase 2's deltas, wave by wave: each assigned slot gets the box delta
    (AlexeyAB accumulates), objectness towards 1 (``rescore``: IoU; AlexeyAB
    ``objectness_smooth``: only if still 0) and the class deltas.  In place."""
    st = TruthStats()
    for r in range(asg.waves):
        sel = torch.nonzero(asg.wave == r).flatten()
        s, t, n = asg.slot[sel], asg.truth[sel], asg.anchor[sel]
        truth, c = tr.box[t], tr.cls[t]
        mult = g.multipliers(c)
        o = touched.output(s)
        at = touched.at(s)
        rows = touched.rows[at]
        norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(truth[:, 0]))
        d, iou, giou = box_delta(p, o, asg.col[sel], asg.row[sel], g.anchors[n], truth, (g.W, g.H),
                                 (g.net_w, g.net_h), norm)
        rows[:, :4] = rows[:, :4] + d if p.ab else d
        o4 = o[:, 4]
        target = iou if p.rescore else torch.ones_like(o4)
        if p.ab:
            cm = mult if mult is not None else 1.0
            val = cm * p.obj_normalizer * (target - o4)
            rows[:, 4] = torch.where(rows[:, 4] == 0, val, rows[:, 4]) if p.objectness_smooth else val
        else:
            rows[:, 4] = target - o4
        rows[:, 5:] = class_deltas(p, rows[:, 5:], o[:, 5:], c, mult)
        touched.rows[at] = rows
        st.add(iou, giou, o[torch.arange(c.numel(), device=g.device), 5 + c], o4)
    return st


def average_box_deltas(rows: Tensor) -> Tensor:
    """Phase 3 (AlexeyAB ``iou_thresh`` < 1): box deltas of a slot with an objectness
    delta divided by its number of positive class deltas (``rows [R, 5+C]``)."""
    n_pos = (rows[:, 5:] > 0).sum(1)
    div = (rows[:, 4] != 0) & (n_pos > 0)
    rows = rows.clone()
    per_class = rows[:, :4] / n_pos.clamp(min=1)[:, None].to(rows.dtype)
    rows[:, :4] = torch.where(div[:, None], per_class, rows[:, :4])
    return rows


def yolo_cost(p: YoloParams, d_obj: Tensor, rows: Tensor, st: TruthStats) -> Tensor:
    """The cost darknet reports: the sum of squared deltas, or AlexeyAB's
    ``iou_normalizer * mean (1 - IoU) + obj_normalizer * (obj + class squares)``
    for IoU losses (``show_details``)."""
    obj_sq = (d_obj * d_obj).sum()
    box_sq = (rows[:, :4] * rows[:, :4]).sum()
    cls_sq = (rows[:, 5:] * rows[:, 5:]).sum()
    if p.ab and p.show_details and p.iou_loss != "mse":
        box_part = st.giou_loss if p.iou_loss == "giou" else st.iou_loss
        return p.iou_normalizer * (box_part / max(st.count, 1)) + p.obj_normalizer * (obj_sq + cls_sq)
    return obj_sq + box_sq + cls_sq


def yolo_sparse_delta(p: YoloParams, x: Tensor, targets: Tensor, input_hw: tuple[int, int]
                      ) -> tuple[SparseDelta, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [yolo] head as a :class:`SparseDelta`, the cost and stats.

    Dense work: the objectness plane, the decoded boxes and their IoU with the
    truths; box and class deltas are computed only for the slots darknet writes
    (responsible predictions and assigned cells), as rows ``[R, 5+C]``."""
    g = yolo_grid(p, x, input_hw)
    tr = read_truths(p, targets, g, skip_bad_classes=p.ab)
    obj, pred = decode_predictions(p, g, tr)
    best = best_truths(pred, tr, g.N, p.dialect)
    d_obj = no_object_deltas(p, g, obj, best)
    resp = torch.nonzero(best.iou > p.truth_thresh).flatten()
    asg = assign_truths_to_anchors(p, g, tr, truth_cells(tr.box, g.W, g.H),
                                   extra_anchors=p.ab and p.iou_thresh < 1.0)
    touched = touched_rows(p, g, d_obj, obj, resp, asg.slot)
    responsible_deltas(p, g, tr, best, resp, touched)
    st = assigned_deltas(p, g, tr, asg, touched)
    rows = touched.rows
    if p.ab and p.iou_thresh < 1.0 and rows.numel():
        rows = average_box_deltas(rows)
    d_obj = d_obj.clone()
    d_obj[touched.slots] = rows[:, 4]
    cost = yolo_cost(p, d_obj, rows, st)
    den = max(st.count, 1) if p.ab else st.count
    stats = stats_dict(avg_iou=ratio(st.iou, den), cls=ratio(st.cat, den),
                       obj=ratio(st.obj, den), no_obj=float(obj.sum()) / g.S,
                       recall50=ratio(st.r50, den), recall75=ratio(st.r75, den),
                       count=st.count, cost=float(cost))
    sd = SparseDelta(tuple(x.shape), g.A, g.K, 4, d_obj, touched.slots, rows)
    return sd, torch.as_tensor(cost, dtype=torch.float32, device=x.device), stats
