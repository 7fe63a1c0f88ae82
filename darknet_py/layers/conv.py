"""Layers with weights: convolutional, deconvolutional, connected, local, batchnorm.

``[convolutional]`` follows ``make_convolutional_layer`` / ``forward_convolutional_layer``
of both darknets, including the options only AlexeyAB reads:

* ``stride_x``/``stride_y``; ``dilation`` (AlexeyAB pads ``pad*dilation`` but
  computes the output size as if undilated, ``(h + 2*pad - size)/stride + 1``;
  where the dilated im2col would give another size we refuse the layer);
* ``antialiasing``: the convolution runs at stride 1, then a fixed depthwise blur
  (3x3 ``[1 2 1; 2 4 2; 1 2 1]/16`` pad 1, or 2x2 ``1/4`` pad 0 for
  ``antialiasing=2``) at the layer's stride gives the output;
* ``share_index``: the layer uses another convolution's parameters (and stores
  none in the weights file);
* ``xnor``: sign-binarised input (x > 0 ? 1 : -1) and weights (per filter,
  ``mean|w|`` with the sign of w).  pjreddie's im2col pads the binarised input
  with 0; AlexeyAB's inference path (``binary_align_weights``, bit-packed im2col)
  with -1 bits, which is what it computes once ``calculate_binary_weights`` ran;
* ``cbn=1`` (AlexeyAB) is ``batch_normalize=2``: BN at inference.
* ``binary=1`` binarises weights only in darknet's GPU forward; its CPU forward
  (our reference) runs the float weights, and so do we.  ``sway``/``rotate``/
  ``stretch`` only act in AlexeyAB's GPU weight update (training); at inference
  the layer is a plain convolution.

darknet's 1x1 fast path (``b = im`` instead of im2col) ignores stride and padding
(pjreddie: whenever ``size == 1``; AlexeyAB: when ``size == 1`` and
``stride_x == 1``); we reproduce what it reads then.  ``is_plain`` tells when a
layer is just conv2d + BN/bias + activation (safe to fold or export as such).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import CHANNELWISE, get_inplace_activation
from ..builder import BuildContext, register
from ..cfg import Section
from . import onednn
from .base import DarknetLayer, flat
from .blur import Blur, blur_out_shape
from .common import activation_for, c_div, unsupported
from .norm import BN_EPS, CONNECTED_ROLLING, batchnorm


# ----------------------------------------------------------------- shared BN parameters


class _BNMixin:
    """Registers darknet's BN parameters on a layer with ``n`` output units."""

    def _init_bn(self, n: int, batch_normalize: bool) -> None:
        self.batch_normalize = bool(batch_normalize)
        self.biases = nn.Parameter(torch.zeros(n))
        if self.batch_normalize:
            self.scales = nn.Parameter(torch.ones(n))
            self.register_buffer("rolling_mean", torch.zeros(n))
            self.register_buffer("rolling_variance", torch.ones(n))

    def _bn_tensors(self) -> list:
        if not self.batch_normalize:
            return []
        return [("scales", self.scales), ("rolling_mean", self.rolling_mean),
                ("rolling_variance", self.rolling_variance)]

    def _bias_shape(self, x: Tensor) -> tuple:
        return (1, -1) + (1,) * (x.dim() - 2)

    def _norm_bias(self, x: Tensor) -> Tensor:
        if self.batch_normalize:
            x = batchnorm(self, x)
        # the trainer's exact mode sums the bias gradient in darknet's order
        add = getattr(self, "bias_function", None) if self.training else None
        if add is not None:
            return add(x, self.biases)
        return x + self.biases.view(self._bias_shape(x))

    def bn_affine64(self) -> tuple[Tensor | None, Tensor]:
        """Eval-mode BN + bias as one per-unit affine ``y = x * scale + shift`` in
        float64 (``Tensor[n]`` each): ``scale = scales / std``, ``shift = biases -
        rolling_mean * scale`` with the dialect's std (pjreddie ``sqrt(var) + 1e-6``,
        AlexeyAB ``sqrt(var + 1e-5)``).  Without BN: (None, biases)."""
        with torch.no_grad():
            beta = self.biases.detach().double()
            if not self.batch_normalize:
                return None, beta
            var = self.rolling_variance.detach().double()
            if self.dialect == "pjreddie":
                std = torch.sqrt(var) + BN_EPS["pjreddie"]
            else:
                std = torch.sqrt(var + BN_EPS["alexeyab"])
            scale = self.scales.detach().double() / std
            return scale, beta - self.rolling_mean.detach().double() * scale

    def eval_affine(self) -> tuple[Tensor | None, Tensor]:
        """:meth:`bn_affine64` rounded once to the parameters' dtype, cached until one
        of its tensors changes: the key holds their version counters, which every
        in-place torch op bumps (``Darknet.load_weights``, which reads straight into
        the storage, bumps them itself; a write through ``.data`` or numpy does not)."""
        tensors = [self.biases, *(t for _, t in self._bn_tensors())]
        key = tuple(tensor_key(t) for t in tensors)
        cached = self.__dict__.get("_affine_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        scale, shift = self.bn_affine64()
        dtype = self.biases.dtype
        result = (None if scale is None else scale.to(dtype), shift.to(dtype))
        if not any(t.is_inference() for t in tensors):  # those have no version counter
            self.__dict__["_affine_cache"] = (key, result)
        return result

    def _inference_path(self, x: Tensor) -> bool:
        """Eval mode with no gradient to record: the fast, in-place forward applies
        (not under tracing, where exporters want the plain ops)."""
        if self.training or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if not torch.is_grad_enabled():
            return True
        return not x.requires_grad and not any(p.requires_grad for p in self.parameters())

    def _affine_inplace(self, y: Tensor) -> Tensor:
        """``y * scale + shift`` over dim 1, written into ``y`` (a tensor the layer made)."""
        scale, shift = self.eval_affine()
        shape = self._bias_shape(y)
        if scale is None:
            return y.add_(shift.view(shape))
        return torch.addcmul(shift.view(shape), y, scale.view(shape), out=y)


def tensor_key(t: Tensor) -> tuple:
    """What identifies the values of ``t`` for a cache: the tensor, its storage and its
    version counter (inference tensors have none: -1)."""
    return (id(t), t.data_ptr(), -1 if t.is_inference() else t._version, t.device, t.dtype)


def binarize_weights(w: Tensor) -> Tensor:
    """darknet ``binarize_weights``: per filter, ``mean|w|`` where w > 0, else ``-mean|w|``."""
    mean = w.abs().reshape(w.shape[0], -1).mean(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return torch.where(w > 0, mean, -mean)


_SHARED = frozenset({"weights", "biases", "scales", "rolling_mean", "rolling_variance"})


class Convolutional(_BNMixin, DarknetLayer):
    """``Tensor[N, c, h, w] -> Tensor[N, filters, out_h, out_w]``, darknet's conv + BN/bias + activation."""

    type = "convolutional"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        ab = ctx.dialect == "alexeyab"
        n, size, groups = sec["filters"], sec["size"], sec["groups"]
        # pjreddie never reads stride_x/stride_y/dilation/antialiasing: they keep their defaults
        stride_x = sec["stride_x"] if sec["stride_x"] >= 1 else sec["stride"]
        stride_y = sec["stride_y"] if sec["stride_y"] >= 1 else sec["stride"]
        xnor = bool(sec["xnor"])
        if ab and (xnor or groups < 1):
            groups = 1  # AlexeyAB: "if (xnor) groups = 1; if (groups < 1) groups = 1;"
        dilation = sec["dilation"] if size > 1 else 1
        padding = size // 2 if sec["pad"] else sec["padding"]
        antialiasing = sec["antialiasing"]
        if n < 1 or size < 1:
            raise sec.error(f"filters={n} and size={size} must be >= 1", "filters" if n < 1 else "size")
        if stride_x < 1 or stride_y < 1:
            raise sec.error(f"stride must be >= 1 (got {stride_y}x{stride_x})", "stride")
        if dilation < 1:
            raise sec.error(f"dilation={dilation} must be >= 1", "dilation")
        if groups < 1 or c % groups or n % groups:
            raise sec.error(f"groups={groups} must divide the input channels ({c}) and filters ({n})",
                            "groups")
        host = (1, 1) if antialiasing else (stride_y, stride_x)
        out_h = c_div(h + 2 * padding - size, host[0]) + 1
        out_w = c_div(w + 2 * padding - size, host[1]) + 1
        if dilation > 1:
            extent = dilation * (size - 1) + 1
            real = ((h + 2 * padding * dilation - extent) // host[0] + 1,
                    (w + 2 * padding * dilation - extent) // host[1] + 1)
            if real != (out_h, out_w):
                raise unsupported(sec, ctx, f"dilation={dilation} with padding={padding}: darknet's "
                                  f"output size {out_h}x{out_w} (computed without dilation) differs "
                                  f"from its dilated im2col's {real[0]}x{real[1]}; darknet would mix "
                                  f"up its buffers", "dilation")
        # darknet's 1x1 shortcut b = im: a flat read of the input, ignoring stride and padding
        fast_1x1 = size == 1 and (not ab or host[1] == 1)
        self_flat = fast_1x1 and (padding > 0 or host != (1, 1))
        if self_flat and out_h * out_w > h * w:
            raise unsupported(sec, ctx, f"a 1x1 convolution with padding={padding}: darknet's 1x1 "
                              f"path reads {out_h * out_w} values per channel from a {h}x{w} input, "
                              f"past its end", "padding")
        if xnor and ab and (stride_x != stride_y or dilation > 1):
            raise unsupported(sec, ctx, "xnor=1 with stride_x != stride_y or dilation > 1 (darknet's "
                              "float XNOR path there reads past its buffers)", "xnor")
        out: tuple[int, int, int] = (n, out_h, out_w)
        if antialiasing:
            out = blur_out_shape(out, antialiasing, (stride_y, stride_x))
        share = self._shared_layer(sec, ctx) if ab else None
        super().__init__(sec, ctx, out)
        self.n, self.size, self.groups = n, size, groups
        self.stride = host                      # of the convolution itself
        self.layer_stride = (stride_y, stride_x)
        self.padding = padding * dilation       # what conv2d pads (darknet: pad*dilation)
        self.dilation = dilation
        self.conv_shape = (n, out_h, out_w)
        self.flat_read = self_flat
        self.xnor = xnor
        self.xnor_pad_value = -1.0 if ab else 0.0  # AlexeyAB's bit-packed im2col pads with -1 bits
        self.antialiasing = antialiasing
        self.blur = Blur(n, antialiasing, (stride_y, stride_x)) if antialiasing else None
        self.act_name = sec["activation"]
        self.activation = activation_for(sec, ctx)
        # AlexeyAB's cbn=1 (cross-iteration BN) is batch_normalize=2: BN at inference
        bn = bool(sec["batch_normalize"]) or bool(sec.get("cbn", 0))
        if share is not None:
            self._share = [share]  # a list: not registered as a submodule
            self.batch_normalize = bn
            if bn and not share.batch_normalize:
                raise sec.error(f"share_index: layer {share.index} has no batch_normalize, so "
                                f"there are no BN parameters to share", "share_index")
        else:
            self.weights = nn.Parameter(torch.zeros(n, c // groups, size, size))
            self._init_bn(n, bn)

    @staticmethod
    def _shared_layer(sec: Section, ctx: BuildContext) -> "Convolutional | None":
        if "share_index" not in sec:
            return None
        raw = sec["share_index"]
        idx = raw if raw >= 0 else ctx.index + raw
        if not 0 <= idx < ctx.index:
            raise sec.error(f"share_index={raw} refers to layer {idx}; it must be an earlier layer "
                            f"(0..{ctx.index - 1})", "share_index")
        other = ctx.layers[idx]
        while isinstance(other, Convolutional) and other.__dict__.get("_share"):
            other = other._share[0]
        if not isinstance(other, Convolutional):
            raise sec.error(f"share_index={raw}: layer {idx} is [{other.section.name}], not a "
                            f"[convolutional]", "share_index")
        c = ctx.in_shape[0]
        mine = (sec["filters"], c, sec["size"])
        theirs = (other.n, other.in_shape[0], other.size)
        if mine != theirs or other.groups != max(1, sec["groups"]):
            raise sec.error(f"share_index={raw}: filters, input channels and size {mine} do not "
                            f"match layer {idx}'s {theirs}", "share_index")
        return other

    def __getattr__(self, name: str):
        if name in _SHARED:
            share = self.__dict__.get("_share")
            if share:
                return getattr(share[0], name)
        return super().__getattr__(name)

    @property
    def is_plain(self) -> bool:
        """True when the layer is exactly conv2d + BN/bias + activation (no blur,
        no XNOR, no 1x1 flat read), i.e. safe to fold or export as one conv."""
        return self.blur is None and not self.xnor and not self.flat_read

    def darknet_tensors(self):
        if self.__dict__.get("_share"):
            return []  # the weights file holds them under the shared layer
        return [("biases", self.biases), *self._bn_tensors(), ("weights", self.weights)]

    def _weights(self) -> Tensor:
        return binarize_weights(self.weights) if self.xnor else self.weights

    def conv(self, x: Tensor) -> Tensor:
        """The convolution alone: ``Tensor[N, c, h, w] -> Tensor[N, filters, out_h, out_w]``
        (before BN, bias, activation and blur)."""
        wts = self._weights()
        if self.xnor:
            x = torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))
            if self.padding and self.xnor_pad_value:
                p = self.padding
                x = F.pad(x, (p, p, p, p), value=self.xnor_pad_value)
                return F.conv2d(x, wts, None, self.stride, 0, self.dilation, self.groups)
        if self.flat_read:
            return self._flat_conv(x, wts)
        return F.conv2d(x, wts, None, self.stride, self.padding, self.dilation, self.groups)

    def _flat_conv(self, x: Tensor, wts: Tensor) -> Tensor:
        """darknet's 1x1 path: ``gemm(weights, im)`` with ``im`` read as a
        [c/groups][out_h*out_w] matrix from the start of each group's input."""
        nb, c, h, w = x.shape
        g = self.groups
        n, oh, ow = self.conv_shape
        per = oh * ow
        cols = x.reshape(nb, g, (c // g) * h * w)[:, :, : (c // g) * per].reshape(nb, g, c // g, per)
        y = torch.einsum("gmk,bgkp->bgmp", wts.reshape(g, n // g, c // g), cols)
        return y.reshape(nb, n, oh, ow)

    def forward(self, x: Tensor) -> Tensor:
        if self._inference_path(x):
            y = self._inference_forward(x)
        else:
            z = self.conv(x)
            # the trainer's fused BN + bias + activation (darknet_py.train.conv_tail), or None
            tail = self.__dict__.get("train_tail") if self.training else None
            y = tail(self, z) if tail is not None else None
            if y is None:
                y = self.activation(self._norm_bias(z))
        return self.blur(y) if self.blur is not None else y

    def _inference_forward(self, x: Tensor) -> Tensor:
        """Eval mode, no gradient: equal to the formulas to ~1e-6 of the layer's range
        (tests/test_conformance_forward.py checks it against darknet).  On CPU one oneDNN
        call on BN-folded, packed weights; elsewhere BN + bias as one precomputed affine
        and the activation, both in place on the convolution's fresh output."""
        op = onednn.op_for(x, self.weights.dtype, self.act_name) if self.is_plain else None
        if op is not None:
            packed, bias = self._folded_packed(x)
            return onednn.run(op, x, packed, bias, self.padding, self.stride, self.dilation,
                              self.groups, self.act_name)
        y = self._affine_inplace(self.conv(x))
        act = get_inplace_activation(self.act_name)
        return act(y) if act is not None else self.activation(y)

    def _folded_packed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(weights with BN folded in, in oneDNN's layout; bias): ``w * scale`` and
        ``shift`` of :meth:`bn_affine64`, rounded once.  Kept until a parameter changes
        (version counters, as :meth:`eval_affine`) or the layer goes back to training."""
        tensors = [self.weights, self.biases, *(t for _, t in self._bn_tensors())]
        key = tuple(tensor_key(t) for t in tensors)
        cache = self.__dict__.get("_onednn_cache")
        if cache is None:
            cache = self.__dict__["_onednn_cache"] = onednn.Cache()
        if cache.key == key and cache.value is not None:
            return cache.value
        scale, shift = self.bn_affine64()
        w = self.weights.detach().double()
        if scale is not None:
            w = w * scale.view(-1, 1, 1, 1)
        dtype = self.weights.dtype
        value = (onednn.pack(w.to(dtype), self.padding, self.stride, self.dilation, self.groups, x),
                 shift.to(dtype))
        cache.key = None if any(t.is_inference() for t in tensors) else key
        cache.value = value
        return value

    def train(self, mode: bool = True):
        if mode and "_onednn_cache" in self.__dict__:
            self.__dict__["_onednn_cache"].clear()  # training changes the weights: free the copy
        return super().train(mode)

    def flops(self) -> float:
        c = self.in_shape[0]
        _, oh, ow = self.conv_shape
        return 2.0 * self.n * self.size * self.size * (c // self.groups) * oh * ow / 1e9


class Deconvolutional(_BNMixin, DarknetLayer):
    """pjreddie's [deconvolutional]: ``Tensor[N, c, h, w] -> Tensor[N, filters, out_h, out_w]``
    with out = (h - 1)*stride + size - 2*padding.

    darknet computes ``gemm(weights^T, input)`` then ``col2im`` (adding each
    column into the output, skipping positions outside it): a transposed
    convolution with weights ``[c][filters][size][size]`` (``weights`` here).
    darknet's own loader cannot read this layer back (it divides by
    ``l.groups``, which is 0 for a deconvolution); its writer stores biases,
    BN, weights like a convolution, which is the layout used here.
    """

    type = "deconvolutional"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        n, size, stride = sec["filters"], sec["size"], sec["stride"]
        padding = size // 2 if sec["pad"] else sec["padding"]
        if n < 1 or size < 1 or stride < 1 or padding < 0:
            raise sec.error(f"filters={n}, size={size}, stride={stride} must be >= 1 and "
                            f"padding={padding} >= 0")
        out_h = (h - 1) * stride + size - 2 * padding
        out_w = (w - 1) * stride + size - 2 * padding
        super().__init__(sec, ctx, (n, out_h, out_w))
        self.n, self.size, self.stride, self.padding = n, size, stride, padding
        self.weights = nn.Parameter(torch.zeros(c, n, size, size))
        self._init_bn(n, sec["batch_normalize"])
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), *self._bn_tensors(), ("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv_transpose2d(x, self.weights, None, self.stride, self.padding)
        return self.activation(self._norm_bias(y))

    def flops(self) -> float:
        c, h, w = self.in_shape
        return 2.0 * self.n * self.size * self.size * c * h * w / 1e9


class Connected(_BNMixin, DarknetLayer):
    type = "connected"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        inputs, outputs = c * h * w, sec["output"]
        super().__init__(sec, ctx, (outputs, 1, 1))
        self.inputs, self.outputs = inputs, outputs
        self.weights = nn.Parameter(torch.zeros(outputs, inputs))
        self._init_bn(outputs, sec["batch_normalize"])
        self.rolling_factors = CONNECTED_ROLLING[ctx.dialect]
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), ("weights", self.weights), *self._bn_tensors()]

    def forward(self, x: Tensor) -> Tensor:
        y = self._norm_bias(F.linear(flat(x), self.weights))
        return self.activation(y).view(x.shape[0], self.outputs, 1, 1)

    def flops(self) -> float:
        return 2.0 * self.inputs * self.outputs / 1e9


class Local(DarknetLayer):
    """pjreddie's [local]: one filter bank per output location."""

    type = "local"

    def __init__(self, sec: Section, ctx: BuildContext):
        c, h, w = ctx.in_shape
        n, size, stride, pad = sec["filters"], sec["size"], sec["stride"], sec["pad"]
        if n < 1 or size < 1 or stride < 1:
            raise sec.error(f"filters={n}, size={size}, stride={stride} must be >= 1")
        out_h = (h - (1 if pad else size)) // stride + 1
        out_w = (w - (1 if pad else size)) // stride + 1
        cols = ((h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1)
        if cols != (out_h, out_w):
            raise unsupported(sec, ctx, f"size={size} with pad={pad}: darknet's output size "
                              f"{out_h}x{out_w} differs from its im2col's {cols[0]}x{cols[1]} "
                              f"(pad is used as a pixel count)", "size")
        super().__init__(sec, ctx, (n, out_h, out_w))
        self.n, self.size, self.stride, self.pad = n, size, stride, pad
        locations = out_h * out_w
        self.weights = nn.Parameter(torch.zeros(locations, n, c * size * size))
        self.biases = nn.Parameter(torch.zeros(n * locations))
        self.activation = activation_for(sec, ctx)

    def darknet_tensors(self):
        return [("biases", self.biases), ("weights", self.weights)]

    def forward(self, x: Tensor) -> Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # [N, c*k*k, L]
        y = torch.einsum("lnk,bkl->bnl", self.weights, cols)
        n, oh, ow = self.out_shape
        y = y + self.biases.view(1, n, oh * ow)
        return self.activation(y.view(x.shape[0], n, oh, ow))

    def flops(self) -> float:
        c = self.in_shape[0]
        n, oh, ow = self.out_shape
        return 2.0 * n * self.size * self.size * c * oh * ow / 1e9


class BatchNorm(_BNMixin, DarknetLayer):
    """[batchnorm]: ``scales * normalized(x) + biases`` per channel, the dialect's BN rule.

    The weights file holds scales, rolling mean and variance (pjreddie; its
    biases stay 0) or biases first and then those three (AlexeyAB)."""

    type = "batchnorm"

    def __init__(self, sec: Section, ctx: BuildContext):
        super().__init__(sec, ctx, ctx.in_shape)
        self._init_bn(ctx.in_shape[0], True)

    def darknet_tensors(self):
        # AlexeyAB stores the biases first (load/save_batchnorm_weights); pjreddie does not
        biases = [("biases", self.biases)] if self.dialect == "alexeyab" else []
        return biases + self._bn_tensors()

    def forward(self, x: Tensor) -> Tensor:
        return self._norm_bias(x)


register("convolutional")(Convolutional)
register("deconvolutional")(Deconvolutional)
register("connected")(Connected)
register("local")(Local)
register("batchnorm")(BatchNorm)
__all__ = ["Convolutional", "Deconvolutional", "Connected", "Local", "BatchNorm", "CHANNELWISE"]
