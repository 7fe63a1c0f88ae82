"""Layers without weights that act on one input: dropout, softmax, crop, cost,
normalization (LRN), activation, empty."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..builder import BuildContext, register
from ..cfg import Section
from .base import DarknetLayer, flat
from .conv import activation_for


class Dropout(DarknetLayer):
    """Identity at inference; in training zero with probability p and scale by 1/(1-p)."""

    type = "dropout"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.probability = sec["probability"]

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.probability, self.training)


class Softmax(DarknetLayer):
    """Softmax over each of ``groups`` contiguous blocks of the flat input, of x/temperature."""

    type = "softmax"

    def __init__(self, sec: Section, ctx: BuildContext):
        if sec["tree"]:
            from ..errors import UnsupportedLayerError
            raise UnsupportedLayerError(f"layer {ctx.index} [softmax]: tree= (hierarchical "
                                        f"softmax) is not supported", sec.file, sec.line_of("tree"))
        super().__init__(sec, ctx, ctx.in_shape)
        c, h, w = ctx.in_shape
        self.groups, self.temperature, self.spatial = sec["groups"], sec["temperature"], sec["spatial"]
        if (c * h * w) % self.groups:
            raise sec.error(f"groups={self.groups} does not divide the {c * h * w} inputs", "groups")

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return torch.softmax(x / self.temperature, dim=1)
        n = x.shape[0]
        y = torch.softmax(flat(x).view(n, self.groups, -1) / self.temperature, dim=2)
        return y.view(x.shape)


class Crop(DarknetLayer):
    """pjreddie [crop] at inference: centre crop, then x*2-1 (x with noadjust=1)."""

    type = "crop"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        ch, cw = sec["crop_height"], sec["crop_width"]
        super().__init__(sec, ctx, (c, ch, cw))
        self.dh, self.dw = (h - ch) // 2, (w - cw) // 2
        self.scale, self.trans = (1.0, 0.0) if sec["noadjust"] else (2.0, -1.0)

    def forward(self, x: Tensor) -> Tensor:
        _, ch, cw = self.out_shape
        return x[:, :, self.dh:self.dh + ch, self.dw:self.dw + cw] * self.scale + self.trans


class Cost(DarknetLayer):
    """[cost]: passes its input through (the cost only matters in darknet's training)."""

    type = "cost"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x


class Normalization(DarknetLayer):
    """[normalization] (LRN): x * (kappa + alpha * sum of squares over `size` channels)^-beta."""

    type = "normalization"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.size, self.alpha, self.beta, self.kappa = sec["size"], sec["alpha"], sec["beta"], sec["kappa"]

    def forward(self, x: Tensor) -> Tensor:
        sq = (x * x).unsqueeze(1)  # [N, 1, C, H, W]
        half = self.size // 2
        sq = F.pad(sq, (0, 0, 0, 0, half, self.size - 1 - half))
        total = F.avg_pool3d(sq, (self.size, 1, 1), stride=1, divisor_override=1).squeeze(1)
        return x * torch.pow(self.kappa + self.alpha * total, -self.beta)


class Activation(DarknetLayer):
    type = "activation"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self.activation = activation_for(sec, ctx)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(x)


class Empty(DarknetLayer):
    type = "empty"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x


register("dropout")(Dropout)
register("softmax")(Softmax)
register("crop")(Crop)
register("cost")(Cost)
register("normalization")(Normalization)
register("activation")(Activation)
register("empty")(Empty)
