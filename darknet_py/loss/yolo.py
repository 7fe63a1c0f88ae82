"""The [yolo] loss of pjreddie's and AlexeyAB's darknet (``forward_yolo_layer``).

What darknet does, in its order (per image; images are independent):

1. every prediction: objectness delta ``-obj`` (AlexeyAB: ``obj_normalizer*(0-obj)``),
   cancelled when its decoded box has IoU > ``ignore_thresh`` with a truth
   (AlexeyAB: only if the prediction has a class output > 0.25;
   ``objectness_smooth`` keeps ``max(delta, obj_normalizer*(iou-obj))``); with IoU
   > ``truth_thresh`` the prediction is made responsible for its best truth;
2. every truth in buffer order: best anchor by shape IoU over all ``anchors``;
   if this layer's ``mask`` holds it, the cell containing the centre gets the
   box, objectness and class deltas (AlexeyAB ``iou_thresh`` < 1: also every
   other anchor of the mask whose shape IoU passes the threshold);
3. AlexeyAB with ``iou_thresh`` < 1: box deltas divided by the number of classes
   with a positive delta in that cell/anchor.

Several truths writing the same cell/anchor are processed in "waves": wave r
applies, to every slot at once, the r-th write darknet makes to it, so
overwrites (pjreddie), accumulation (AlexeyAB ``+=``), the class rule for an
already-assigned slot and ``objectness_smooth``'s "only if still 0" all follow
the sequential C code exactly.  The Python loop runs over waves (the largest
number of truths sharing one slot), never over truths, cells or predictions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import IOU_KINDS, box_giou_cxcywh, box_iou_cxcywh, dx_box_iou_cxcywh
from ..errors import CfgError, DataError
from .base import (DialectParams, f32, log_f, per_head, ratio, sparse_delta_loss, SparseDelta,
                   split_head_input, sqrt_f, stats_dict)
from .targets import (best_anchor, best_truth_per_prediction, order_in_slot,
                      pad_by_image, select_truths, shape_ious, truth_cells)

#: values of ``iou_loss=`` darknet knows (anything else means plain ``iou``)
IOU_LOSSES = ("mse", "giou", "diou", "ciou")
#: pjreddie's truth buffer holds 90 boxes per image whatever ``max=`` says
PJ_TRUTH_BOXES = 90


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


def where_of(head: Any) -> str:
    sec = head.section
    return f"layer {head.index} [{sec.name or sec.type}] at {sec.file}:{sec.line}"


def _option_int(sec: Any, key: str, default: int) -> int:
    """An option the schema may not list (darknet reads it quietly)."""
    if key in sec.options:
        return int(sec.options[key])
    raw = getattr(sec, "unused", {}).get(key)
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        raise CfgError(f"[{sec.type}]: {key}={raw} is not an integer", sec.file, sec.line) from None


def class_multipliers(counters: tuple[int, ...] | None, classes: int, max_delta: float,
                      sec: Any) -> tuple[float, ...] | None:
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


@per_head
def yolo_params(head: Any) -> YoloParams:
    """Read (once per head) the options the loss needs."""
    sec, o = head.section, head.opts
    common = dict(where=where_of(head), dialect=head.dialect, classes=head.classes, n=head.n,
                  total=head.total, mask=tuple(head.mask),
                  anchors=tuple((f32(w), f32(h)) for w, h in head.anchors),
                  ignore_thresh=f32(o["ignore_thresh"]), truth_thresh=f32(o["truth_thresh"]))
    if head.dialect != "alexeyab":
        p = YoloParams(max_boxes=min(int(o["max"]), PJ_TRUTH_BOXES), **common)
    else:
        iou_loss = str(o.get("iou_loss", "mse"))
        kind = str(o.get("iou_thresh_kind", "iou"))
        max_delta = float(o.get("max_delta", math.inf))
        max_delta = math.inf if max_delta >= 3.4028234663852886e38 else f32(max_delta)
        p = YoloParams(
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
            new_coords=bool(head.new_coords),
            class_multipliers=class_multipliers(o.get("counters_per_class"), head.classes,
                                                max_delta, sec),
            show_details=bool(_option_int(sec, "show_details", 1)),
            **common)
    return p


# ------------------------------------------------------------------ pieces
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


def box_delta(p: YoloParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
              truth: Tensor, grid_wh: tuple[int, int], net_wh: tuple[int, int],
              norm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``delta_yolo_box``: the 4 box deltas of K assignments, and the IoU / GIoU of
    the predicted box with the truth (for the statistics).

    ``out [K, >=4]`` layer output rows; ``truth [K, 4]``; ``norm [K]`` AlexeyAB's
    ``iou_normalizer * class_multiplier`` (ignored by pjreddie).
    """
    W, H = grid_wh
    nw, nh = net_wh
    pred = pred_boxes(out, i, j, anchor_wh, grid_wh, net_wh, p.new_coords)
    iou = box_iou_cxcywh(pred, truth, p.dialect)
    giou = box_giou_cxcywh(pred, truth) if p.ab else iou
    scale = 2 - truth[:, 2] * truth[:, 3]
    if p.ab and p.iou_loss != "mse":
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
        return g, iou, giou
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
    return d, iou, giou


def smooth_label(p: YoloParams, y: Tensor) -> Tensor:
    """``y*(1-eps) + 0.5*eps`` with darknet's float/double mix."""
    if not p.label_smooth_eps:
        return y
    eps = p.label_smooth_eps
    return ((y * f32(1 - eps)).double() + 0.5 * eps).to(y.dtype)


def class_op(p: YoloParams, D: Tensor, P: Tensor, c: Tensor, mult: Tensor | None) -> Tensor:
    """``delta_yolo_class`` applied to K slots at once.

    ``D [K, C]`` current class deltas, ``P [K, C]`` class outputs, ``c [K]`` class
    ids, ``mult [K]`` AlexeyAB class multipliers (None without counters_per_class).
    Returns the new class deltas.
    """
    rows = torch.arange(D.shape[0], device=D.device)
    onehot = F.one_hot(c, p.classes).to(D.dtype)
    pc = P[rows, c]
    if not p.ab:  # pjreddie: "already assigned" = class-0 slot nonzero
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
        pt = pc + 1e-15
        grad = -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)
        full = (onehot - P) * (0.5 * grad)[:, None]
    else:
        rr = smooth_label(p, onehot) - P
        full = torch.where(torch.isfinite(rr), rr, D)
        if mult is not None:
            full = full.clone()
            full[rows, c] = full[rows, c] * (mult * p.cls_normalizer)
    return torch.where((cur != 0)[:, None], part, full)


# -------------------------------------------------------------------- loss
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


def yolo_sparse_delta(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
                      params: YoloParams | None = None) -> tuple[SparseDelta, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [yolo] head as a :class:`SparseDelta`, the cost and stats.

    Dense work: the objectness plane, the decoded boxes and their IoU with the
    truths; box and class deltas are computed only for the slots darknet writes
    (responsible predictions and assigned cells), as rows ``[R, 5+C]``."""
    p = params or yolo_params(head)
    A, C = p.n, p.classes
    K = 5 + C
    N, H, W = split_head_input(x, A, K, p.where)
    net_h, net_w = int(input_hw[0]), int(input_hw[1])
    dev = x.device
    v = x.detach().float().view(N, A, K, H, W)
    vflat = v.view(N * A, K, H * W)
    HW = H * W
    S = N * A * HW

    anchors = torch.tensor(p.anchors, dtype=torch.float32, device=dev)          # [total, 2] px
    mask_t = torch.tensor(p.mask, dtype=torch.long, device=dev)
    lut = torch.tensor(mask_lookup(p.mask, p.total), dtype=torch.long, device=dev)
    mult_t = (torch.tensor(p.class_multipliers, dtype=torch.float32, device=dev)
              if p.class_multipliers else None)

    tr = select_truths(targets, N, p.max_boxes, p.where, dev)
    if tr.count:
        bad = (tr.cls < 0) | (tr.cls >= C)
        if p.ab:
            tr = tr.subset(~bad)  # AlexeyAB skips (continue) such labels
        elif bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            raise DataError(f"{p.where}: truth of image {int(tr.img[k])} has class {int(tr.cls[k])}, "
                            f"outside 0..{C - 1}")

    # ---- dense: objectness and decoded boxes of every prediction ----
    obj = v[:, :, 4] if p.new_coords else torch.sigmoid(v[:, :, 4])              # [N, A, H, W]
    if p.ab and tr.count:  # darknet zeroes a non-finite objectness while matching truths
        has_truth = torch.zeros(N, dtype=torch.bool, device=dev)
        has_truth[tr.img] = True
        obj = torch.where(has_truth[:, None, None, None] & ~torch.isfinite(obj), torch.zeros_like(obj), obj)
    obj_f = obj.reshape(-1)
    xy = v[:, :, 0:2] if p.new_coords else torch.sigmoid(v[:, :, 0:2])
    if p.scale_x_y != 1.0:
        xy = xy * p.scale_x_y + f32(-0.5 * (p.scale_x_y - 1))
    pred = plane_boxes(xy, v[:, :, 2:4], anchors[mask_t], (net_w, net_h), p.new_coords)

    # ---- 1. every prediction: ignore / truth_thresh ----
    tb, tv, tidx = pad_by_image(tr, N)
    best_iou, best_pos = best_truth_per_prediction(pred, tb, tv, p.dialect)
    best_iou, best_pos = best_iou.reshape(-1), best_pos.reshape(-1)
    if p.ab:
        on = p.obj_normalizer
        cls_max = v[:, :, 5:].amax(2).reshape(-1)
        if not p.new_coords:  # the logistic is monotonic: any(p_c > .25) == p(max) > .25
            cls_max = torch.sigmoid(cls_max)
        match_iou = torch.where(cls_max > 0.25, best_iou, torch.zeros_like(best_iou))
        d_obj = on * (0 - obj_f)
        ign = match_iou > p.ignore_thresh
        if p.objectness_smooth:
            alt = on * (match_iou - obj_f)
            d_obj = torch.where(ign & (alt > d_obj), alt, d_obj)
        else:
            d_obj = torch.where(ign, torch.zeros_like(d_obj), d_obj)
    else:
        d_obj = torch.where(best_iou > p.ignore_thresh, torch.zeros_like(obj_f), -obj_f)
    resp = torch.nonzero(best_iou > p.truth_thresh).flatten()

    # ---- the truths' assignments (which slots, in which order) ----
    ops = torch.zeros(0, dtype=torch.long, device=dev)
    ops_t = ops_n = slot = rank = oi = oj = ops
    if tr.count:
        anc_norm = anchors / torch.tensor([net_w, net_h], dtype=torch.float32, device=dev)
        bn = best_anchor(tr.box[:, 2:4], anc_norm, p.dialect)
        ops_t, ops_n, ops_k = torch.arange(tr.count, device=dev), bn, torch.zeros_like(bn)
        if p.ab and p.iou_thresh < 1.0:
            ious = shape_ious(tr.box[:, 2:4], anc_norm, IOU_KINDS[p.iou_thresh_kind])   # [M, total]
            n_all = torch.arange(p.total, device=dev)
            extra = (lut[None, :] >= 0) & (n_all[None, :] != bn[:, None]) & (ious > p.iou_thresh)
            et, en = torch.nonzero(extra, as_tuple=True)
            ops_t, ops_n, ops_k = torch.cat([ops_t, et]), torch.cat([ops_n, en]), torch.cat([ops_k, en + 1])
        keep = lut[ops_n] >= 0
        ops_t, ops_n, ops_k = ops_t[keep], ops_n[keep], ops_k[keep]
        ci, cj = truth_cells(tr.box, W, H)
        oi, oj = ci[ops_t], cj[ops_t]
        slot = (tr.img[ops_t] * A + lut[ops_n]) * HW + oj * W + oi
        if slot.numel() and bool(((slot < 0) | (slot >= S)).any()):
            k = int(torch.nonzero((slot < 0) | (slot >= S))[0, 0])
            raise DataError(f"{p.where}: truth {tr.box[ops_t[k]].tolist()} of image "
                            f"{int(tr.img[ops_t[k]])} falls outside the layer's grid")
        rank = order_in_slot(slot, ops_t * (p.total + 1) + ops_k)

    # rows of every slot darknet writes besides the objectness plane
    tch = torch.unique(torch.cat([resp, slot]))
    R = torch.zeros(tch.numel(), K, device=dev)
    R[:, 4] = d_obj[tch]

    def rows_of(s: Tensor) -> tuple[Tensor, Tensor]:
        """(layer output rows, row positions in R) of flat slots ``s``."""
        o = activate_rows(p, vflat[s // HW, :, s % HW])
        o[:, 4] = obj_f[s]
        return o, torch.searchsorted(tch, s)

    if resp.numel():
        t = tidx.view(-1)[(resp // (A * HW)) * tidx.shape[1] + best_pos[resp]]
        c = tr.cls[t]
        mult = mult_t[c] if mult_t is not None else None
        o, at = rows_of(resp)
        rows = R[at]
        bi = best_iou[resp]
        if p.ab:
            rows[:, 4] = on * (bi * bi - o[:, 4]) if p.objectness_smooth else on * (1 - o[:, 4])
        else:
            rows[:, 4] = 1 - o[:, 4]
        rows[:, 5:] = class_op(p, rows[:, 5:], o[:, 5:], c, mult)
        if p.ab and p.objectness_smooth:
            k = torch.arange(resp.numel(), device=dev)
            rows[k, 5 + c] = (mult if mult is not None else 1.0) * (bi * bi - o[k, 5 + c])
        norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(bi))
        ri, rj, ra = resp % W, (resp // W) % H, (resp // HW) % A
        d, _, _ = box_delta(p, o, ri, rj, anchors[mask_t[ra]], tr.box[t], (W, H), (net_w, net_h), norm)
        rows[:, :4] = rows[:, :4] + d if p.ab else d
        R[at] = rows

    # ---- 2. every truth: assignments, applied in waves ----
    st = dict(iou=0.0, giou_loss=0.0, iou_loss=0.0, cat=0.0, obj=0.0, r50=0, r75=0, count=0)
    waves = int(rank.max()) + 1 if rank.numel() else 0
    for r in range(waves):
        sel = torch.nonzero(rank == r).flatten()
        s, t, n = slot[sel], ops_t[sel], ops_n[sel]
        truth, c = tr.box[t], tr.cls[t]
        mult = mult_t[c] if mult_t is not None else None
        o, at = rows_of(s)
        rows = R[at]
        norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(truth[:, 0]))
        d, iou, giou = box_delta(p, o, oi[sel], oj[sel], anchors[n], truth, (W, H), (net_w, net_h), norm)
        rows[:, :4] = rows[:, :4] + d if p.ab else d
        o4 = o[:, 4]
        target = iou if p.rescore else torch.ones_like(o4)
        if p.ab:
            cm = mult if mult is not None else 1.0
            val = cm * p.obj_normalizer * (target - o4)
            rows[:, 4] = torch.where(rows[:, 4] == 0, val, rows[:, 4]) if p.objectness_smooth else val
        else:
            rows[:, 4] = target - o4
        rows[:, 5:] = class_op(p, rows[:, 5:], o[:, 5:], c, mult)
        R[at] = rows
        st["iou"] += float(iou.sum())
        st["iou_loss"] += float((1 - iou).sum())
        st["giou_loss"] += float((1 - giou).sum())
        st["cat"] += float(o[torch.arange(c.numel(), device=dev), 5 + c].sum())
        st["obj"] += float(o4.sum())
        st["r50"] += int((iou > 0.5).sum())
        st["r75"] += int((iou > 0.75).sum())
        st["count"] += int(sel.numel())

    # ---- 3. AlexeyAB iou_thresh: average the accumulated box deltas ----
    if p.ab and p.iou_thresh < 1.0 and tch.numel():
        n_pos = (R[:, 5:] > 0).sum(1)
        div = (R[:, 4] != 0) & (n_pos > 0)
        R[:, :4] = torch.where(div[:, None], R[:, :4] / n_pos.clamp(min=1)[:, None].to(R.dtype), R[:, :4])

    d_obj = d_obj.clone()
    d_obj[tch] = R[:, 4]
    count = st["count"]
    obj_sq = (d_obj * d_obj).sum()
    box_sq = (R[:, :4] * R[:, :4]).sum()
    cls_sq = (R[:, 5:] * R[:, 5:]).sum()
    if p.ab and p.show_details and p.iou_loss != "mse":
        cnt = max(count, 1)
        box_part = st["giou_loss"] if p.iou_loss == "giou" else st["iou_loss"]
        cost = p.iou_normalizer * (box_part / cnt) + p.obj_normalizer * (obj_sq + cls_sq)
    else:
        cost = obj_sq + box_sq + cls_sq
    den = max(count, 1) if p.ab else count
    stats = stats_dict(avg_iou=ratio(st["iou"], den), cls=ratio(st["cat"], den),
                       obj=ratio(st["obj"], den), no_obj=float(obj_f.sum()) / S,
                       recall50=ratio(st["r50"], den), recall75=ratio(st["r75"], den),
                       count=count, cost=float(cost))
    sd = SparseDelta(tuple(x.shape), A, K, 4, d_obj, tch, R)
    return sd, torch.as_tensor(cost, dtype=torch.float32, device=dev), stats


def yolo_delta(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
               params: YoloParams | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` for a [yolo] head: ``(delta [N, C, H, W], cost, stats)``."""
    sd, cost, stats = yolo_sparse_delta(head, x, targets, input_hw, params)
    return sd.to_dense(), cost, stats


def yolo_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int], *,
              rescore: bool | None = None) -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of a [yolo] head; ``d loss / d x = -l.delta`` (times AlexeyAB's
    ``delta_normalizer``, which its GPU build applies in backward).

    ``rescore=True`` (a darknet_py extension, off by default) makes the objectness
    target of assigned predictions their IoU instead of 1.
    """
    p = yolo_params(head)
    if rescore is not None:
        p = replace(p, rescore=bool(rescore))
    sd, cost, stats = yolo_sparse_delta(head, x, targets, input_hw, p)
    return sparse_delta_loss(x, sd, cost, p.delta_normalizer if p.ab else 1.0), stats
