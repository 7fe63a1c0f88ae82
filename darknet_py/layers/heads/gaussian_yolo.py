"""AlexeyAB's [Gaussian_yolo]: the layer, darknet's training delta
(``forward_gaussian_yolo_layer``, Gaussian YOLOv3) and its decode.

Per anchor the layer predicts ``x, sx, y, sy, w, sw, h, sh, obj, classes``: a
mean and an uncertainty (logistic) for each box coordinate.  The assignment is
the [yolo] one of AlexeyAB (ignore_thresh with the 0.25 class rule,
truth_thresh, best anchor over all anchors, iou_thresh extras; the functions of
:mod:`.yolo_targets`) with these differences, all from the C code:

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
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import box_giou_cxcywh, box_iou_cxcywh, dx_box_iou_cxcywh
from ...cfg import Section
from ...postprocess import DecodeContext, Detections, F32, F64, anchors64, correct_boxes_pjreddie
from .base import register_head
from .delta import DeltaResult, delta_loss, f32, log_f, ratio, split_head_input, stats_dict
from .targets import Assignments, BestTruths, Truths, TruthStats, best_truths
from .yolo import Yolo, YoloParams, objectness_candidates, read_yolo_params
from .yolo_targets import (CLASS_MATCH, YoloGrid, assign_truths_to_anchors, read_truths, smooth_label,
                           yolo_grid)

SIGMA_CONST = f32(0.3)
EPSI = f32(1e-9)
#: ``yolo_point=`` -> the shift of the box centre, in box sizes, from the decoded point
POINT_SHIFT = {"center": 0.0, "left_top": 0.5, "right_bottom": -0.5}
POINTS = tuple(POINT_SHIFT)
#: entries of the four means and the four sigmas in a prediction
MU, SIGMA = [0, 2, 4, 6], [1, 3, 5, 7]
OBJ = 8


@dataclass(frozen=True)
class GaussianParams(YoloParams):
    """The [yolo] options (``new_coords`` is always off) and the Gaussian ones."""

    uc_normalizer: float = 1.0
    yolo_point: str = "center"


def read_gaussian_params(sec: Section, index: int, dialect: str, mask: tuple[int, ...]) -> GaussianParams:
    yp = read_yolo_params(sec, index, dialect, mask)
    base = {f.name: getattr(yp, f.name) for f in fields(YoloParams)}
    point = str(sec.options.get("yolo_point", "center"))
    return GaussianParams(**{**base, "new_coords": False},
                          uc_normalizer=f32(sec.options.get("uc_normalizer", 1.0)),
                          yolo_point=point if point in POINTS else "center")


# ================================================================ box and class deltas
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


def gaussian_targets(truth: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor, grid_wh: tuple[int, int],
                     net_wh: tuple[int, int], point: str) -> Tensor:
    """The means' targets ``[K, 4]``: the truth's ``yolo_point`` relative to the
    cell, log of its size over the anchor."""
    W, H = grid_wh
    nw, nh = net_wh
    tx = truth[:, 0] * W - i.to(truth.dtype)
    ty = truth[:, 1] * H - j.to(truth.dtype)
    if point == "left_top":
        tx = (truth[:, 0] - truth[:, 2] / 2) * W - i.to(truth.dtype)
        ty = (truth[:, 1] - truth[:, 3] / 2) * H - j.to(truth.dtype)
    elif point == "right_bottom":
        tx = (truth[:, 0] + truth[:, 2] / 2) * W - i.to(truth.dtype)
        ty = (truth[:, 1] + truth[:, 3] / 2) * H - j.to(truth.dtype)
    tw = log_f(truth[:, 2] * nw / anchor_wh[:, 0])
    th = log_f(truth[:, 3] * nh / anchor_wh[:, 1])
    return torch.stack([tx, ty, tw, th], 1)


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


def iou_gradient_means(p: GaussianParams, pred: Tensor, truth: Tensor, mu: Tensor) -> Tensor:
    """``iou_loss`` != mse: darknet's ``dx_box_iou`` for the means, moved to the
    ``yolo_point`` and through exp() for w, h (``[K, 4]``)."""
    fixed = pred.clone()
    fixed[:, 2:] = torch.where(pred[:, 2:] == 0, torch.ones_like(pred[:, 2:]), pred[:, 2:])
    g = dx_box_iou_cxcywh(fixed, truth, p.iou_loss).clone()
    if p.yolo_point == "left_top":
        g[:, 0], g[:, 1] = g[:, 0] - g[:, 2] / 2, g[:, 1] - g[:, 3] / 2
    elif p.yolo_point == "right_bottom":
        g[:, 0], g[:, 1] = g[:, 0] + g[:, 2] / 2, g[:, 1] + g[:, 3] / 2
    g[:, 2:] = (g[:, 2:].double() * torch.exp(mu[:, 2:].double())).to(g.dtype)
    return g


def box_delta(p: GaussianParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
              truth: Tensor, grid_wh: tuple[int, int], net_wh: tuple[int, int],
              norm: Tensor) -> tuple[Tensor, Tensor]:
    """``delta_gaussian_yolo_box``: ``(delta [K, 8], iou or giou [K])``, entries in
    the layer's order (x, sx, y, sy, w, sw, h, sh)."""
    mu, sig = out[:, MU], out[:, SIGMA]
    pred = gaussian_box(mu, i, j, anchor_wh, grid_wh, net_wh, p.yolo_point)
    iou = box_iou_cxcywh(pred, truth, "alexeyab")
    scale = 2 - truth[:, 2] * truth[:, 3]
    t = gaussian_targets(truth, i, j, anchor_wh, grid_wh, net_wh, p.yolo_point)
    d_mu, d_sig = _nll_terms(t - mu, sig, scale[:, None].expand_as(mu))
    if p.iou_loss != "mse":
        iou = box_giou_cxcywh(pred, truth)
        d_mu = iou_gradient_means(p, pred, truth, mu)
    d_mu = d_mu * norm[:, None]
    d_sig = d_sig * p.uc_normalizer
    d = torch.stack([d_mu[:, 0], d_sig[:, 0], d_mu[:, 1], d_sig[:, 1],
                     d_mu[:, 2], d_sig[:, 2], d_mu[:, 3], d_sig[:, 3]], 1)
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    if math.isfinite(p.max_delta):
        d = d.clamp(-p.max_delta, p.max_delta)
    return d, iou


def class_deltas(p: YoloParams, D: Tensor, P: Tensor, c: Tensor, mult: Tensor | None) -> Tensor:
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
    """The cell of each truth's ``yolo_point`` (a corner is clamped into the grid)."""
    if point == "center":
        return (box[:, 0] * W).long(), (box[:, 1] * H).long()
    sgn = -1 if point == "left_top" else 1
    fx = (box[:, 0] + sgn * box[:, 2] / 2) * W
    fy = (box[:, 1] + sgn * box[:, 3] / 2) * H
    fx = torch.clamp(torch.clamp(fx, min=0), max=W - 1)
    fy = torch.clamp(torch.clamp(fy, min=0), max=H - 1)
    return fx.long(), fy.long()


# ================================================================ the delta, phase by phase
def prediction_boxes(p: GaussianParams, g: YoloGrid, out: Tensor) -> Tensor:
    """Every prediction's decoded box ``[N, A*H*W, 4]`` from its means (``out [S, K]``)."""
    i, j, a = g.slot_cells(torch.arange(g.S, device=g.device))
    pred = gaussian_box(out[:, MU], i, j, g.anchors[g.mask[a]], (g.W, g.H), (g.net_w, g.net_h), p.yolo_point)
    return pred.view(g.N, g.A * g.HW, 4)


def no_object_deltas(p: GaussianParams, out: Tensor, best: BestTruths) -> Tensor:
    """Every prediction: ``cls_normalizer * (0 - obj)``, 0 where it overlaps a truth
    by more than ``ignore_thresh`` and has a class output > 0.25."""
    match_iou = torch.where((out[:, OBJ + 1:] > CLASS_MATCH).any(1), best.iou, torch.zeros_like(best.iou))
    obj = out[:, OBJ]
    return torch.where(match_iou > p.ignore_thresh, torch.zeros_like(obj), p.cls_normalizer * (0 - obj))


def responsible_deltas(p: GaussianParams, g: YoloGrid, out: Tensor, D: Tensor, tr: Truths, best: BestTruths,
                       resp: Tensor) -> None:
    """Predictions with IoU > ``truth_thresh``: objectness towards 1, class and box
    deltas for their best truth (in place on ``D [S, K]``)."""
    if not resp.numel():
        return
    t = best.truth_of(resp)
    c = tr.cls[t]
    mult = g.multipliers(c)
    o = out[resp]
    D[resp, OBJ] = p.cls_normalizer * (1 - o[:, OBJ])
    D[resp, OBJ + 1:] = class_deltas(p, D[resp, OBJ + 1:], o[:, OBJ + 1:], c, mult)
    norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(o[:, 0]))
    i, j, a = g.slot_cells(resp)
    d, _ = box_delta(p, o, i, j, g.anchors[g.mask[a]], tr.box[t], (g.W, g.H), (g.net_w, g.net_h), norm)
    D[resp, :OBJ] = D[resp, :OBJ] + d


def assigned_deltas(p: GaussianParams, g: YoloGrid, out: Tensor, D: Tensor, tr: Truths,
                    asg: Assignments) -> TruthStats:
    """Each assignment, wave by wave: box deltas accumulated, objectness towards 1,
    class deltas (in place on ``D``)."""
    st = TruthStats()
    for r in range(asg.waves):
        sel = torch.nonzero(asg.wave == r).flatten()
        s, t, n = asg.slot[sel], asg.truth[sel], asg.anchor[sel]
        truth, c = tr.box[t], tr.cls[t]
        mult = g.multipliers(c)
        o, rows = out[s], D[s]
        norm = p.iou_normalizer * (mult if mult is not None else torch.ones_like(truth[:, 0]))
        d, iou = box_delta(p, o, asg.col[sel], asg.row[sel], g.anchors[n], truth, (g.W, g.H),
                           (g.net_w, g.net_h), norm)
        rows[:, :OBJ] = rows[:, :OBJ] + d
        cm = mult if mult is not None else 1.0
        rows[:, OBJ] = cm * p.cls_normalizer * (1 - o[:, OBJ])
        rows[:, OBJ + 1:] = class_deltas(p, rows[:, OBJ + 1:], o[:, OBJ + 1:], c, mult)
        D[s] = rows
        st.add(iou, iou, o[torch.arange(c.numel(), device=g.device), OBJ + 1 + c], o[:, OBJ])
    return st


def average_box_deltas(D: Tensor) -> None:
    """Every slot's box deltas divided by its number of positive class deltas (in place)."""
    n_pos = (D[:, OBJ + 1:] > 0).sum(1)
    D[:, :OBJ] = torch.where((n_pos > 0)[:, None], D[:, :OBJ] / n_pos.clamp(min=1)[:, None].to(D.dtype),
                             D[:, :OBJ])


def gaussian_yolo_delta(p: GaussianParams, out_nchw: Tensor, targets: Tensor, input_hw: tuple[int, int]
                        ) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [Gaussian_yolo] head from its layer output
    ``out_nchw`` (``Tensor[N, A*K, H, W]``): ``(delta (same shape), cost, stats)``."""
    g = yolo_grid(p, out_nchw, input_hw, box_entries=8)
    N, A, K, H, W = g.N, g.A, g.K, g.H, g.W
    out = g.raw.permute(0, 1, 3, 4, 2).reshape(-1, K)                 # [S, K] slot rows
    tr = read_truths(p, targets, g, skip_bad_classes=False)
    best = best_truths(prediction_boxes(p, g, out), tr, N, "alexeyab")
    D = torch.zeros(g.S, K, device=g.device)
    D[:, OBJ] = no_object_deltas(p, out, best)
    responsible_deltas(p, g, out, D, tr, best, torch.nonzero(best.iou > p.truth_thresh).flatten())
    asg = assign_truths_to_anchors(p, g, tr, truth_cells(tr.box, W, H, p.yolo_point),
                                   extra_anchors=p.iou_thresh < 1.0)
    st = assigned_deltas(p, g, out, D, tr, asg)
    average_box_deltas(D)
    cost = (D * D).sum()
    stats = stats_dict(avg_iou=ratio(st.iou, st.count), cls=ratio(st.cat, st.count),
                       obj=ratio(st.obj, st.count), no_obj=float(out[:, OBJ].sum()) / g.S,
                       recall50=ratio(st.r50, st.count), recall75=ratio(st.r75, st.count),
                       count=st.count, cost=float(cost))
    delta = D.view(N, A, H, W, K).permute(0, 1, 4, 2, 3).reshape(N, A * K, H, W)
    return delta, cost, stats


# ================================================================ decoding
def decode_gaussian_yolo(p: GaussianParams, out: Tensor, ctx: DecodeContext) -> Detections:
    """``get_gaussian_yolo_detections``: the box from mu x/y/w/h (entries 0, 2,
    4, 6), ``prob = objectness * p * (1 - mean uncertainty)``."""
    thresh = F32(ctx.thresh)
    found = objectness_candidates(out, 9 + p.classes, OBJ, anchors64(p.anchors)[np.asarray(p.mask)], thresh)
    if found is None:
        return Detections.empty(p.classes)
    sel, anchors, (w, h) = found.rows, found.anchors, found.grid_wh
    bx = np.empty((len(sel), 4), F32)
    with np.errstate(over="ignore"):
        bx[:, 2] = (np.exp(sel[:, 4].astype(F64)) * anchors[:, 0] / ctx.net_w).astype(F32)
        bx[:, 3] = (np.exp(sel[:, 6].astype(F64)) * anchors[:, 1] / ctx.net_h).astype(F32)
    shift = F32(POINT_SHIFT[p.yolo_point])
    bx[:, 0] = (found.col + sel[:, 0]) / F32(w)
    bx[:, 1] = (found.row + sel[:, 2]) / F32(h)
    if shift:  # the decoded point is a corner: move it to the centre
        bx[:, 0] = bx[:, 0] + shift * bx[:, 2]
        bx[:, 1] = bx[:, 1] + shift * bx[:, 3]
    obj = sel[:, OBJ]
    uc_sum = ((sel[:, 1] + sel[:, 3]) + sel[:, 5]) + sel[:, 7]
    scale = 1.0 - uc_sum.astype(F64) / 4.0
    prob = ((obj[:, None] * sel[:, 9:]).astype(F64) * scale[:, None]).astype(F32)
    prob = np.where(prob > thresh, prob, F32(0)).astype(F32)
    boxes = correct_boxes_pjreddie(bx, ctx)
    k = len(sel)
    return Detections(boxes, obj.copy(), prob, np.zeros(k, np.int64), np.ones(k, bool), p.classes)


# ================================================================ the layer
@register_head
class GaussianYolo(Yolo):
    """AlexeyAB [Gaussian_yolo]: per anchor x, sx, y, sy, w, sw, h, sh, obj, classes;
    logistic on x, sx, y, sy, sw, sh, objectness and classes."""

    type = "Gaussian_yolo"
    box_entries = 8
    traceable = False
    params: GaussianParams

    @staticmethod
    def read_params(sec: Section, index: int, dialect: str, mask: tuple[int, ...]) -> GaussianParams:
        return read_gaussian_params(sec, index, dialect, mask)

    def activate(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        v = x.reshape(n, self.n, self.per_anchor, h, w)
        sig = torch.sigmoid(v)
        keep_raw = torch.zeros(self.per_anchor, dtype=torch.bool, device=x.device)
        keep_raw[[4, 6]] = True  # w and h means stay raw
        y = torch.where(keep_raw.view(1, 1, -1, 1, 1), v, sig)
        if self.scale_x_y != 1.0:
            s = self.scale_x_y
            xy = y[:, :, [0, 2]] * s - 0.5 * (s - 1)
            y = y.clone()
            y[:, :, [0, 2]] = xy
        return y.reshape(n, c, h, w)

    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> DeltaResult:
        """darknet's ``l.delta``: ``(delta [N, C, H, W], cost, stats)``."""
        split_head_input(x, self.n, self.per_anchor, self.where)
        return gaussian_yolo_delta(self.params, self.activate(x.detach().float()), targets, input_hw)

    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """``(loss, stats)``; ``d loss / d x = -l.delta``."""
        delta, cost, stats = self.delta(x, targets, input_hw)
        return delta_loss(x, delta, cost), stats

    def decode(self, out: Tensor, ctx: DecodeContext) -> Detections:
        return decode_gaussian_yolo(self.params, out, ctx)

    def traceable_decode(self, y: Tensor, net_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        return super(Yolo, self).traceable_decode(y, net_hw)  # none: the base refusal
