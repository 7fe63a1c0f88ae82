"""darknet's [region] (YOLOv2) training delta (``forward_region_layer`` of both
darknets), phase by phase.

Anchors are in grid units; x, y and objectness pass through the logistic and
the classes through a softmax (``softmax=1``; otherwise pjreddie applies the
logistic and AlexeyAB nothing).  Per image, in darknet's order:

1. every prediction: objectness delta ``noobject_scale*(0 - obj)``, zero when
   its box has IoU > ``thresh`` with a truth; while ``seen < 12800`` every
   prediction also gets a 0.01-scaled box delta towards its anchor prior
   (centre of the cell, anchor size);
2. every truth in order: best anchor at its cell by shape IoU (``bias_match``:
   the anchor's shape, else the predicted shape); box delta
   ``coord_scale*(2 - w*h)*(target - output)``, objectness
   ``object_scale*(1 - obj)`` (``rescore``: ``iou - obj``), class deltas
   ``class_scale*((c == cls) - p)`` (overwritten by a later truth of the slot).

With ``tree=`` (yolo9000) the classes go through the tree's group softmax
and a truth's class delta follows its path (``delta_region_class``'s tree
branch: every group on the path gets ``class_scale*(0 - p)``, the path nodes
``class_scale*(1 - p)``); ``map=`` maps label classes to tree classes first.
An image with a class-only truth (x and y > 100000) gets only that truth's
class delta at its most probable prediction (see :func:`class_only_deltas`).

AlexeyAB kept the older yolov2 code: its deltas for x, y and objectness carry
the logistic derivative, the box scale has no ``2 - w*h`` factor, it reads up
to ``max`` (default 200) truths and skips labels with a class >= ``classes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import box_iou_cxcywh
from ...errors import DataError
from ...tree import group_softmax, path_probability, tree_class_delta
from .delta import f32, focal_gradient, log_f, logistic_gradient, ratio, split_head_input, stats_dict
from .targets import (Assignments, BestTruths, Truths, TruthStats, best_truths, first_argmax_above_zero,
                      order_in_slot, select_truths, truth_cells)

if TYPE_CHECKING:
    from .region import RegionParams

#: below this ``seen`` every prediction is pulled towards its anchor prior
PRIOR_SEEN = 12800


# ================================================================ box and class deltas
def activate_rows(p: RegionParams, v: Tensor) -> Tensor:
    """Rows ``[S, K]`` of raw input -> the values darknet's delta formulas read:
    logistic x, y, objectness; softmax (or, pjreddie, logistic) classes."""
    out = v.clone()
    out[:, 0:2] = torch.sigmoid(v[:, 0:2])
    out[:, 4] = torch.sigmoid(v[:, 4])
    if p.tree is not None:
        out[:, 5:] = group_softmax(v[:, 5:], 1, p.tree.group_index(v.device), p.tree.groups, 1.0)
    elif p.softmax:
        out[:, 5:] = torch.softmax(v[:, 5:], dim=1)
    elif not p.ab:
        out[:, 5:] = torch.sigmoid(v[:, 5:])
    return out


def region_box(out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor, W: int, H: int) -> Tensor:
    """``get_region_box``: anchors in grid units, ``Tensor[K, 4]`` relative to the image."""
    bx = (i.to(out.dtype) + out[:, 0]) / W
    by = (j.to(out.dtype) + out[:, 1]) / H
    bw = (torch.exp(out[:, 2].double()) * anchor_wh[:, 0].double() / W).to(out.dtype)
    bh = (torch.exp(out[:, 3].double()) * anchor_wh[:, 1].double() / H).to(out.dtype)
    return torch.stack([bx, by, bw, bh], 1)


def box_delta(p: RegionParams, out: Tensor, i: Tensor, j: Tensor, anchor_wh: Tensor,
              truth: Tensor, W: int, H: int, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """``delta_region_box``: ``(delta [K, 4], iou [K])``."""
    pred = region_box(out, i, j, anchor_wh, W, H)
    iou = box_iou_cxcywh(pred, truth, p.dialect)
    tx = truth[:, 0] * W - i.to(truth.dtype)
    ty = truth[:, 1] * H - j.to(truth.dtype)
    tw = log_f(truth[:, 2] * W / anchor_wh[:, 0])
    th = log_f(truth[:, 3] * H / anchor_wh[:, 1])
    t = torch.stack([tx, ty, tw, th], 1)
    scale = torch.as_tensor(scale, dtype=out.dtype, device=out.device)
    if scale.dim() == 1:
        scale = scale[:, None]
    d = scale * (t - out[:, :4])
    if p.ab:
        d = d.clone()
        d[:, :2] = d[:, :2] * logistic_gradient(out[:, :2])
    return d, iou


def class_deltas(p: RegionParams, D: Tensor, P: Tensor, c: Tensor, scale: float) -> Tensor:
    """``delta_region_class`` on K slots (no softmax tree)."""
    onehot = F.one_hot(c, p.classes).to(D.dtype)
    full = scale * (onehot - P)
    if p.ab:
        if p.focal_loss:
            rows = torch.arange(c.numel(), device=D.device)
            full = full * (0.5 * focal_gradient(P[rows, c]))[:, None]
        return full
    if p.softmax:  # tag = !softmax: no "already assigned" rule
        return full
    rows = torch.arange(c.numel(), device=D.device)
    part = D.clone()
    part[rows, c] = scale * (1 - P[rows, c])
    return torch.where((D[:, 0] != 0)[:, None], part, full)


#: a truth with x and y above this is a class-only label (yolo9000's ImageNet images)
CLASS_ONLY = 100000


def split_class_only(p: RegionParams, tr: Truths, N: int) -> tuple[Truths, Tensor, Tensor]:
    """With a tree, darknet first scans each image's truths for a class-only one
    (x and y > 100000); the first such truth replaces the image's whole
    detection loss.  Returns (the other images' truths, ``Tensor[B]`` those
    images, ``Tensor[B]`` their class)."""
    none = torch.zeros(0, dtype=torch.long, device=tr.img.device)
    if p.tree is None or not tr.count:
        return tr, none, none
    only = (tr.box[:, 0] > CLASS_ONLY) & (tr.box[:, 1] > CLASS_ONLY)
    if not bool(only.any()):
        return tr, none, none
    past = tr.per_image + 1
    first = torch.full((N,), past, dtype=torch.long, device=tr.img.device)
    first = first.scatter_reduce(0, tr.img[only], tr.rank[only], "amin", include_self=True)
    pick = only & (tr.rank == first[tr.img])
    img, cls = tr.img[pick], tr.cls[pick]
    bad = (cls < 0) | (cls >= p.classes)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise DataError(f"{p.where}: class-only truth of image {int(img[k])} has class {int(cls[k])}, "
                        f"outside 0..{p.classes - 1}")
    return tr.subset(first[tr.img] == past), img, cls


def label_classes(p: RegionParams, tr: Truths) -> Tensor:
    """The class each truth's delta uses: its label, or ``map[label]`` with ``map=``
    (``Tensor[M]`` long); a label outside the classes (or the map) is a DataError
    (AlexeyAB has already dropped labels >= classes)."""
    cls = tr.cls
    limit = p.classes if p.class_map is None else int(p.class_map.numel())
    if p.ab and p.class_map is None:
        return cls
    bad = (cls < 0) | (cls >= limit)
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        of = "" if p.class_map is None else f" (map= has {limit} entries)"
        raise DataError(f"{p.where}: truth of image {int(tr.img[k])} has class {int(cls[k])}, "
                        f"outside 0..{limit - 1}{of}")
    return cls if p.class_map is None else p.class_map.to(cls.device)[cls]


def class_only_deltas(p: RegionParams, out: Tensor, D: Tensor, img: Tensor, cls: Tensor,
                      per_image: int) -> tuple[float, int]:
    """The class-only branch on images ``img`` (``Tensor[B]``), in place on ``D``
    (``[S, K]``): the prediction with the largest ``objectness * path probability``
    of the class (the first in darknet's scan order: anchor-major for pjreddie,
    location-major for AlexeyAB; the first of all when none is > 0) gets the tree
    class delta.  pjreddie also gives every prediction of the image the
    no-object delta and zeroes the chosen one's objectness delta.  Returns
    (sum of the path probabilities, B) for the stats."""
    B = int(img.numel())
    if B == 0:
        return 0.0, 0
    dev = out.device
    slots = img[:, None] * per_image + torch.arange(per_image, device=dev)[None, :]  # [B, A*HW]
    if p.ab:
        slots = slots.view(B, p.n, -1).transpose(1, 2).reshape(B, per_image)
    flat = slots.reshape(-1)
    path = torch.as_tensor(p.tree.path, device=dev)
    prob = out[flat, 4] * path_probability(out[flat, 5:], cls.repeat_interleave(per_image), path)
    vals = prob.view(B, per_image)
    vals = torch.where(vals > 0, vals, torch.zeros_like(vals))  # "if(p > maxp)" from maxp = 0
    best = torch.where(vals.amax(1) > 0, vals.argmax(1), torch.zeros_like(img))
    chosen = slots[torch.arange(B, device=dev), best]
    if not p.ab:
        D[flat, 4] = p.noobject_scale * (0 - out[flat, 4])
    rows, pred = tree_class_delta(D[chosen, 5:], out[chosen, 5:], cls, p.class_scale, p.tree)
    D[chosen, 5:] = rows
    if not p.ab:
        D[chosen, 4] = 0
    return float(pred.sum()), B


# ================================================================ the delta, phase by phase
@dataclass
class RegionGrid:
    """One call's predictions: ``out [S, K]`` the activated rows of the flat slots
    ``((image * A + anchor) * H + row) * W + col``, each slot's cell and anchor,
    and the anchors ``[A, 2]`` (grid units)."""

    N: int
    A: int
    K: int
    H: int
    W: int
    out: Tensor
    col: Tensor
    row: Tensor
    anchor: Tensor
    anchors: Tensor

    @property
    def HW(self) -> int:
        return self.H * self.W

    @property
    def S(self) -> int:
        return self.N * self.A * self.HW

    @property
    def device(self) -> torch.device:
        return self.out.device


def region_grid(p: RegionParams, x: Tensor) -> RegionGrid:
    A, K = p.n, 5 + p.classes
    N, H, W = split_head_input(x, A, K, p.where)
    raw = x.detach().float().view(N, A, K, H, W).permute(0, 1, 3, 4, 2).reshape(-1, K)
    out = activate_rows(p, raw)
    sl = torch.arange(out.shape[0], device=x.device)
    return RegionGrid(N, A, K, H, W, out, sl % W, (sl // W) % H, (sl // (H * W)) % A,
                      torch.tensor(p.anchors, dtype=torch.float32, device=x.device))


@dataclass
class RegionTruths:
    """The truths of one call, split as darknet treats them: ``boxes`` (detection
    truths) with ``cls`` the class their delta uses; ``only_img``/``only_cls`` the
    class-only truths (tree); ``normal [S]``: slots of images without one."""

    boxes: Truths
    cls: Tensor
    only_img: Tensor
    only_cls: Tensor
    normal: Tensor


def read_region_truths(p: RegionParams, targets: Tensor, g: RegionGrid) -> RegionTruths:
    tr = select_truths(targets, g.N, p.max_boxes, p.where, g.device)
    tr, only_img, only_cls = split_class_only(p, tr, g.N)
    if tr.count and p.ab:
        tr = tr.subset(tr.cls < p.classes)  # AlexeyAB: "continue" on class >= classes
    normal = torch.ones(g.N, dtype=torch.bool, device=g.device)
    normal[only_img] = False
    slot_image = torch.arange(g.S, device=g.device) // (g.A * g.HW)
    return RegionTruths(tr, label_classes(p, tr), only_img, only_cls, normal[slot_image])


def no_object_deltas(p: RegionParams, g: RegionGrid, best: BestTruths, normal: Tensor) -> Tensor:
    """Every prediction: ``noobject_scale * (0 - obj)``, 0 where it overlaps a truth
    by more than ``thresh`` (AlexeyAB: times the logistic derivative, towards the IoU
    with ``classfix=-1``, none in images with a class-only truth)."""
    obj = g.out[:, 4]
    ns = p.noobject_scale
    if not p.ab:
        return torch.where(best.iou > p.thresh, torch.zeros_like(obj), ns * (0 - obj))
    grad = logistic_gradient(obj)
    d_obj = ns * ((0 - obj) * grad)
    if p.classfix == -1:
        d_obj = ns * ((best.iou - obj) * grad)
    else:
        d_obj = torch.where(best.iou > p.thresh, torch.zeros_like(d_obj), d_obj)
    return torch.where(normal, d_obj, torch.zeros_like(d_obj))


def classfix_deltas(p: RegionParams, g: RegionGrid, D: Tensor, tr: Truths, best: BestTruths) -> int:
    """AlexeyAB ``classfix`` > 0: predictions overlapping a truth by more than
    ``thresh`` get its class delta (``classfix=2``: scaled by objectness); in place
    on ``D``.  Returns how many (for the class average)."""
    fixed = torch.nonzero(best.iou > p.thresh).flatten()
    if not fixed.numel():
        return 0
    t = best.truth_of(fixed)
    out = g.out
    sc = p.class_scale * (out[fixed, 4] if p.classfix == 2 else 1.0)
    sc = torch.as_tensor(sc, device=g.device).reshape(-1, 1)
    if p.tree is not None:  # the label's class, not mapped (as darknet)
        D[fixed, 5:] = tree_class_delta(D[fixed, 5:], out[fixed, 5:], tr.cls[t], sc, p.tree)[0]
    else:
        onehot = F.one_hot(tr.cls[t], p.classes).to(D.dtype)
        D[fixed, 5:] = sc * (onehot - out[fixed, 5:])
    return int(fixed.numel())


def prior_deltas(p: RegionParams, g: RegionGrid, normal: Tensor) -> Tensor:
    """While ``seen < 12800``: every box pulled (scale 0.01) towards its anchor
    prior, the cell centre with the anchor's size (``[S, 4]``)."""
    W, H = g.W, g.H
    prior = torch.stack([((g.col.double() + 0.5) / W).float(), ((g.row.double() + 0.5) / H).float(),
                         g.anchors[g.anchor, 0] / W, g.anchors[g.anchor, 1] / H], 1)
    d_prior, _ = box_delta(p, g.out, g.col, g.row, g.anchors[g.anchor], prior, W, H, f32(0.01))
    return torch.where(normal[:, None], d_prior, torch.zeros_like(d_prior))


def assign_truths_to_anchors(p: RegionParams, g: RegionGrid, tr: Truths) -> Assignments:
    """Each truth goes to its cell, to the anchor whose shape (``bias_match``: the
    anchor's, else the predicted box's) best matches the truth's; several truths
    of one slot are written in truth order."""
    M, A, W, H, HW = tr.count, g.A, g.W, g.H, g.HW
    dev = g.device
    ci, cj = truth_cells(tr.box, W, H)
    base = (tr.img * A) * HW + cj * W + ci                               # slot of anchor 0
    cand = base[:, None] + torch.arange(A, device=dev)[None, :] * HW     # [M, A]
    outside = (cand < 0) | (cand >= g.S)
    if bool(outside.any()):
        k = int(torch.nonzero(outside.any(1))[0, 0])
        raise DataError(f"{p.where}: truth {tr.box[k].tolist()} of image {int(tr.img[k])} "
                        f"falls outside the layer's grid")
    if p.bias_match:
        shape = (g.anchors / torch.tensor([W, H], dtype=torch.float32, device=dev))[None].expand(M, A, 2)
    else:
        flat = cand.reshape(-1)
        shape = region_box(g.out[flat], ci.repeat_interleave(A), cj.repeat_interleave(A),
                           g.anchors.repeat(M, 1), W, H)[:, 2:].view(M, A, 2)
    z = torch.zeros_like(shape)
    ious = box_iou_cxcywh(torch.cat([z, shape], 2),
                          torch.cat([torch.zeros_like(tr.box[:, None, :2]), tr.box[:, None, 2:]], 2),
                          p.dialect)
    best = first_argmax_above_zero(ious, 1)[1]
    slot = base + best * HW
    truth = torch.arange(M, device=dev)
    return Assignments(truth, best, slot, ci, cj, order_in_slot(slot, truth))


def assigned_deltas(p: RegionParams, g: RegionGrid, D: Tensor, tr: Truths, truth_cls: Tensor,
                    asg: Assignments, st: TruthStats) -> None:
    """Each assignment, wave by wave: box delta, objectness towards 1 (``rescore``:
    IoU), class deltas (tree: along the path); in place on ``D`` and ``st``."""
    for r in range(asg.waves):
        sel = torch.nonzero(asg.wave == r).flatten()
        s, n, c = asg.slot[sel], asg.anchor[sel], truth_cls[sel]
        truth = tr.box[sel]
        o = g.out[s]
        rows = D[s]
        scale = p.coord_scale if p.ab else p.coord_scale * (2 - truth[:, 2] * truth[:, 3])
        d, iou = box_delta(p, o, asg.col[sel], asg.row[sel], g.anchors[n], truth, g.W, g.H, scale)
        rows[:, :4] = d
        o4 = o[:, 4]
        target = iou if p.rescore else torch.ones_like(o4)
        os_ = p.object_scale
        rows[:, 4] = os_ * (target - o4) * logistic_gradient(o4) if p.ab else os_ * (target - o4)
        if p.tree is not None:
            rows[:, 5:], pc = tree_class_delta(rows[:, 5:], o[:, 5:], c, p.class_scale, p.tree)
        else:
            assigned = rows[:, 5] != 0  # pjreddie's "tag" rule (logistic classes)
            if p.ab or p.softmax:
                assigned = torch.zeros_like(assigned)
            rows[:, 5:] = class_deltas(p, rows[:, 5:], o[:, 5:], c, p.class_scale)
            pc = o[torch.arange(c.numel(), device=g.device), 5 + c]
            pc = torch.where(assigned, torch.zeros_like(pc), pc)
        D[s] = rows
        st.add(iou, iou, pc, o4)


def region_delta(p: RegionParams, x: Tensor, targets: Tensor, seen: int
                 ) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [region] head: ``(delta [N, C, H, W], cost, stats)``;
    ``seen``: the network's counter (prior term)."""
    g = region_grid(p, x)
    rt = read_region_truths(p, targets, g)
    tr = rt.boxes
    pred = region_box(g.out, g.col, g.row, g.anchors[g.anchor], g.W, g.H)
    best = best_truths(pred.view(g.N, g.A * g.HW, 4), tr, g.N, p.dialect)
    D = torch.zeros(g.S, g.K, device=g.device)
    D[:, 4] = no_object_deltas(p, g, best, rt.normal)
    class_count = classfix_deltas(p, g, D, tr, best) if p.ab and p.classfix > 0 else 0
    if seen < PRIOR_SEEN:
        D[:, :4] = prior_deltas(p, g, rt.normal)
    only_cat, only_count = class_only_deltas(p, g.out, D, rt.only_img, rt.only_cls, g.A * g.HW)
    class_count += only_count
    st = TruthStats(cat=only_cat)
    if tr.count:
        assigned_deltas(p, g, D, tr, rt.cls, assign_truths_to_anchors(p, g, tr), st)
    count = st.count
    class_count += count
    cost = (D * D).sum()
    stats = stats_dict(avg_iou=ratio(st.iou, count), cls=ratio(st.cat, class_count),
                       obj=ratio(st.obj, count), no_obj=float(g.out[:, 4].sum()) / g.S,
                       recall50=ratio(st.r50, count), recall75=float("nan"),
                       count=count, cost=float(cost))
    delta = D.view(g.N, g.A, g.H, g.W, g.K).permute(0, 1, 4, 2, 3).reshape(g.N, g.A * g.K, g.H, g.W)
    return delta, cost, stats
