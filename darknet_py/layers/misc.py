"""Layers without weights that act on one input: dropout, softmax, crop, cost,
normalization (LRN), activation, logistic, l2norm, empty/silence, contrastive."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..builder import BuildContext, register
from ..cfg import Section
from ..tree import Tree, check_tree_size, group_softmax, load_tree
from .base import DarknetLayer, flat
from .common import activation_for


class Dropout(DarknetLayer):
    """Identity at inference; in training zero with probability p and scale the rest by 1/(1-p)."""

    type = "dropout"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.probability = sec["probability"]

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.probability, self.training)


class Softmax(DarknetLayer):
    """``softmax_cpu``: per image, ``groups`` contiguous blocks of the flat input, each
    ``exp(x/t - max/t) / sum`` (t = temperature, max over the block of x).

    ``spatial=1`` only changes darknet's GPU path; its CPU forward (our reference)
    ignores it, and so do we.

    ``tree=`` (darknet9000): ``softmax_tree`` instead -- per image a softmax within
    each group of the tree over the flat input, with the temperature; ``groups=``
    is then only checked to divide the inputs (both darknets).  The tree must have one entry per input."""

    type = "softmax"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        c, h, w = ctx.in_shape
        self.groups, self.temperature = sec["groups"], sec["temperature"]
        if self.groups < 1 or (c * h * w) % self.groups:  # make_softmax_layer asserts it, tree or not
            raise sec.error(f"groups={self.groups} does not divide the {c * h * w} inputs", "groups")
        self.tree: Tree | None = None
        if sec["tree"]:
            self.tree = load_tree(sec)
            check_tree_size(sec, self.tree, c * h * w, "inputs")
            self.register_buffer("tree_group", self.tree.group_index(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = self.temperature
        if self.tree is not None:
            return group_softmax(flat(x), 1, self.tree_group, self.tree.groups, t).view(x.shape)
        v = flat(x).view(x.shape[0], self.groups, -1)
        e = torch.exp(v / t - v.amax(dim=2, keepdim=True) / t)
        return (e / e.sum(dim=2, keepdim=True)).view(x.shape)


class Crop(DarknetLayer):
    """[crop] at inference: the centre ``crop_height x crop_width`` window (offsets
    ``(h - crop_h)/2``), times 2 minus 1 (times 1 plus 0 with ``noadjust=1``)."""

    type = "crop"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        ch, cw = sec["crop_height"], sec["crop_width"]
        if not (0 < ch <= h and 0 < cw <= w):
            raise sec.error(f"crop {ch}x{cw} does not fit the {h}x{w} input", "crop_height")
        super().__init__(sec, ctx, (c, ch, cw))
        self.dh, self.dw = (h - ch) // 2, (w - cw) // 2
        self.scale, self.trans = (1.0, 0.0) if sec["noadjust"] else (2.0, -1.0)

    def forward(self, x: Tensor) -> Tensor:
        _, ch, cw = self.out_shape
        return x[:, :, self.dh:self.dh + ch, self.dw:self.dw + cw] * self.scale + self.trans


class Cost(DarknetLayer):
    """[cost]: passes its input through.

    darknet's ``l.output`` is the per-element cost, all zeros without a truth;
    ``network_predict`` skips cost layers and returns the layer before, which is
    what passing through gives the network's last output."""

    type = "cost"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x


class Normalization(DarknetLayer):
    """[normalization] (LRN): ``x * norms^-beta``, ``norms`` as ``forward_normalization_layer``
    builds them: channel 0 starts from ``kappa + alpha * sum(sq[0 : size/2])``, then each
    channel k copies k-1, subtracts ``alpha*sq[k - (size-1)/2 - 1]`` and adds
    ``alpha*sq[k + size/2]`` when in range.  (So channel ``size/2``'s square is never
    added, but subtracted later: darknet's window is the usual one minus
    ``alpha*sq[size/2]``.)  The channels run in darknet's order for its rounding."""

    type = "normalization"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.size, self.alpha, self.beta, self.kappa = sec["size"], sec["alpha"], sec["beta"], sec["kappa"]

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        sq = x * x
        cur = torch.full_like(x[:, 0], self.kappa)
        for k in range(min(self.size // 2, c)):  # beyond c darknet reads zeroed squares
            cur = cur + self.alpha * sq[:, k]
        norms = [cur]
        for k in range(1, c):
            prev, nxt = k - (self.size - 1) // 2 - 1, k + self.size // 2
            if prev >= 0:
                cur = cur + (-self.alpha) * sq[:, prev]
            if nxt < c:
                cur = cur + self.alpha * sq[:, nxt]
            norms.append(cur)
        norm = torch.stack(norms, 1)
        # pow_cpu is C pow() in double, rounded to float
        return torch.pow(norm.double(), -self.beta).to(x.dtype) * x


class Activation(DarknetLayer):
    """[activation]: the named activation of the dialect."""

    type = "activation"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.activation = activation_for(sec, ctx)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)


class Logistic(DarknetLayer):
    """pjreddie [logistic]: ``1./(1. + exp(-x))`` (its cross-entropy cost is training only)."""

    type = "logistic"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        from ..activations import get_activation
        self.activation = get_activation("logistic", ctx.dialect)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)


class L2Norm(DarknetLayer):
    """pjreddie [l2norm]: each position divided by the L2 norm over channels (no epsilon:
    a zero vector gives NaN, as ``l2normalize_cpu``)."""

    type = "l2norm"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x / torch.sqrt((x * x).sum(dim=1, keepdim=True))


class Empty(DarknetLayer):
    """AlexeyAB [empty] / [silence]: the previous output, unchanged."""

    type = "empty"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x


class Contrastive(DarknetLayer):
    """AlexeyAB [contrastive]: a training-only loss.  At inference darknet returns at
    once and its output stays the zeros it was allocated with; so does this layer's
    (``Tensor[N, C, H, W]`` of zeros; darknet reports no output size)."""

    type = "contrastive"

    def __init__(self, sec: Section, ctx: BuildContext):
        raw = sec["yolo_layer"]
        idx = ctx.index + raw if raw < 0 else raw
        if idx == 0 or not 0 < idx < ctx.index:
            raise sec.error(f"yolo_layer={raw} must name an earlier [yolo] layer (darknet "
                            f"dereferences it)", "yolo_layer")
        if ctx.layers[idx].section.type != "yolo":
            raise sec.error(f"yolo_layer={raw} is layer {idx} [{ctx.layers[idx].section.name}], "
                            f"not a [yolo] layer", "yolo_layer")
        super().__init__(sec, ctx, ctx.in_shape)
        self.yolo_layer = idx

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


register("dropout")(Dropout)
register("softmax")(Softmax)
register("crop")(Crop)
register("cost")(Cost)
register("normalization")(Normalization)
register("activation")(Activation)
register("logistic")(Logistic)
register("l2norm")(L2Norm)
register("empty")(Empty)
register("contrastive")(Contrastive)
