"""AlexeyAB's [Gaussian_yolo] loss (``forward_gaussian_yolo_layer``, Gaussian YOLOv3).

Per anchor the layer predicts ``x, sx, y, sy, w, sw, h, sh, obj, classes``: a
mean and an uncertainty (logistic) for each box coordinate.  The assignment is
the [yolo] one of AlexeyAB (ignore_thresh with the 0.25 class rule,
truth_thresh, best anchor over all anchors, iou_thresh extras) with these
differences, all from the C code:

* objectness deltas are scaled by ``cls_normalizer`` (not ``obj_normalizer``);
* the box delta is the gradient of the Gaussian negative log-likelihood of each
  coordinate (mean and sigma, ``sigma_const = 0.3``, ``epsi = 1e-9``), or with
  ``iou_loss`` != mse darknet's ``dx_box_iou`` for the means; sigma deltas are
  scaled by ``uc_normalizer``; everything is accumulated (``+=``);
* the class rule for an already-assigned slot looks at the class-0 delta;
* the box deltas of every slot are divided by its number of positive class deltas;
* truths are 5 floats per box; ``yolo_point`` moves the anchor point to a corner;
* ``cost = sum(delta^2)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import IOU_KINDS, box_giou_cxcywh, box_iou_cxcywh, dx_box_iou_cxcywh
from ..errors import DataError
from .base import delta_loss, f32, log_f, per_head, ratio, split_head_input, stats_dict
from .targets import (best_anchor, best_truth_per_prediction, order_in_slot, pad_by_image,
                      select_truths, shape_ious)
from .yolo import YoloParams, mask_lookup, smooth_label, yolo_params

SIGMA_CONST = f32(0.3)
EPSI = f32(1e-9)
POINTS = ("center", "left_top", "right_bottom")


@dataclass(frozen=True)
class GaussianParams:
    yolo: YoloParams
    uc_normalizer: float
    yolo_point: str


@per_head
def gaussian_params(head: Any) -> GaussianParams:
    o = head.opts
    point = str(o.get("yolo_point", "center"))
    yp = yolo_params(head)
    p = GaussianParams(yolo=replace(yp, new_coords=False), uc_normalizer=f32(o.get("uc_normalizer", 1.0)),
                       yolo_point=point if point in POINTS else "center")
    return p


def gaussian_box(mu: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor, grid_wh: tuple[int, int],
                 net_wh: tuple[int, int], point: str) -> Tensor:
    """``get_gaussian_yolo_box``: ``mu [K, 4]`` = (x, y, w, h) means -> ``Tensor[K, 4]``."""
    W, H = grid_wh
    nw, nh = net_wh
    bw = (torch.exp(mu[:, 2].double()) * anchor_wh[:, 0].double() / nw).to(mu.dtype)
    bh = (torch.exp(mu[:, 3].double()) * anchor_wh[:, 1].double() / nh).to(mu.dtype)
    bx = (i.to(mu.dtype) + mu[:, 0]) / W
    by = (j.to(mu.dtype) + mu[:, 1]) / H
    if point == "left_top":
        bx, by = bx + bw / 2, by + bh / 2
    elif point == "right_bottom":
        bx, by = bx - bw / 2, by - bh / 2
    return torch.stack([bx, by, bw, bh], 1)


def _nll_terms(d: Tensor, s: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Delta of a mean and of its sigma for the Gaussian NLL (darknet's double/float mix)."""
    in_exp = d / s
    in_exp_2 = (in_exp.double() ** 2).float()
    nd = (torch.exp(in_exp_2.double() * -0.5)
          / (math.sqrt(math.pi * 2.0) * (s + SIGMA_CONST).double())).float()
    temp = (0.5 / (nd + EPSI).double() * nd.double() * scale.double()).float()
    d_mu = ((temp * in_exp).double() * (1.0 / s.double())).float()
    d_sigma = (temp.double() * ((in_exp_2 / s).double() - 1.0 / (s + SIGMA_CONST).double())).float()
    return d_mu, d_sigma


def box_delta(gp: GaussianParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
              truth: Tensor, grid_wh: tuple[int, int], net_wh: tuple[int, int],
              norm: Tensor) -> tuple[Tensor, Tensor]:
    """``delta_gaussian_yolo_box``: ``(delta [K, 8], iou or giou [K])``."""
    p = gp.yolo
    W, H = grid_wh
    nw, nh = net_wh
    mu = out[:, [0, 2, 4, 6]]
    sig = out[:, [1, 3, 5, 7]]
    pred = gaussian_box(mu, i, j, anchor_wh, grid_wh, net_wh, gp.yolo_point)
    iou = box_iou_cxcywh(pred, truth, "alexeyab")
    scale = 2 - truth[:, 2] * truth[:, 3]
    tx = truth[:, 0] * W - i.to(truth.dtype)
    ty = truth[:, 1] * H - j.to(truth.dtype)
    if gp.yolo_point == "left_top":
        tx = (truth[:, 0] - truth[:, 2] / 2) * W - i.to(truth.dtype)
        ty = (truth[:, 1] - truth[:, 3] / 2) * H - j.to(truth.dtype)
    elif gp.yolo_point == "right_bottom":
        tx = (truth[:, 0] + truth[:, 2] / 2) * W - i.to(truth.dtype)
        ty = (truth[:, 1] + truth[:, 3] / 2) * H - j.to(truth.dtype)
    tw = log_f(truth[:, 2] * nw / anchor_wh[:, 0])
    th = log_f(truth[:, 3] * nh / anchor_wh[:, 1])
    t = torch.stack([tx, ty, tw, th], 1)
    d_mu, d_sig = _nll_terms(t - mu, sig, scale[:, None].expand_as(mu))
    if p.iou_loss != "mse":
        iou = box_giou_cxcywh(pred, truth)
        fixed = pred.clone()
        fixed[:, 2:] = torch.where(pred[:, 2:] == 0, torch.ones_like(pred[:, 2:]), pred[:, 2:])
        g = dx_box_iou_cxcywh(fixed, truth, p.iou_loss).clone()
        if gp.yolo_point == "left_top":
            g[:, 0], g[:, 1] = g[:, 0] - g[:, 2] / 2, g[:, 1] - g[:, 3] / 2
        elif gp.yolo_point == "right_bottom":
            g[:, 0], g[:, 1] = g[:, 0] + g[:, 2] / 2, g[:, 1] + g[:, 3] / 2
        g[:, 2:] = (g[:, 2:].double() * torch.exp(mu[:, 2:].double())).to(g.dtype)
        d_mu = g
    d_mu = d_mu * norm[:, None]
    d_sig = d_sig * gp.uc_normalizer
    d = torch.stack([d_mu[:, 0], d_sig[:, 0], d_mu[:, 1], d_sig[:, 1],
                     d_mu[:, 2], d_sig[:, 2], d_mu[:, 3], d_sig[:, 3]], 1)
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    if math.isfinite(p.max_delta):
        d = d.clamp(-p.max_delta, p.max_delta)
    return d, iou


def class_op(p: YoloParams, D: Tensor, P: Tensor, c: Tensor, mult: Tensor | None) -> Tensor:
    """``delta_gaussian_yolo_class``: "already assigned" = class-0 delta nonzero."""
    rows = torch.arange(D.shape[0], device=D.device)
    onehot = F.one_hot(c, p.classes).to(D.dtype)
    part = D.clone()
    pc = smooth_label(p, torch.ones_like(P[rows, c])) - P[rows, c]
    part[rows, c] = pc * mult if mult is not None else pc
    full = smooth_label(p, onehot) - P
    if mult is not None:
        full[rows, c] = full[rows, c] * mult
    return torch.where((D[:, 0] != 0)[:, None], part, full)


def truth_cells(box: Tensor, W: int, H: int, point: str) -> tuple[Tensor, Tensor]:
    if point == "center":
        return (box[:, 0] * W).long(), (box[:, 1] * H).long()
    sgn = -1 if point == "left_top" else 1
    fx = (box[:, 0] + sgn * box[:, 2] / 2) * W
    fy = (box[:, 1] + sgn * box[:, 3] / 2) * H
    fx = torch.clamp(torch.clamp(fx, min=0), max=W - 1)
    fy = torch.clamp(torch.clamp(fy, min=0), max=H - 1)
    return fx.long(), fy.long()


def gaussian_yolo_delta(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
                        params: GaussianParams | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [Gaussian_yolo] head: ``(delta [N, C, H, W], cost, stats)``."""
    gp = params or gaussian_params(head)
    p = gp.yolo
    A, C = p.n, p.classes
    K = 9 + C
    N, H, W = split_head_input(x, A, K, p.where)
    net_h, net_w = int(input_hw[0]), int(input_hw[1])
    dev = x.device
    out = head.activate(x.detach().float()).view(N, A, K, H, W).permute(0, 1, 3, 4, 2).reshape(-1, K)
    S, HW = out.shape[0], H * W
    anchors = torch.tensor(p.anchors, dtype=torch.float32, device=dev)
    mask_t = torch.tensor(p.mask, dtype=torch.long, device=dev)
    lut = torch.tensor(mask_lookup(p.mask, p.total), dtype=torch.long, device=dev)
    sl = torch.arange(S, device=dev)
    s_i, s_j, s_a = sl % W, (sl // W) % H, (sl // HW) % A
    mult_t = (torch.tensor(p.class_multipliers, dtype=torch.float32, device=dev)
              if p.class_multipliers else None)

    tr = select_truths(targets, N, p.max_boxes, p.where, dev)
    if tr.count and bool(((tr.cls < 0) | (tr.cls >= C)).any()):
        k = int(torch.nonzero((tr.cls < 0) | (tr.cls >= C))[0, 0])
        raise DataError(f"{p.where}: truth of image {int(tr.img[k])} has class {int(tr.cls[k])}, "
                        f"outside 0..{C - 1}")

    D = torch.zeros(S, K, device=dev)
    obj = out[:, 8]
    cn = p.cls_normalizer
    pred = gaussian_box(out[:, [0, 2, 4, 6]], s_i, s_j, anchors[mask_t[s_a]], (W, H), (net_w, net_h),
                        gp.yolo_point)
    tb, tv, tidx = pad_by_image(tr, N)
    best_iou, best_pos = best_truth_per_prediction(pred.view(N, A * HW, 4), tb, tv, "alexeyab")
    best_iou, best_pos = best_iou.reshape(-1), best_pos.reshape(-1)
    match_iou = torch.where((out[:, 9:] > 0.25).any(1), best_iou, torch.zeros_like(best_iou))
    D[:, 8] = torch.where(match_iou > p.ignore_thresh, torch.zeros_like(obj), cn * (0 - obj))
    resp = torch.nonzero(best_iou > p.truth_thresh).flatten()
    if resp.numel():
        t = tidx.view(-1)[(resp // (A * HW)) * tidx.shape[1] + best_pos[resp]]
        c = tr.cls[t]
        mult = mult_t[c] if mult_t is not None else None
        o = out[resp]
        D[resp, 8] = cn * (1 - o[:, 8])
        D[resp, 9:] = class_op(p, D[resp, 9:], o[:, 9:], c, mult)
        norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(o[:, 0]))
        d, _ = box_delta(gp, o, s_i[resp], s_j[resp], anchors[mask_t[s_a[resp]]], tr.box[t],
                         (W, H), (net_w, net_h), norm)
        D[resp, :8] = D[resp, :8] + d

    st = dict(iou=0.0, cat=0.0, obj=0.0, r50=0, r75=0, count=0)
    if tr.count:
        anc_norm = anchors / torch.tensor([net_w, net_h], dtype=torch.float32, device=dev)
        bn = best_anchor(tr.box[:, 2:4], anc_norm, "alexeyab")
        ops_t, ops_n, ops_k = torch.arange(tr.count, device=dev), bn, torch.zeros_like(bn)
        if p.iou_thresh < 1.0:
            ious = shape_ious(tr.box[:, 2:4], anc_norm, IOU_KINDS[p.iou_thresh_kind])
            n_all = torch.arange(p.total, device=dev)
            extra = (lut[None, :] >= 0) & (n_all[None, :] != bn[:, None]) & (ious > p.iou_thresh)
            et, en = torch.nonzero(extra, as_tuple=True)
            ops_t, ops_n, ops_k = torch.cat([ops_t, et]), torch.cat([ops_n, en]), torch.cat([ops_k, en + 1])
        keep = lut[ops_n] >= 0
        ops_t, ops_n, ops_k = ops_t[keep], ops_n[keep], ops_k[keep]
        ci, cj = truth_cells(tr.box, W, H, gp.yolo_point)
        oi, oj = ci[ops_t], cj[ops_t]
        slot = (tr.img[ops_t] * A + lut[ops_n]) * HW + oj * W + oi
        if slot.numel() and bool(((slot < 0) | (slot >= S)).any()):
            k = int(torch.nonzero((slot < 0) | (slot >= S))[0, 0])
            raise DataError(f"{p.where}: truth {tr.box[ops_t[k]].tolist()} falls outside the layer's grid")
        rank = order_in_slot(slot, ops_t * (p.total + 1) + ops_k)
        for r in range(int(rank.max()) + 1 if rank.numel() else 0):
            sel = torch.nonzero(rank == r).flatten()
            s, t, n = slot[sel], ops_t[sel], ops_n[sel]
            truth, c = tr.box[t], tr.cls[t]
            mult = mult_t[c] if mult_t is not None else None
            o, rows = out[s], D[s]
            norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(truth[:, 0]))
            d, iou = box_delta(gp, o, oi[sel], oj[sel], anchors[n], truth, (W, H), (net_w, net_h), norm)
            rows[:, :8] = rows[:, :8] + d
            cm = mult if mult is not None else 1.0
            rows[:, 8] = cm * cn * (1 - o[:, 8])
            rows[:, 9:] = class_op(p, rows[:, 9:], o[:, 9:], c, mult)
            D[s] = rows
            st["iou"] += float(iou.sum())
            st["cat"] += float(o[torch.arange(c.numel(), device=dev), 9 + c].sum())
            st["obj"] += float(o[:, 8].sum())
            st["r50"] += int((iou > 0.5).sum())
            st["r75"] += int((iou > 0.75).sum())
            st["count"] += int(sel.numel())

    n_pos = (D[:, 9:] > 0).sum(1)
    D[:, :8] = torch.where((n_pos > 0)[:, None], D[:, :8] / n_pos.clamp(min=1)[:, None].to(D.dtype), D[:, :8])
    cost = (D * D).sum()
    count = st["count"]
    stats = stats_dict(avg_iou=ratio(st["iou"], count), cls=ratio(st["cat"], count),
                       obj=ratio(st["obj"], count), no_obj=float(obj.sum()) / S,
                       recall50=ratio(st["r50"], count), recall75=ratio(st["r75"], count),
                       count=count, cost=float(cost))
    delta = D.view(N, A, H, W, K).permute(0, 1, 4, 2, 3).reshape(N, A * K, H, W)
    return delta, cost, stats


def gaussian_yolo_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of a [Gaussian_yolo] head; ``d loss / d x = -l.delta``."""
    gp = gaussian_params(head)
    delta, cost, stats = gaussian_yolo_delta(head, x, targets, input_hw, gp)
    return delta_loss(x, delta, cost), stats
