"""[region] (YOLOv2): the layer, its parameters, darknet's training delta
(``forward_region_layer`` of both darknets) and its decode.

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
objectness deltas by the logistic derivative; :meth:`Region.loss` returns
``-l.delta`` as the gradient by default and offers both through ``backward=``
(the trainer's darknet mode applies the GPU one through
:meth:`Region.darknet_backward`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...boxes import box_iou_cxcywh
from ...builder import BuildContext
from ...cfg import Section
from ...errors import DataError, UnsupportedLayerError
from ...postprocess import (CORRECTIONS, DecodeContext, Detections, F32, F64, anchors64, as_f32,
                            class_probs, correct_boxes_alexeyab, grid_cells, logistic_f32)
from ...tree import (Tree, check_tree_size, group_softmax, hierarchy_predictions,
                     hierarchy_top_prediction, last_above, load_class_map, load_tree,
                     path_probability, tree_class_delta)
from ..conv import unsupported
from .base import DialectParams, Head, check_channels, read_anchors, register_head, where_of
from .delta import (delta_loss, f32, focal_gradient, log_f, logistic_gradient, ratio, split_head_input,
                    stats_dict)
from .targets import (Assignments, BestTruths, Truths, TruthStats, best_truths, first_argmax_above_zero,
                      order_in_slot, select_truths, truth_cells)
from .yolo import traceable_anchor_boxes

#: pjreddie's region layer reads at most 30 truths per image
PJ_REGION_BOXES = 30
#: below this ``seen`` every prediction is pulled towards its anchor prior
PRIOR_SEEN = 12800
#: ``backward=`` choices of :meth:`Region.loss`
BACKWARDS = ("delta", "gpu", "cpu")


# ================================================================ parameters
@dataclass(frozen=True)
class RegionParams(DialectParams):
    where: str
    dialect: str
    classes: int
    n: int
    coords: int
    background: bool
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


def read_region_params(sec: Section, index: int, dialect: str, tree: Tree | None,
                       class_map: np.ndarray | None) -> RegionParams:
    """The [region] options, converted once (float32 like darknet)."""
    o = sec.options
    ab = dialect == "alexeyab"
    max_boxes = (int(o["max"]) if "max" in sec else 200) if ab else PJ_REGION_BOXES
    return RegionParams(
        where=where_of(index, sec), dialect=dialect, classes=sec["classes"], n=sec["num"],
        coords=sec["coords"], background=bool(sec["background"]),
        anchors=tuple((f32(w), f32(h)) for w, h in read_anchors(sec, sec["num"])),
        max_boxes=max_boxes, thresh=f32(o["thresh"]), softmax=bool(o["softmax"]),
        rescore=bool(o["rescore"]), bias_match=bool(o["bias_match"]),
        classfix=int(o.get("classfix", 0)) if ab else 0,
        focal_loss=bool(o.get("focal_loss", 0)) if ab else False,
        coord_scale=f32(o["coord_scale"]), object_scale=f32(o["object_scale"]),
        noobject_scale=f32(o["noobject_scale"]), class_scale=f32(o["class_scale"]),
        tree=tree, class_map=None if class_map is None else torch.as_tensor(class_map, dtype=torch.long))


def check_loss_supported(p: RegionParams, sec: Section) -> None:
    """The loss handles ``coords=4`` without ``background`` (the forward handles more)."""
    if p.coords != 4:
        raise UnsupportedLayerError(f"{p.where}: coords={p.coords} (mask deltas) is not supported "
                                    f"by the region loss", sec.file, sec.line)
    if p.background:
        raise UnsupportedLayerError(f"{p.where}: background=1 is not supported by the region loss",
                                    sec.file, sec.line)


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
    t = best.truth[fixed]
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


# ================================================================ decoding
def _tree_probs_pjreddie(tree: Tree, scale: np.ndarray, cls: np.ndarray, thresh: np.float32,
                         hier_thresh: np.float32) -> np.ndarray:
    """pjreddie's tree branch of ``get_region_detections`` (no ``map``): the path
    probabilities (``hierarchy_predictions``), then one class per box, the one
    ``hierarchy_top_prediction`` picks with ``hier_thresh``, with probability
    ``scale`` when ``scale > thresh`` (else 0).  ``cls``: ``float32 [K, classes]``."""
    top = hierarchy_top_prediction(hierarchy_predictions(cls, tree), tree, hier_thresh)
    prob = np.zeros_like(cls, dtype=F32)
    prob[np.arange(len(top)), top] = np.where(scale > thresh, scale, F32(0))
    return prob


def _tree_probs_alexeyab(tree: Tree, scale: np.ndarray, cls: np.ndarray, thresh: np.float32) -> np.ndarray:
    """AlexeyAB's tree branch of ``get_region_boxes`` (no ``map``; ``hier_thresh``
    is not read): the path probabilities, then only the highest class index whose
    path probability is > .5 is kept, with that probability (not times
    ``scale``) when ``scale > thresh``."""
    cum = hierarchy_predictions(cls, tree)
    found = last_above(cum, 0.5)
    rows = np.nonzero((found >= 0) & (scale > thresh))[0]
    prob = np.zeros_like(cls, dtype=F32)
    prob[rows, found[rows]] = cum[rows, found[rows]]
    return prob


def decode_region_pjreddie(p: RegionParams, out: Tensor, ctx: DecodeContext) -> Detections:
    """pjreddie ``get_region_detections``: every box, anchor-major
    (index ``n * w * h + i``); objectness 0 when not above thresh.  With a tree
    see :func:`_tree_probs_pjreddie` (``ctx.hier_thresh``)."""
    c, h, w = out.shape
    n, co = p.n, p.coords
    thresh = F32(ctx.thresh)
    v = as_f32(out).reshape(n, co + 1 + p.classes, h * w)
    col, row = grid_cells(h, w)
    anchors = anchors64(p.anchors)
    bx = np.empty((n, h * w, 4), F32)
    bx[:, :, 0] = (col[None] + v[:, 0]) / F32(w)
    bx[:, :, 1] = (row[None] + v[:, 1]) / F32(h)
    with np.errstate(over="ignore"):
        bx[:, :, 2] = (np.exp(v[:, 2].astype(F64)) * anchors[:, :1] / w).astype(F32)
        bx[:, :, 3] = (np.exp(v[:, 3].astype(F64)) * anchors[:, 1:] / h).astype(F32)
    scale = np.ones((n, h * w), F32) if p.background else v[:, co]
    obj = np.where(scale > thresh, scale, F32(0)).astype(F32).reshape(-1)
    cls = v[:, co + 1:co + 1 + p.classes].transpose(0, 2, 1).reshape(n * h * w, p.classes)
    if p.tree is not None:
        prob = _tree_probs_pjreddie(p.tree, scale.reshape(-1), cls, thresh, F32(ctx.hier_thresh))
    else:
        prob = class_probs(scale.reshape(-1), cls, thresh)
        prob[obj == 0] = 0
    boxes = CORRECTIONS[ctx.dialect](bx.reshape(-1, 4), ctx)
    k = n * h * w
    return Detections(boxes, obj, prob, np.zeros(k, np.int64), np.ones(k, bool), p.classes)


def decode_region_alexeyab(p: RegionParams, out: Tensor, ctx: DecodeContext) -> Detections:
    """AlexeyAB ``custom_get_region_detections``: every box, location-major
    (index ``i * n + a``), x/y through the logistic here, objectness 1,
    ``prob = objectness_output * p``.  With a tree see :func:`_tree_probs_alexeyab`."""
    c, h, w = out.shape
    n, per = p.n, p.coords + 1 + p.classes
    thresh = F32(ctx.thresh)
    v = as_f32(out).reshape(n, per, h * w).transpose(2, 0, 1).reshape(h * w * n, per)  # [i*n + a]
    loc = np.arange(h * w * n) // n
    a = np.arange(h * w * n) % n
    col, row = (loc % w).astype(F32), (loc // w).astype(F32)
    anchors = anchors64(p.anchors)[a]
    bx = np.empty((h * w * n, 4), F32)
    bx[:, 0] = (col + logistic_f32(v[:, 0])) / F32(w)
    bx[:, 1] = (row + logistic_f32(v[:, 1])) / F32(h)
    with np.errstate(over="ignore"):
        bx[:, 2] = (np.exp(v[:, 2].astype(F64)) * anchors[:, 0] / w).astype(F32)
        bx[:, 3] = (np.exp(v[:, 3].astype(F64)) * anchors[:, 1] / h).astype(F32)
    scale = v[:, 4].copy()
    if p.classfix == -1:
        scale[scale < F32(0.5)] = 0
    cls = v[:, 5:5 + p.classes]
    if p.tree is not None:
        prob = _tree_probs_alexeyab(p.tree, scale, cls, thresh)
    else:
        prob = class_probs(scale, cls, thresh)
    boxes = correct_boxes_alexeyab(bx, ctx)
    k = h * w * n
    return Detections(boxes, np.ones(k, F32), prob, np.zeros(k, np.int64), np.ones(k, bool), p.classes)


# ================================================================ the layer
class _LogisticDerivative(torch.autograd.Function):
    """Identity forward; backward multiplies the channels in ``mask`` by ``s*(1-s)``, s = sigmoid(x)."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor):  # type: ignore[override]
        ctx.save_for_backward(x, mask)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, mask = ctx.saved_tensors
        s = torch.sigmoid(x)
        return torch.where(mask, g * (s * (1 - s)), g), None


#: ``Region.class_mode`` -> the class activation on ``Tensor[N, A, classes, H, W]``
_CLASS_ACTIVATIONS = {
    "tree": lambda head, cls: group_softmax(cls, 2, head.tree_group, head.tree.groups, 1.0),
    "softmax": lambda head, cls: torch.softmax(cls, dim=2),
    "logistic": lambda head, cls: torch.sigmoid(cls),
    "raw": lambda head, cls: cls,
}


@register_head
class Region(Head):
    """[region] (yolov2): anchors are in grid units.

    pjreddie's ``l.output``: logistic on x, y and objectness (not with
    ``background=1``), then a softmax over the classes at each location
    (``softmax=1``, over background + classes with ``background=1``) or the
    logistic on every class.  AlexeyAB's CPU [region] activates only the
    objectness (logistic) and the classes (softmax with ``softmax=1``, else
    nothing); its x, y go through the logistic when boxes are decoded.  (AlexeyAB
    also stores its buffer location-major, ``[h*w][n][entries]``; here both
    dialects keep the NCHW per-anchor-plane layout, ``decode`` reads each.)

    ``tree=`` (yolo9000): the classes get ``softmax_tree`` instead, a softmax
    within each group of the tree (:mod:`darknet_py.tree`), temperature 1,
    whatever ``softmax=`` says.  AlexeyAB's CPU forward does exactly that per
    prediction.  pjreddie's CPU forward is broken for trees (its
    ``softmax_cpu`` call uses the wrong offsets and strides and the layer's
    temperature, which ``parse_region`` never sets: 0, so every value it writes
    is NaN; pjreddie/darknet issues #143, #144); its GPU build, which produced
    the published yolo9000 results, does the per-location group softmax, and
    so does this layer for both dialects.  ``map=`` is read here (darknet reads
    it when the cfg is loaded) and only used by the loss.
    """

    type = "region"
    traceable = True
    params: RegionParams

    def __init__(self, sec: Section, ctx: BuildContext):
        classes, n, coords = sec["classes"], sec["num"], sec["coords"]
        check_channels(sec, ctx, n * (coords + 1 + classes),
                       f"num={n} x ({coords} coords+1+{classes} classes)")
        super().__init__(sec, ctx, ctx.in_shape)
        tree: Tree | None = None
        if sec["tree"]:
            if sec["background"]:
                raise unsupported(sec, ctx, "tree= with background=1 is not supported", "background")
            tree = load_tree(sec)
            check_tree_size(sec, tree, classes, "classes")
            self.register_buffer("tree_group", tree.group_index(), persistent=False)
        class_map = load_class_map(sec, classes) if sec["map"] else None
        self.params = read_region_params(sec, ctx.index, ctx.dialect, tree, class_map)
        p = self.params
        self.class_mode = ("tree" if tree is not None else "softmax" if p.softmax
                           else "raw" if p.ab else "logistic")

    # views of the parameters
    @property
    def n(self) -> int:
        return self.params.n

    @property
    def coords(self) -> int:
        return self.params.coords

    @property
    def background(self) -> bool:
        return self.params.background

    @property
    def anchors(self) -> tuple[tuple[float, float], ...]:
        return self.params.anchors

    @property
    def softmax(self) -> bool:
        return self.params.softmax

    @property
    def tree(self) -> Tree | None:
        return self.params.tree

    @property
    def class_map(self) -> Tensor | None:
        """``map=``: the tree class of each label class (read by the loss only)."""
        return self.params.class_map

    @property
    def per_anchor(self) -> int:
        return self.coords + 1 + self.classes

    def activate_classes(self, cls: Tensor) -> Tensor:
        """``Tensor[N, A, classes, H, W]`` class entries -> their activation."""
        return _CLASS_ACTIVATIONS[self.class_mode](self, cls)

    def activate(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        v = x.reshape(n, self.n, self.per_anchor, h, w)
        co = self.coords
        if self.dialect == "alexeyab":
            obj = torch.sigmoid(v[:, :, co:co + 1])
            parts = [v[:, :, :co], obj, self.activate_classes(v[:, :, co + 1:])]
            return torch.cat(parts, dim=2).view(n, c, h, w)
        parts = [torch.sigmoid(v[:, :, :2]), v[:, :, 2:co]]
        if self.softmax and self.background:
            parts.append(torch.softmax(v[:, :, co:], dim=2))
        else:
            obj = v[:, :, co:co + 1]
            parts.append(obj if self.background else torch.sigmoid(obj))
            parts.append(self.activate_classes(v[:, :, co + 1:]))
        return torch.cat(parts, dim=2).view(n, c, h, w)

    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """darknet's ``l.delta``: ``(delta [N, C, H, W], cost, stats)``."""
        check_loss_supported(self.params, self.section)
        return region_delta(self.params, x, targets, int(self.seen))

    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int], *,
             backward: str = "delta") -> tuple[Tensor, dict[str, Any]]:
        """``(loss, stats)``.

        ``backward="delta"`` (default): ``d loss / d x = -l.delta``.  ``"gpu"``: the
        pjreddie GPU build's backward, which first multiplies the x, y and objectness
        deltas by the logistic derivative.  ``"cpu"``: the pjreddie CPU build, which
        back-propagates nothing (the gradient is 0; the cost is unchanged).
        """
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        delta, cost, stats = self.delta(x, targets, input_hw)
        if backward == "cpu":
            delta = torch.zeros_like(delta)
        elif backward == "gpu":
            N, Ch, H, W = delta.shape
            v = delta.view(N, self.n, -1, H, W).clone()
            y = torch.sigmoid(x.detach().float().view(N, self.n, -1, H, W))
            for e in (0, 1, 4):
                v[:, :, e] = v[:, :, e] * logistic_gradient(y[:, :, e])
            delta = v.view(N, Ch, H, W)
        return delta_loss(x, delta, cost), stats

    def darknet_backward(self, x: Tensor) -> Tensor:
        """pjreddie's GPU [region] backward: the logistic derivative on x, y and
        (unless background) objectness.  AlexeyAB's delta already carries it."""
        if self.dialect == "alexeyab":
            return x
        keep = torch.zeros(self.per_anchor, dtype=torch.bool, device=x.device)
        keep[0] = keep[1] = True
        if not self.background:
            keep[self.coords] = True
        mask = keep.repeat(self.n).view(1, -1, *([1] * (x.dim() - 2)))
        return _LogisticDerivative.apply(x, mask)

    def decode(self, out: Tensor, ctx: DecodeContext) -> Detections:
        if self.params.ab:
            return decode_region_alexeyab(self.params, out, ctx)
        return decode_region_pjreddie(self.params, out, ctx)

    def traceable_decode(self, y: Tensor, net_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """darknet's get_region_detections: anchors in grid units, anchor-major order."""
        boxes, obj, cls = traceable_anchor_boxes(y, list(self.anchors), self.per_anchor, self.coords, None,
                                                 False)
        if self.background:
            obj = torch.ones_like(obj)
        n = y.shape[0]
        return (boxes.reshape(n, -1, 4), obj.reshape(n, -1),
                (obj.unsqueeze(2) * cls).permute(0, 1, 3, 4, 2).reshape(n, -1, cls.shape[2]))
