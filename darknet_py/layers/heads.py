"""Detection heads: [yolo], [Gaussian_yolo], [region], [detection].

In eval mode a head returns darknet's ``l.output`` for the layer (same NCHW
layout, the same entries activated; AlexeyAB's [region] keeps the NCHW layout,
see :class:`Region`); in train mode it returns its raw input,
which ``loss(x, targets, input_hw)`` turns into darknet's deltas.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..builder import BuildContext, register
from ..cfg import Section
from ..tree import Tree, check_tree_size, group_softmax, load_class_map, load_tree
from .base import DarknetLayer
from .conv import unsupported


def _check_channels(sec: Section, ctx: BuildContext, expected: int, formula: str) -> None:
    c, h, w = ctx.in_shape
    got = c if sec.type != "detection" else c * h * w
    if got == expected:
        return
    prev = ctx.layers[-1] if ctx.layers else None
    if prev is not None:
        p = prev.section
        what = f"layer {prev.index} [{p.name}] at {p.file}:{p.line} gives {got}"
        if p.type == "convolutional":
            what += f" (filters={p['filters']})"
    else:
        what = f"the input gives {got}"
    raise sec.error(f"layer {ctx.index} [{sec.name}] needs {expected} = {formula} input "
                    f"channels, but {what}")


class Head(DarknetLayer):
    """Common state of the heads: classes, anchors, and the options the loss reads."""

    #: the network's ``seen`` counter; the model keeps it current (region prior term)
    seen: int = 0

    @property
    def is_head(self) -> bool:
        return True

    @property
    def opts(self) -> dict[str, Any]:
        return self.section.options

    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]):
        """(loss, stats) whose gradient w.r.t. ``x`` is minus darknet's ``l.delta``.

        ``x``: Tensor[N, C, H, W], the head's raw input; ``targets``: Tensor[M, 6]
        rows (image, class, cx, cy, w, h) normalised; ``input_hw``: (net_h, net_w).
        """
        from ..loss import head_loss
        return head_loss(self, x, targets, input_hw)


def _anchors(sec: Section, total: int, key: str = "anchors") -> tuple[tuple[float, float], ...]:
    a = sec["anchors"] or ()
    if len(a) < 2 * total:
        raise sec.error(f"anchors= has {len(a)} numbers but num={total} needs {2 * total}", key)
    return tuple((a[2 * i], a[2 * i + 1]) for i in range(total))


class Yolo(Head):
    """[yolo]: x, y, objectness, classes through the logistic (AlexeyAB: scale_x_y,
    and nothing at all with new_coords=1); w, h raw."""

    type = "yolo"
    box_entries = 4

    def __init__(self, sec: Section, ctx: BuildContext):
        total = sec["num"]
        mask = sec["mask"] if sec["mask"] else tuple(range(total))
        if any(not 0 <= m < total for m in mask):
            raise sec.error(f"mask={','.join(map(str, mask))} refers to anchors outside 0..{total - 1} "
                            f"(num={total})", "mask")
        self.classes, self.total, self.mask, self.n = sec["classes"], total, tuple(mask), len(mask)
        per = self.box_entries + 1 + self.classes
        _check_channels(sec, ctx, self.n * per, f"{self.n} masks x ({self.box_entries}+1+{self.classes} classes)")
        super().__init__(sec, ctx, ctx.in_shape)
        self.anchors = _anchors(sec, total)
        self.scale_x_y = float(sec.get("scale_x_y", 1.0))
        self.new_coords = int(sec.get("new_coords", 0)) if self.dialect == "alexeyab" else 0
        self.per_anchor = per

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

    def forward(self, x: Tensor) -> Tensor:
        return x if self.training else self.activate(x)


class GaussianYolo(Yolo):
    """AlexeyAB [Gaussian_yolo]: per anchor x, sx, y, sy, w, sw, h, sh, obj, classes;
    logistic on x, sx, y, sy, sw, sh, objectness and classes."""

    type = "Gaussian_yolo"
    box_entries = 8

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


class Region(Head):
    """[region] (yolov2): anchors are in grid units.

    pjreddie's ``l.output``: logistic on x, y and objectness (not with
    ``background=1``), then a softmax over the classes at each location
    (``softmax=1``, over background + classes with ``background=1``) or the
    logistic on every class.  AlexeyAB's CPU [region] activates only the
    objectness (logistic) and the classes (softmax with ``softmax=1``, else
    nothing); its x, y go through the logistic when boxes are decoded.  (AlexeyAB
    also stores its buffer location-major, ``[h*w][n][entries]``; here both
    dialects keep the NCHW per-anchor-plane layout, ``postprocess`` reads each.)

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

    def __init__(self, sec: Section, ctx: BuildContext):
        self.classes, self.n, self.coords = sec["classes"], sec["num"], sec["coords"]
        self.background = sec["background"]
        per = self.coords + 1 + self.classes
        _check_channels(sec, ctx, self.n * per, f"num={self.n} x ({self.coords} coords+1+{self.classes} classes)")
        super().__init__(sec, ctx, ctx.in_shape)
        self.anchors = _anchors(sec, self.n)
        self.softmax = bool(sec["softmax"])
        self.per_anchor = per
        self.tree: Tree | None = None
        if sec["tree"]:
            if self.background:
                raise unsupported(sec, ctx, "tree= with background=1 is not supported", "background")
            self.tree = load_tree(sec)
            check_tree_size(sec, self.tree, self.classes, "classes")
            self.register_buffer("tree_group", self.tree.group_index(), persistent=False)
        #: ``map=``: the tree class of each label class (read by the loss only)
        self.class_map = load_class_map(sec, self.classes) if sec["map"] else None
        ab = self.dialect == "alexeyab"
        self.class_mode = ("tree" if self.tree is not None else "softmax" if self.softmax
                           else "raw" if ab else "logistic")

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

    def forward(self, x: Tensor) -> Tensor:
        return x if self.training else self.activate(x)


#: ``Region.class_mode`` -> the class activation on ``Tensor[N, A, classes, H, W]``
_CLASS_ACTIVATIONS = {
    "tree": lambda head, cls: group_softmax(cls, 2, head.tree_group, head.tree.groups, 1.0),
    "softmax": lambda head, cls: torch.softmax(cls, dim=2),
    "logistic": lambda head, cls: torch.sigmoid(cls),
    "raw": lambda head, cls: cls,
}


class Detection(Head):
    """[detection] (yolov1): the flat connected output, [side*side][classes] class
    scores, [side*side][n] confidences, [side*side][n][coords] boxes; with
    softmax=1 the class scores of each cell get a softmax, otherwise nothing is
    activated."""

    type = "detection"

    def __init__(self, sec: Section, ctx: BuildContext):
        self.classes, self.n, self.coords = sec["classes"], sec["num"], sec["coords"]
        self.side, self.sqrt, self.softmax = sec["side"], bool(sec["sqrt"]), bool(sec["softmax"])
        s2 = self.side * self.side
        expected = s2 * ((1 + self.coords) * self.n + self.classes)
        _check_channels(sec, ctx, expected,
                        f"side^2={s2} x ((1+{self.coords} coords) x num={self.n} + {self.classes} classes)")
        super().__init__(sec, ctx, ctx.in_shape)

    def activate(self, x: Tensor) -> Tensor:
        if not self.softmax:
            return x
        n = x.shape[0]
        flat = x.reshape(n, -1)
        s2 = self.side * self.side
        cls = torch.softmax(flat[:, : s2 * self.classes].view(n, s2, self.classes), dim=2)
        return torch.cat([cls.reshape(n, -1), flat[:, s2 * self.classes:]], dim=1).view_as(x)

    def forward(self, x: Tensor) -> Tensor:
        return x if self.training else self.activate(x)


register("yolo")(Yolo)
register("Gaussian_yolo")(GaussianYolo)
register("region")(Region)
register("detection")(Detection)
