"""Layers that read other layers or move data: route, shortcut, scale_channels,
sam, upsample, reorg, reorg3d, implicit."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..builder import BuildContext, register
from ..cfg import Section
from .base import DarknetLayer, flat
from .common import activation_for, unsupported


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


# AlexeyAB parse_shortcut's accepted spellings
_WEIGHTS_TYPES = {"none": "none", "per_feature": "per_feature", "per_layer": "per_feature",
                  "per_channel": "per_channel"}
_NORMALIZATIONS = {"none": "none", "relu": "relu", "avg_relu": "relu", "softmax": "softmax"}
_NORM_EPS = 0.0001


def _scaled(x: Tensor, factor: float) -> Tensor:
    """``factor * x``; skipped for 1 (exact either way, one pass less)."""
    return x if factor == 1.0 else factor * x


class Shortcut(DarknetLayer):
    """Residual addition of the ``from`` layers to the previous output, then activation.

    Output shape = the previous layer's.  pjreddie (``shortcut_cpu``): out =
    alpha*prev + beta*from on the positions both have, sampling with integer
    strides when sizes differ (``stride = w_from/w``, ``sample = w/w_from``; only
    min(C) channels).  AlexeyAB (``shortcut_multilayer_cpu``): several ``from``
    layers, each added over the flat prefix it shares with the output (per image);
    optional weights, ``per_feature`` ``[n+1]`` or ``per_channel`` ``[n+1][C]``,
    the first for the previous layer, normalised per position by ``relu``
    (``relu(w) / (0.0001 + sum relu(w))``) or ``softmax``
    (``exp(w - max) / (0.0001 + sum exp(w - max))``).
    """

    type = "shortcut"

    def __init__(self, sec: Section, ctx: BuildContext):
        if not sec["from"]:
            raise sec.error("[shortcut] needs from=")
        frm = [ctx.resolve(sec, "from", v) for v in sec["from"]]
        if ctx.dialect == "pjreddie":
            frm = frm[:1]  # pjreddie reads from= with atoi: the first number only
        super().__init__(sec, ctx, ctx.in_shape, [ctx.index - 1] + frm)
        self.activation = activation_for(sec, ctx)
        self.alpha, self.beta = sec["alpha"], sec["beta"]
        self.from_shapes = [ctx.shapes[f] for f in frm]
        c, h, w = ctx.in_shape
        if ctx.dialect == "pjreddie":
            c1, h1, w1 = self.from_shapes[0]
            if w1 // w != h1 // h or w // w1 != h // h1:  # shortcut_cpu's asserts
                raise sec.error(f"layer {frm[0]} ({c1}x{h1}x{w1}) and the previous layer "
                                f"({c}x{h}x{w}) differ in size by unequal factors along width and "
                                f"height (darknet asserts stride == h1/h2)", "from")
        wt = _WEIGHTS_TYPES.get(sec["weights_type"])
        if wt is None:
            raise sec.error(f"weights_type={sec['weights_type']!r}: expected none, per_feature or "
                            f"per_channel", "weights_type")
        norm = _NORMALIZATIONS.get(sec["weights_normalization"])
        if norm is None:
            if wt != "none":  # darknet only rejects it when the layer has weights
                raise sec.error(f"weights_normalization={sec['weights_normalization']!r}: "
                                f"expected none, relu or softmax", "weights_normalization")
            norm = "none"
        n = len(frm)
        shape = {"per_feature": (n + 1,), "per_channel": (n + 1, c), "none": None}[wt]
        self.weights_type, self.weights_normalization = wt, norm
        self.weights = nn.Parameter(torch.ones(shape)) if shape else None

    def darknet_tensors(self):
        return [] if self.weights is None else [("weights", self.weights)]

    def forward(self, x: Tensor, *adds: Tensor) -> Tensor:
        if self.dialect == "pjreddie":
            return self.activation(self._pj(x, adds[0]))
        return self.activation(self._ab(x, adds))

    def _pj(self, out: Tensor, add: Tensor) -> Tensor:
        """``Tensor[N, C, H, W]`` previous output, ``Tensor[N, C1, H1, W1]`` from-output."""
        c1, h1, w1 = add.shape[1:]
        c2, h2, w2 = out.shape[1:]
        if (c1, h1, w1) == (c2, h2, w2):
            return _scaled(out, self.alpha) + _scaled(add, self.beta)
        stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
        mc, mh, mw = min(c1, c2), min(h1, h2), min(w1, w2)
        part = add[:, :mc, : mh * stride : stride, : mw * stride : stride]
        rows, cols = slice(0, mh * sample, sample), slice(0, mw * sample, sample)
        out = out.clone()
        out[:, :mc, rows, cols] = _scaled(out[:, :mc, rows, cols], self.alpha) + _scaled(part, self.beta)
        return out

    def _layer_weights(self) -> list[Tensor] | None:
        """One weight per input (previous layer first), normalised, ``Tensor[1, C|1, 1, 1]``."""
        if self.weights is None:
            return None
        w = self.weights
        if self.weights_normalization == "relu":
            r = torch.relu(w)
            w = r / (_NORM_EPS + r.sum(dim=0, keepdim=True))
        elif self.weights_normalization == "softmax":
            e = torch.exp(w - w.max(dim=0, keepdim=True).values)
            w = e / (_NORM_EPS + e.sum(dim=0, keepdim=True))
        shape = (1, -1, 1, 1) if w.dim() == 2 else (1, 1, 1, 1)
        return [w[i].reshape(shape) for i in range(w.shape[0])]

    def _ab(self, x: Tensor, adds: tuple[Tensor, ...]) -> Tensor:
        ws = self._layer_weights()
        out = x * ws[0] if ws is not None else x
        for i, a in enumerate(adds):
            w = ws[i + 1] if ws is not None else None
            if a.shape == x.shape:
                out = out + (a * w if w is not None else a)
                continue
            # other sizes: index src_i < outputs of the added layer, per image
            n = min(out[0].numel(), a[0].numel())
            af = flat(a)[:, :n]
            if w is not None:  # the weight of the OUTPUT position's channel
                af = af * flat(w.expand(1, *x.shape[1:]))[:, :n]
            of = flat(out)
            out = torch.cat([of[:, :n] + af, of[:, n:]], dim=1).view_as(x)
        return out


class ScaleChannels(DarknetLayer):
    """AlexeyAB [scale_channels]: the ``from`` output times this input, then activation.

    Default: input ``Tensor[N, C, 1, 1]`` scales each channel; ``scale_wh=1``:
    input ``Tensor[N, 1, H, W]`` scales each position.  Output = ``from``'s shape."""

    type = "scale_channels"

    def __init__(self, sec: Section, ctx: BuildContext):
        if sec["from"] is None:
            raise sec.error("[scale_channels] needs from=")
        frm = ctx.resolve(sec, "from", sec["from"])
        fc, fh, fw = ctx.shapes[frm]
        c, h, w = ctx.in_shape
        self_wh = bool(sec["scale_wh"])
        if self_wh and (c != 1 or (h, w) != (fh, fw)):
            raise sec.error(f"scale_wh=1 needs a 1x{fh}x{fw} input to scale layer {frm} "
                            f"({fc}x{fh}x{fw}); got {c}x{h}x{w}", "scale_wh")
        if not self_wh and ((h, w) != (1, 1) or c != fc):
            raise sec.error(f"scaling the channels of layer {frm} ({fc}x{fh}x{fw}) needs a "
                            f"{fc}x1x1 input; got {c}x{h}x{w}", "from")
        super().__init__(sec, ctx, (fc, fh, fw), [ctx.index - 1, frm])
        self.scale_wh = self_wh
        self.activation = activation_for(sec, ctx)

    def forward(self, scale: Tensor, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = scale.reshape(n, 1, h, w) if self.scale_wh else scale.reshape(n, c, 1, 1)
        return self.activation(x * s)


class Sam(DarknetLayer):
    """AlexeyAB [sam]: elementwise product of this input and the ``from`` output (same shape)."""

    type = "sam"

    def __init__(self, sec: Section, ctx: BuildContext):
        if sec["from"] is None:
            raise sec.error("[sam] needs from=")
        frm = ctx.resolve(sec, "from", sec["from"])
        if ctx.shapes[frm] != ctx.in_shape:
            fc, fh, fw = ctx.shapes[frm]
            raise sec.error(f"[sam] multiplies equal shapes: layer {frm} is {fc}x{fh}x{fw}, the "
                            f"input {'x'.join(map(str, ctx.in_shape))}", "from")
        super().__init__(sec, ctx, ctx.shapes[frm], [ctx.index - 1, frm])
        self.activation = activation_for(sec, ctx)

    def forward(self, scale: Tensor, x: Tensor) -> Tensor:
        return self.activation(x * scale)


class Upsample(DarknetLayer):
    """``stride > 0``: nearest-neighbour ``scale * in[y/stride][x/stride]``.

    ``stride < 0`` (darknet's reverse): ``out[y][x] = sum of scale * in[y*s+dy][x*s+dx]``
    over the s x s block, with out = (H/s, W/s) and the input buffer read as if it
    were ``(C, out_h*s, out_w*s)`` per image (darknet's indexing; it is the input
    itself when H and W are multiples of s)."""

    type = "upsample"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        stride = sec["stride"]
        if stride == 0:
            raise sec.error("stride=0: darknet divides by it", "stride")
        reverse = stride < 0
        stride = abs(stride)
        out = (c, h // stride, w // stride) if reverse else (c, h * stride, w * stride)
        super().__init__(sec, ctx, out)
        self.stride, self.reverse, self.scale = stride, reverse, sec["scale"]

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        if self.reverse:
            n, c = x.shape[:2]
            _, oh, ow = self.out_shape
            # upsample_cpu(l.output, out_w, out_h, ..., forward=0, scale, net.input): batch b starts
            # at b*c*out_h*out_w*s*s in the input buffer
            per = c * oh * s * ow * s
            blocks = x.reshape(-1)[: n * per].reshape(n, c, oh, s, ow, s)
            return (self.scale * blocks).sum(dim=(3, 5))
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # a channels-last (inference) input: the same copy done in NHWC keeps that layout
            n, c, h, w = x.shape
            y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, s, w, s, c)
            y = y.reshape(n, h * s, w * s, c).permute(0, 3, 1, 2)
        else:
            y = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        return y if self.scale == 1.0 else self.scale * y


def reorg_index(c: int, h: int, w: int, stride: int) -> Tensor:
    """darknet ``reorg_cpu`` on one image with dims (w, h, c): for every ``in_index``
    over (c, h, w), the ``out_index`` in the (c/stride^2, h*stride, w*stride) layout.

    ``forward=0`` gathers: ``out[in_index] = x[out_index]``; ``forward=1`` scatters:
    ``out[out_index] = x[in_index]``."""
    out_c = c // (stride * stride)
    k = torch.arange(c).view(c, 1, 1)
    j = torch.arange(h).view(1, h, 1)
    i = torch.arange(w).view(1, 1, w)
    c2, offset = k % out_c, k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    return (w2 + w * stride * (h2 + h * stride * c2)).reshape(-1)


class _Reorg(DarknetLayer):
    """A fixed per-image gather of the flat input (``out[i] = x[index[i]]``) computed
    from reorg_cpu's index arithmetic."""

    def __init__(self, sec: Section, ctx: BuildContext, out: tuple[int, int, int],
                 index: Tensor | None):
        super().__init__(sec, ctx, out)
        if index is not None:
            self.register_buffer("gather_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return flat(x)[:, self.gather_index].view(x.shape[0], *self.out_shape)


def _check_reorg(sec: Section, ctx: BuildContext, c: int, h: int, w: int, s: int,
                 spatial: bool) -> None:
    if s < 1:
        raise sec.error(f"stride={s} must be >= 1", "stride")
    if c % (s * s) or (spatial and (h % s or w % s)):
        what = f"{c} channels" + (f" and {h}x{w}" if spatial else "")
        raise unsupported(sec, ctx, f"stride={s} needs {what} divisible by "
                          f"{s * s if c % (s * s) else s}: darknet's reorg_cpu would index past "
                          f"its buffers", "stride")


class Reorg(_Reorg):
    """[reorg] (pjreddie; AlexeyAB's ``reorg_old``): darknet's own index map, NOT a plain
    space-to-depth.  ``reverse=0``: ``reorg_cpu(x, w, h, c, forward=0)`` (the input
    read as if it were (c/s^2, h*s, w*s)), out (c*s^2, h/s, w/s); ``reverse=1``:
    ``forward=1``, out (c/s^2, h*s, w*s).  pjreddie's ``flatten=1`` transposes
    (c, h*w) -> (h*w, c) (back with reverse) and ``extra=E`` appends E zeros."""

    type = "reorg"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        s = sec["stride"]
        reverse = bool(sec["reverse"])
        flatten, extra = sec.get("flatten", 0), sec.get("extra", 0)  # pjreddie only
        if s < 1:
            raise sec.error(f"stride={s} must be >= 1", "stride")
        out = (c // (s * s), h * s, w * s) if reverse else (c * s * s, h // s, w // s)
        mode = "flatten" if flatten else "extra" if extra else "reorg"
        if mode == "extra":
            if extra < 0:
                raise sec.error(f"extra={extra} must be >= 0", "extra")
            # darknet reports 0x0x0 and c*h*w + extra outputs; we keep them as channels
            super().__init__(sec, ctx, (c * h * w + extra, 1, 1), None)
            self.mode, self.extra = mode, extra
            return
        if mode == "flatten":
            if out[0] * out[1] * out[2] != c * h * w:
                raise unsupported(sec, ctx, f"flatten=1 with stride={s}: output {out} holds a "
                                  f"different number of values than the input", "stride")
            # flatten(x, w*h, c, forward=!reverse): forward writes (c, h*w) as (h*w, c)
            src = torch.arange(c * h * w)
            index = (src.view(h * w, c) if reverse else src.view(c, h * w)).t().reshape(-1)
            super().__init__(sec, ctx, out, index)
            self.mode = mode
            return
        _check_reorg(sec, ctx, c, h, w, s, spatial=not reverse)
        idx = reorg_index(c, h, w, s)
        super().__init__(sec, ctx, out, torch.argsort(idx) if reverse else idx)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "extra":
            return torch.cat([flat(x), x.new_zeros(x.shape[0], self.extra)], 1).view(
                x.shape[0], *self.out_shape)
        return super().forward(x)


class Reorg3d(_Reorg):
    """AlexeyAB [reorg3d] (its ``reorg_layer.c``): ``reorg_cpu`` called with the OUTPUT
    dims.  ``reverse=0``: out (c*s^2, h/s, w/s), ``forward=0`` over those dims -- a
    space-to-depth with output channel ``k = offset*c + c2`` taking
    ``x[c2][y*s + offset/s][x*s + offset%s]``.  ``reverse=1``: out (c/s^2, h*s, w*s),
    ``forward=1`` over those dims (not the inverse of reverse=0; it needs c divisible
    by s^4)."""

    type = "reorg3d"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        s = sec["stride"]
        if s < 1:
            raise sec.error(f"stride={s} must be >= 1", "stride")
        reverse = bool(sec["reverse"])
        out = (c // (s * s), h * s, w * s) if reverse else (c * s * s, h // s, w // s)
        oc, oh, ow = out
        if reverse:
            _check_reorg(sec, ctx, c, h, w, s, spatial=False)
            _check_reorg(sec, ctx, oc, oh, ow, s, spatial=False)
            index = torch.argsort(reorg_index(oc, oh, ow, s))
        else:
            # the gather reads x at indices < c*(h/s*s)*(w/s*s): inside the input even when
            # h or w is not a multiple of s (then with darknet's row stride w/s*s)
            index = reorg_index(oc, oh, ow, s)
        super().__init__(sec, ctx, out, index)


class Implicit(DarknetLayer):
    """AlexeyAB [implicit]: a learned constant ``Tensor[N, filters, atoms, 1]`` (it reads
    no input; the previous output only gives the batch size).  The weights file holds
    ``filters*atoms`` floats."""

    type = "implicit"

    def __init__(self, sec: Section, ctx: BuildContext):
        n, atoms = sec["filters"], sec["atoms"]
        if n < 1 or atoms < 1:
            raise sec.error(f"filters={n} and atoms={atoms} must be >= 1")
        super().__init__(sec, ctx, (n, atoms, 1))
        # darknet draws mean + U(-std, std); loaded weights replace it
        self.weights = nn.Parameter(torch.full((n, atoms, 1), float(sec["mean"])))

    def darknet_tensors(self):
        return [("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        return self.weights.unsqueeze(0).expand(x.shape[0], -1, -1, -1)


register("route")(Route)
register("shortcut")(Shortcut)
register("scale_channels")(ScaleChannels)
register("sam")(Sam)
register("upsample")(Upsample)
register("reorg")(Reorg)
register("reorg3d")(Reorg3d)
register("implicit")(Implicit)
