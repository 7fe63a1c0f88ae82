"""Layers that read other layers or move data: route, shortcut, scale_channels,
sam, upsample, reorg, reorg3d, implicit_add / implicit_mul."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..builder import BuildContext, register
from ..cfg import Section
from ..errors import UnsupportedLayerError
from .base import DarknetLayer, flat
from .conv import activation_for


class Route(DarknetLayer):
    """Channel concatenation; AlexeyAB ``groups``/``group_id`` keep one block of each input."""

    type = "route"

    def __init__(self, sec: Section, ctx: BuildContext):
        if not sec["layers"]:
            raise sec.error("[route] needs layers=", None)
        sources = [ctx.resolve(sec, "layers", v) for v in sec["layers"]]
        groups, gid = sec["groups"], sec["group_id"]
        if groups < 1 or not 0 <= gid < groups:
            raise sec.error(f"group_id={gid} must lie in [0, groups={groups})", "group_id")
        shapes = [ctx.shapes[s] for s in sources]
        _, h, w = shapes[0]
        for s, (c, sh, sw) in zip(sources, shapes):
            if (sh, sw) != (h, w):
                raise sec.error(f"layer {ctx.index}: route input layer {s} is {c}x{sh}x{sw} but "
                                f"layer {sources[0]} is {shapes[0][0]}x{h}x{w}; spatial sizes must "
                                f"match", "layers")
            if c % groups:
                raise sec.error(f"layer {s} has {c} channels, not divisible by groups={groups}",
                                "groups")
        out_c = sum(c // groups for c, _, _ in shapes)
        super().__init__(sec, ctx, (out_c, h, w), sources)
        self.groups, self.group_id = groups, gid

    def forward(self, *xs: Tensor) -> Tensor:
        if self.groups > 1:
            xs = tuple(x.chunk(self.groups, dim=1)[self.group_id] for x in xs)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)


class Shortcut(DarknetLayer):
    """Residual addition of ``from`` layers to the previous output, then activation.

    pjreddie: out = alpha*prev + beta*from, sampled with integer strides when
    the shapes differ (only min(C) channels added).  AlexeyAB: several ``from``
    layers, optional weights (per_feature / per_channel, normalised by relu or
    softmax), inputs of other sizes added over the flat prefix they share.
    """

    type = "shortcut"

    def __init__(self, sec: Section, ctx: BuildContext):
        if not sec["from"]:
            raise sec.error("[shortcut] needs from=")
        frm = [ctx.resolve(sec, "from", v) for v in sec["from"]]
        if ctx.dialect == "pjreddie" and len(frm) > 1:
            raise sec.error("pjreddie [shortcut] takes one from= layer", "from")
        super().__init__(sec, ctx, ctx.in_shape, [ctx.index - 1] + frm)
        self.activation = activation_for(sec, ctx)
        self.alpha, self.beta = sec["alpha"], sec["beta"]
        self.from_shapes = [ctx.shapes[f] for f in frm]
        c = ctx.in_shape[0]
        wt = sec["weights_type"]
        n = len(frm)
        if wt == "per_feature":
            shape: tuple[int, ...] = (n + 1,)
        elif wt == "per_channel":
            shape = (n + 1, c)
        elif wt == "none":
            shape = ()
        else:
            raise sec.error(f"weights_type={wt!r}: expected none, per_feature or per_channel",
                            "weights_type")
        norm = sec["weights_normalization"]
        if norm not in ("none", "relu", "softmax"):
            raise sec.error(f"weights_normalization={norm!r}: expected none, relu or softmax",
                            "weights_normalization")
        self.weights_normalization = norm
        self.weights = nn.Parameter(torch.ones(shape)) if shape else None

    def darknet_tensors(self):
        return [] if self.weights is None else [("weights", self.weights)]

    def forward(self, x: Tensor, *adds: Tensor) -> Tensor:
        if self.dialect == "pjreddie":
            return self.activation(self._pj(x, adds[0]))
        return self.activation(self._ab(x, adds))

    def _pj(self, out: Tensor, add: Tensor) -> Tensor:
        c1, h1, w1 = add.shape[1:]
        c2, h2, w2 = out.shape[1:]
        if (c1, h1, w1) == (c2, h2, w2):
            return self.alpha * out + self.beta * add
        stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
        mc, mh, mw = min(c1, c2), min(h1, h2), min(w1, w2)
        part = add[:, :mc, ::stride, ::stride][:, :, :mh, :mw]
        out = out.clone()
        view = out[:, :mc, : mh * sample : sample, : mw * sample : sample]
        out[:, :mc, : mh * sample : sample, : mw * sample : sample] = self.alpha * view + self.beta * part
        return out

    def _layer_weights(self, x: Tensor) -> list[Tensor] | None:
        """One broadcastable weight per input (previous layer first), normalised."""
        if self.weights is None:
            return None
        w = self.weights
        if self.weights_normalization == "relu":
            r = torch.relu(w)
            w = r / (0.0001 + r.sum(dim=0, keepdim=True))
        elif self.weights_normalization == "softmax":
            e = torch.exp(w - w.max(dim=0, keepdim=True).values)
            w = e / (0.0001 + e.sum(dim=0, keepdim=True))
        shape = (1, -1, 1, 1) if w.dim() == 2 else (1, 1, 1, 1)
        return [w[i].reshape(shape) for i in range(w.shape[0])]

    def _ab(self, x: Tensor, adds: tuple[Tensor, ...]) -> Tensor:
        ws = self._layer_weights(x)
        out = x * ws[0] if ws is not None else x
        for i, a in enumerate(adds):
            w = ws[i + 1] if ws is not None else None
            if a.shape == x.shape:
                out = out + (a * w if w is not None else a)
                continue
            # other sizes: darknet adds over the flat prefix both outputs have
            n = min(out[0].numel(), a[0].numel())
            af = flat(a)[:, :n]
            if w is not None:
                af = af * flat(w.expand(1, *x.shape[1:]))[:, :n]
            of = flat(out)
            out = torch.cat([of[:, :n] + af, of[:, n:]], dim=1).view_as(x)
        return out


class ScaleChannels(DarknetLayer):
    """AlexeyAB [scale_channels]: ``from`` output scaled by this input per channel
    (or per position with scale_wh=1), then activation."""

    type = "scale_channels"

    def __init__(self, sec: Section, ctx: BuildContext):
        if sec["from"] is None:
            raise sec.error("[scale_channels] needs from=")
        frm = ctx.resolve(sec, "from", sec["from"])
        super().__init__(sec, ctx, ctx.shapes[frm], [ctx.index - 1, frm])
        self.scale_wh = bool(sec["scale_wh"])
        self.activation = activation_for(sec, ctx)

    def forward(self, scale: Tensor, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = scale.reshape(n, 1, h, w) if self.scale_wh else scale.reshape(n, c, 1, 1)
        return self.activation(x * s)


class Sam(DarknetLayer):
    """AlexeyAB [sam]: element-wise product of this input and the ``from`` output."""

    type = "sam"

    def __init__(self, sec: Section, ctx: BuildContext):
        if sec["from"] is None:
            raise sec.error("[sam] needs from=")
        frm = ctx.resolve(sec, "from", sec["from"])
        super().__init__(sec, ctx, ctx.shapes[frm], [ctx.index - 1, frm])
        self.activation = activation_for(sec, ctx)

    def forward(self, scale: Tensor, x: Tensor) -> Tensor:
        return self.activation(x * scale.reshape(x.shape))


class Upsample(DarknetLayer):
    """Nearest-neighbour upsampling times ``scale``; a negative stride sums
    stride x stride blocks instead (darknet's reverse mode)."""

    type = "upsample"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        stride = sec["stride"]
        self_reverse = stride < 0
        stride = abs(stride)
        out = (c, h // stride, w // stride) if self_reverse else (c, h * stride, w * stride)
        super().__init__(sec, ctx, out)
        self.stride, self.reverse, self.scale = stride, self_reverse, sec["scale"]

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        if self.reverse:
            n, c, h, w = x.shape
            oh, ow = h // s, w // s
            x = x[:, :, : oh * s, : ow * s].reshape(n, c, oh, s, ow, s).sum(dim=(3, 5))
            return self.scale * x
        y = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        return y if self.scale == 1.0 else self.scale * y


def reorg_index(c: int, h: int, w: int, stride: int) -> torch.Tensor:
    """darknet's reorg_cpu index map for one image: ``in_index -> out_index``."""
    out_c = c // (stride * stride)
    k = torch.arange(c).view(c, 1, 1)
    j = torch.arange(h).view(1, h, 1)
    i = torch.arange(w).view(1, 1, w)
    c2, offset = k % out_c, k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    return (w2 + w * stride * (h2 + h * stride * c2)).reshape(-1)


class Reorg(DarknetLayer):
    """darknet's [reorg]: NOT a plain space-to-depth, but darknet's own index map
    (reorg_cpu with forward=0), reproduced through a fixed gather index."""

    type = "reorg"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        s = sec["stride"]
        if sec.get("flatten") or sec.get("extra"):
            raise UnsupportedLayerError(f"layer {ctx.index} [reorg]: flatten/extra are not "
                                        f"supported", sec.file, sec.line)
        self.reverse = bool(sec["reverse"])
        out = (c // (s * s), h * s, w * s) if self.reverse else (c * s * s, h // s, w // s)
        super().__init__(sec, ctx, out)
        self.stride = s
        idx = reorg_index(c, h, w, s)
        if self.reverse:
            idx = torch.argsort(idx)
        self.register_buffer("gather_index", idx, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return flat(x)[:, self.gather_index].view(x.shape[0], *self.out_shape)


class Reorg3d(DarknetLayer):
    """AlexeyAB [reorg3d]: space-to-depth (or back, reverse=1) in darknet's channel order."""

    type = "reorg3d"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        s = sec["stride"]
        self.reverse = bool(sec["reverse"])
        out = (c // (s * s), h * s, w * s) if self.reverse else (c * s * s, h // s, w // s)
        super().__init__(sec, ctx, out)
        self.stride = s
        # AlexeyAB calls reorg_cpu on the OUTPUT dims with forward=0 (reverse: forward=1)
        oc, oh, ow = out
        if self.reverse:
            idx = torch.argsort(reorg_index(c, h, w, s))
        else:
            idx = torch.argsort(reorg_index(oc, oh, ow, s))
        self.register_buffer("gather_index", idx, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return flat(x)[:, self.gather_index].view(x.shape[0], *self.out_shape)


class Implicit(DarknetLayer):
    """AlexeyAB [implicit_add]/[implicit_mul]: a learned (filters, 1, 1) constant."""

    type = "implicit"

    def __init__(self, sec: Section, ctx: BuildContext):
        n = sec["filters"]
        super().__init__(sec, ctx, (n, 1, 1))  # reads the previous output for its batch size
        self.weights = nn.Parameter(torch.full((n,), float(sec["init"])))

    def darknet_tensors(self):
        return [("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        return self.weights.view(1, -1, 1, 1).expand(x.shape[0], -1, 1, 1)


register("route")(Route)
register("shortcut")(Shortcut)
register("scale_channels")(ScaleChannels)
register("sam")(Sam)
register("upsample")(Upsample)
register("reorg")(Reorg)
register("reorg3d")(Reorg3d)
register("implicit_add", "implicit_mul")(Implicit)
