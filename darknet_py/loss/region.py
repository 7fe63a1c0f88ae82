"""The [region] (YOLOv2) loss of both darknets (``forward_region_layer``).

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

The pjreddie CPU build back-propagates nothing from [region] (its
``backward_region_layer`` is empty) while its GPU build multiplies the x, y and
objectness deltas by the logistic derivative; :func:`region_loss` returns
``-l.delta`` as the gradient by default and offers both through ``backward=``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..boxes import box_iou_cxcywh
from ..errors import DataError, UnsupportedLayerError
from ..tree import Tree, group_softmax, path_probability, tree_class_delta
from .base import (delta_loss, DialectParams, f32, log_f, logistic_gradient, per_head, ratio,
                   split_head_input, stats_dict)
from .targets import (Truths, best_truth_per_prediction, first_argmax_above_zero, order_in_slot,
                      pad_by_image, select_truths, truth_cells)
from .yolo import where_of

#: pjreddie's region layer reads at most 30 truths per image
PJ_REGION_BOXES = 30
#: below this ``seen`` every prediction is pulled towards its anchor prior
PRIOR_SEEN = 12800
#: ``backward=`` choices of :func:`region_loss`
BACKWARDS = ("delta", "gpu", "cpu")


@dataclass(frozen=True)
class RegionParams(DialectParams):
    where: str
    dialect: str
    classes: int
    n: int
    coords: int
    anchors: tuple[tuple[float, float], ...]
    max_boxes: int
    thresh: float
    softmax: bool
    rescore: bool
    bias_match: bool
    classfix: int
    focal_loss: bool
    coord_scale: float
    object_scale: float
    noobject_scale: float
    class_scale: float
    #: ``tree=``: the hierarchy (class deltas along the path, class-only truths)
    tree: Tree | None = field(default=None, compare=False)
    #: ``map=``: the tree class of each label class, ``Tensor[labels]`` long
    class_map: Tensor | None = field(default=None, compare=False)


@per_head
def region_params(head: Any) -> RegionParams:
    sec, o = head.section, head.opts
    where = where_of(head)
    if head.coords != 4:
        raise UnsupportedLayerError(f"{where}: coords={head.coords} (mask deltas) is not supported "
                                    f"by the region loss", sec.file, sec.line)
    if head.background:
        raise UnsupportedLayerError(f"{where}: background=1 is not supported by the region loss",
                                    sec.file, sec.line)
    ab = head.dialect == "alexeyab"
    if ab:
        max_boxes = int(o["max"]) if "max" in sec else 200
    else:
        max_boxes = PJ_REGION_BOXES
    p = RegionParams(where=where, dialect=head.dialect, classes=head.classes, n=head.n,
                     coords=head.coords, anchors=tuple((f32(w), f32(h)) for w, h in head.anchors),
                     max_boxes=max_boxes, thresh=f32(o["thresh"]), softmax=bool(o["softmax"]),
                     rescore=bool(o["rescore"]), bias_match=bool(o["bias_match"]),
                     classfix=int(o.get("classfix", 0)) if ab else 0,
                     focal_loss=bool(o.get("focal_loss", 0)) if ab else False,
                     coord_scale=f32(o["coord_scale"]), object_scale=f32(o["object_scale"]),
                     noobject_scale=f32(o["noobject_scale"]), class_scale=f32(o["class_scale"]),
                     tree=getattr(head, "tree", None),
                     class_map=None if getattr(head, "class_map", None) is None
                     else torch.as_tensor(head.class_map, dtype=torch.long))
    return p


def activate(p: RegionParams, v: Tensor) -> Tensor:
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


def class_op(p: RegionParams, D: Tensor, P: Tensor, c: Tensor, scale: float) -> Tensor:
    """``delta_region_class`` on K slots (no softmax tree)."""
    onehot = F.one_hot(c, p.classes).to(D.dtype)
    full = scale * (onehot - P)
    if p.ab:
        if p.focal_loss:
            rows = torch.arange(c.numel(), device=D.device)
            pt = P[rows, c] + 1e-15
            grad = -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)
            full = full * (0.5 * grad)[:, None]
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


def region_delta(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int],
                 params: RegionParams | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """darknet's ``l.delta`` of a [region] head: ``(delta [N, C, H, W], cost, stats)``."""
    p = params or region_params(head)
    A, C = p.n, p.classes
    K = 5 + C
    N, H, W = split_head_input(x, A, K, p.where)
    dev = x.device
    raw = x.detach().float().view(N, A, K, H, W).permute(0, 1, 3, 4, 2).reshape(-1, K)
    out = activate(p, raw)
    S, HW = out.shape[0], H * W
    sl = torch.arange(S, device=dev)
    s_i, s_j, s_a = sl % W, (sl // W) % H, (sl // HW) % A
    anchors = torch.tensor(p.anchors, dtype=torch.float32, device=dev)
    seen = int(getattr(head, "seen", 0))

    tr = select_truths(targets, N, p.max_boxes, p.where, dev)
    tr, only_img, only_cls = split_class_only(p, tr, N)
    if tr.count and p.ab:
        tr = tr.subset(tr.cls < C)  # AlexeyAB: "continue" on class >= classes
    truth_cls = label_classes(p, tr)
    normal = torch.ones(N, dtype=torch.bool, device=dev)
    normal[only_img] = False
    normal = normal[sl // (A * HW)]  # [S]: slots whose image has no class-only truth

    D = torch.zeros(S, K, device=dev)
    obj = out[:, 4]
    pred = region_box(out, s_i, s_j, anchors[s_a], W, H)
    tb, tv, tidx = pad_by_image(tr, N)
    best_iou, best_pos = best_truth_per_prediction(pred.view(N, A * HW, 4), tb, tv, p.dialect)
    best_iou, best_pos = best_iou.reshape(-1), best_pos.reshape(-1)
    ns = p.noobject_scale
    if p.ab:
        g = logistic_gradient(obj)
        d_obj = ns * ((0 - obj) * g)
        if p.classfix == -1:
            d_obj = ns * ((best_iou - obj) * g)
        else:
            d_obj = torch.where(best_iou > p.thresh, torch.zeros_like(d_obj), d_obj)
        d_obj = torch.where(normal, d_obj, torch.zeros_like(d_obj))
    else:
        d_obj = torch.where(best_iou > p.thresh, torch.zeros_like(obj), ns * (0 - obj))
    D[:, 4] = d_obj
    class_count = 0
    if p.ab and p.classfix > 0:
        fixed = torch.nonzero(best_iou > p.thresh).flatten()
        if fixed.numel():
            t = tidx.view(-1)[(fixed // (A * HW)) * tidx.shape[1] + best_pos[fixed]]
            sc = p.class_scale * (out[fixed, 4] if p.classfix == 2 else 1.0)
            sc = torch.as_tensor(sc, device=dev).reshape(-1, 1)
            if p.tree is not None:  # the label's class, not mapped (as darknet)
                D[fixed, 5:] = tree_class_delta(D[fixed, 5:], out[fixed, 5:], tr.cls[t], sc, p.tree)[0]
            else:
                onehot = F.one_hot(tr.cls[t], C).to(D.dtype)
                D[fixed, 5:] = sc * (onehot - out[fixed, 5:])
            class_count += int(fixed.numel())
    if seen < PRIOR_SEEN:  # pull every box towards its anchor prior
        prior = torch.stack([((s_i.double() + 0.5) / W).float(), ((s_j.double() + 0.5) / H).float(),
                             anchors[s_a, 0] / W, anchors[s_a, 1] / H], 1)
        d_prior, _ = box_delta(p, out, s_i, s_j, anchors[s_a], prior, W, H, f32(0.01))
        D[:, :4] = torch.where(normal[:, None], d_prior, torch.zeros_like(d_prior))

    st = dict(iou=0.0, cat=0.0, obj=0.0, r50=0, count=0)
    only_cat, only_count = class_only_deltas(p, out, D, only_img, only_cls, A * HW)
    st["cat"] += only_cat
    class_count += only_count
    if tr.count:
        ci, cj = truth_cells(tr.box, W, H)
        base = (tr.img * A) * HW + cj * W + ci                               # slot of anchor 0
        cand = base[:, None] + torch.arange(A, device=dev)[None, :] * HW     # [M, A]
        if bool(((cand < 0) | (cand >= S)).any()):
            k = int(torch.nonzero(((cand < 0) | (cand >= S)).any(1))[0, 0])
            raise DataError(f"{p.where}: truth {tr.box[k].tolist()} of image {int(tr.img[k])} "
                            f"falls outside the layer's grid")
        if p.bias_match:
            shape = (anchors / torch.tensor([W, H], dtype=torch.float32, device=dev))[None].expand(tr.count, A, 2)
        else:
            flat = cand.reshape(-1)
            shape = region_box(out[flat], ci.repeat_interleave(A), cj.repeat_interleave(A),
                               anchors.repeat(tr.count, 1), W, H)[:, 2:].view(tr.count, A, 2)
        z = torch.zeros_like(shape)
        ious = box_iou_cxcywh(torch.cat([z, shape], 2),
                              torch.cat([torch.zeros_like(tr.box[:, None, :2]), tr.box[:, None, 2:]], 2),
                              p.dialect)
        bn = first_argmax_above_zero(ious, 1)[1]
        slot = base + bn * HW
        rank = order_in_slot(slot, torch.arange(tr.count, device=dev))
        waves = int(rank.max()) + 1
        os_ = p.object_scale
        for r in range(waves):
            sel = torch.nonzero(rank == r).flatten()
            s, n, c = slot[sel], bn[sel], truth_cls[sel]
            truth = tr.box[sel]
            o = out[s]
            rows = D[s]
            scale = p.coord_scale if p.ab else p.coord_scale * (2 - truth[:, 2] * truth[:, 3])
            d, iou = box_delta(p, o, ci[sel], cj[sel], anchors[n], truth, W, H, scale)
            rows[:, :4] = d
            o4 = o[:, 4]
            target = iou if p.rescore else torch.ones_like(o4)
            rows[:, 4] = os_ * (target - o4) * logistic_gradient(o4) if p.ab else os_ * (target - o4)
            if p.tree is not None:
                rows[:, 5:], pc = tree_class_delta(rows[:, 5:], o[:, 5:], c, p.class_scale, p.tree)
            else:
                assigned = rows[:, 5] != 0  # pjreddie's "tag" rule (logistic classes)
                if p.ab or p.softmax:
                    assigned = torch.zeros_like(assigned)
                rows[:, 5:] = class_op(p, rows[:, 5:], o[:, 5:], c, p.class_scale)
                pc = o[torch.arange(c.numel(), device=dev), 5 + c]
                pc = torch.where(assigned, torch.zeros_like(pc), pc)
            D[s] = rows
            st["iou"] += float(iou.sum())
            st["cat"] += float(pc.sum())
            st["obj"] += float(o4.sum())
            st["r50"] += int((iou > 0.5).sum())
            st["count"] += int(sel.numel())
    count = st["count"]
    class_count += count
    cost = (D * D).sum()
    stats = stats_dict(avg_iou=ratio(st["iou"], count), cls=ratio(st["cat"], class_count),
                       obj=ratio(st["obj"], count), no_obj=float(obj.sum()) / S,
                       recall50=ratio(st["r50"], count), recall75=float("nan"),
                       count=count, cost=float(cost))
    delta = D.view(N, A, H, W, K).permute(0, 1, 4, 2, 3).reshape(N, A * K, H, W)
    return delta, cost, stats


def region_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int], *,
                backward: str = "delta") -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of a [region] head.

    ``backward="delta"`` (default): ``d loss / d x = -l.delta``.  ``"gpu"``: the
    pjreddie GPU build's backward, which first multiplies the x, y and objectness
    deltas by the logistic derivative.  ``"cpu"``: the pjreddie CPU build, which
    back-propagates nothing (the gradient is 0; the cost is unchanged).
    """
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    p = region_params(head)
    delta, cost, stats = region_delta(head, x, targets, input_hw, p)
    if backward == "cpu":
        delta = torch.zeros_like(delta)
    elif backward == "gpu":
        N, Ch, H, W = delta.shape
        v = delta.view(N, p.n, -1, H, W).clone()
        y = torch.sigmoid(x.detach().float().view(N, p.n, -1, H, W))
        for e in (0, 1, 4):
            v[:, :, e] = v[:, :, e] * logistic_gradient(y[:, :, e])
        delta = v.view(N, Ch, H, W)
    return delta_loss(x, delta, cost), stats
