"""[region] (YOLOv2): the layer, its parameters and its decode.

The training delta (``forward_region_layer`` of both darknets) is in
:mod:`.region_targets`.  The pjreddie CPU build back-propagates nothing from
[region] (its ``backward_region_layer`` is empty) while its GPU build multiplies
the x, y and objectness deltas by the logistic derivative; :meth:`Region.loss`
returns ``-l.delta`` as the gradient by default and offers both through
``backward=`` (the trainer's darknet mode applies the GPU one through
:meth:`Region.darknet_backward`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...builder import BuildContext
from ...cfg import Section
from ...errors import UnsupportedLayerError
from ...postprocess import (CORRECTIONS, DecodeContext, Detections, F32, F64, anchors64, as_f32,
                            class_probs, correct_boxes_alexeyab, grid_cells, logistic_f32)
from ...tree import (Tree, check_tree_size, group_softmax, hierarchy_predictions,
                     hierarchy_top_prediction, last_above, load_class_map, load_tree)
from ..common import unsupported
from .base import DialectParams, Head, check_channels, read_anchors, register_head, where_of
from .delta import DeltaResult, delta_loss, f32, logistic_gradient
from .region_targets import region_delta
from .yolo import traceable_anchor_boxes

#: pjreddie's region layer reads at most 30 truths per image
PJ_REGION_BOXES = 30
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

    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> DeltaResult:
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
        """darknet's get_region_detections: anchors in grid units; pjreddie anchor-major,
        AlexeyAB location-major with x, y through the logistic here (its output keeps
        them raw), objectness 1 and ``prob = objectness_output * p``."""
        if self.dialect == "alexeyab":
            return self._traceable_decode_alexeyab(y)
        boxes, obj, cls = traceable_anchor_boxes(y, list(self.anchors), self.per_anchor, self.coords, None,
                                                 False)
        if self.background:
            obj = torch.ones_like(obj)
        n = y.shape[0]
        return (boxes.reshape(n, -1, 4), obj.reshape(n, -1),
                (obj.unsqueeze(2) * cls).permute(0, 1, 3, 4, 2).reshape(n, -1, cls.shape[2]))

    def _traceable_decode_alexeyab(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """AlexeyAB ``custom_get_region_detections`` in torch (index ``i * n + a``)."""
        n, _, h, w = y.shape
        v = y.view(n, self.n, self.per_anchor, h, w)
        xy = 1.0 / (1.0 + torch.exp(-v[:, :, :2]))            # 1.f / (1.f + expf(-x))
        raw = torch.cat([xy, v[:, :, 2:]], dim=2).view_as(y)
        boxes, scale, cls = traceable_anchor_boxes(raw, list(self.anchors), self.per_anchor, self.coords,
                                                   None, False)
        if self.params.classfix == -1:
            scale = torch.where(scale < 0.5, torch.zeros_like(scale), scale)
        scores = scale.unsqueeze(2) * cls                     # [N, A, C, H, W]
        return (boxes.permute(0, 2, 3, 1, 4).reshape(n, -1, 4),
                torch.ones_like(scale).permute(0, 2, 3, 1).reshape(n, -1),
                scores.permute(0, 3, 4, 1, 2).reshape(n, -1, cls.shape[2]))
