"""Inference-only speed-ups that keep darknet's numbers (to ~1e-6 relative).

:func:`fuse` folds every ``[convolutional]`` layer's batch normalisation
into its weights and bias (in float64, with the dialect's epsilon rule), so a
layer is one ``conv2d`` with bias plus its activation:

* pjreddie: ``w' = w * s / (sqrt(var) + 1e-6)``, ``b' = beta - mean * s / (sqrt(var) + 1e-6)``
* AlexeyAB: ``w' = w * s / sqrt(var + 1e-5)``,   ``b' = beta - mean * s / sqrt(var + 1e-5)``

(AlexeyAB's own detector does the same fold, ``fuse_conv_batchnorm``.)  A fused
model is for inference only: its layers cannot be written back to a
``.weights`` file (:class:`~darknet_py.errors.ConvertError`), train the unfused one.

On CPU a fused layer is one oneDNN call: the convolution with its bias and its
leaky/relu applied to the accumulator (``mkldnn._convolution_pointwise``), with
the weights reordered once into oneDNN's blocked layout instead of at every call.

:func:`inference_model` = eval mode + no gradients + :func:`fuse` + channels-last
(CPU) + an optional reduced precision; what :mod:`darknet_py.detect` runs and
:meth:`darknet_py.Darknet.for_inference` returns.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import get_inplace_activation
from .errors import ConvertError, DarknetError
from .layers import onednn
from .layers.conv import Convolutional, tensor_key


class FusedConvolutional(nn.Module):
    """A ``[convolutional]`` layer with its batch norm folded in: one
    ``conv2d(x, w', b')`` + activation.  Keeps the layer's ``index``,
    ``sources``, ``section``, ``in_shape``/``out_shape``."""

    type = "convolutional"

    def __init__(self, conv: Convolutional):
        super().__init__()
        self.index, self.section, self.dialect = conv.index, conv.section, conv.dialect
        self.in_shape, self.out_shape, self.sources = conv.in_shape, conv.out_shape, list(conv.sources)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        w = conv.weights.detach().double()
        scale, shift = conv.bn_affine64()
        if scale is not None:
            w = w * scale.view(-1, 1, 1, 1)
        self.weight = nn.Parameter(w.to(conv.weights.dtype), requires_grad=False)
        self.bias = nn.Parameter(shift.to(conv.weights.dtype), requires_grad=False)
        self.act_name = conv.act_name
        self.activation = get_inplace_activation(conv.act_name) or conv.activation
        self.use_onednn = True   # False: conv2d + the activation (A/B in the benchmarks)
        self._packed = onednn.Cache()

    @property
    def is_head(self) -> bool:
        return False

    def darknet_tensors(self):
        raise ConvertError(f"layer {self.index}: a fused model cannot be saved as darknet weights "
                           f"(its batch norm is folded into the convolution); save the unfused model")

    def _packed_weight(self, x: Tensor) -> Tensor:
        """The weights in oneDNN's blocked layout for inputs like ``x``, reordered once
        and again when ``weight`` changes through torch (its version counter; writes
        that bypass it, e.g. through ``.data`` or numpy, need :meth:`repack`)."""
        key = tensor_key(self.weight)
        if self._packed.key != key:
            self._packed.value = onednn.pack(self.weight, self.padding, self.stride, self.dilation,
                                             self.groups, x)
            self._packed.key = key
        return self._packed.value

    def repack(self) -> None:
        """Forget the packed weights (rebuilt from ``weight`` on the next call)."""
        self._packed.clear()

    def forward(self, x: Tensor) -> Tensor:
        op = onednn.op_for(x, self.weight.dtype, self.act_name) if self.use_onednn else None
        if op is not None:
            return onednn.run(op, x, self._packed_weight(x), self.bias, self.padding, self.stride,
                              self.dilation, self.groups, self.act_name)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(y)

    def extra_repr(self) -> str:
        c, h, w = self.in_shape
        oc, oh, ow = self.out_shape
        return f"{self.index}: fused convolutional {c}x{h}x{w} -> {oc}x{oh}x{ow} {self.act_name}"


def fuse(model, inplace: bool = False):
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose
    ``[convolutional]`` layers are :class:`FusedConvolutional`."""
    m = model if inplace else copy.deepcopy(model)
    for i, layer in enumerate(m.module_list):
        if isinstance(layer, Convolutional) and getattr(layer, "is_plain", True):
            m.module_list[i] = FusedConvolutional(layer)
    m.fused = True
    return m.eval()


# ------------------------------------------------------------------ precision

#: ``precision`` name -> the dtype the body of the network runs in
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX), not by emulation."""
    probe = getattr(torch._C, "_cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(probe, name, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype of ``precision`` on ``device``; a :class:`DarknetError` saying why
    where the hardware does not run it natively."""
    if precision not in PRECISIONS:
        raise DarknetError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "bf16":
        if kind == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise DarknetError("precision bf16: this CUDA device has no bfloat16 support; use fp16")
        elif kind != "cpu" or not _cpu_has_bf16() or not torch.backends.mkldnn.is_available():
            raise DarknetError("precision bf16 needs a CPU with AVX512_BF16 or AMX (and torch built "
                               "with oneDNN) or a CUDA device; this machine has neither: use fp32")
    if precision == "fp16" and kind != "cuda":
        raise DarknetError(f"precision fp16 runs on CUDA devices only (got {kind}); on a CPU with "
                           f"AVX512_BF16/AMX use bf16, else fp32")
    return PRECISIONS[precision]


def _cast_inputs(dtype: torch.dtype):
    def hook(module, args):
        return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != dtype
                     else a for a in args)
    return hook


def _set_precision(m, dtype: torch.dtype, keep: set[int] | None = None) -> None:
    """Run the body of ``m`` in ``dtype``, except ``keep`` and where a 16-bit rounding
    costs the most accuracy for the least time, which stays float32: the layers that
    read the network input (an 8-bit image in a 8-bit-mantissa bfloat16 moves the
    probabilities by ~0.03), the heads, the layers they read (box offsets go through
    exp()) and the last layer, so outputs are float32.  Every layer casts its inputs
    to its own dtype (forward pre-hooks)."""
    keep = set(keep or ()) | set(m.heads) | {len(m.module_list) - 1}
    keep.update(i for i, layer in enumerate(m.module_list) if -1 in layer.sources)
    for i in m.heads:
        keep.update(s for s in m.module_list[i].sources if s >= 0)
    for i, layer in enumerate(m.module_list):
        dt = torch.float32 if i in keep else dtype
        if dt != torch.float32:
            layer.to(dt)
        layer.register_forward_pre_hook(_cast_inputs(dt))
    m.precision_dtype = dtype


def inference_model(model, fuse_bn: bool = True, channels_last: bool | None = None,
                    precision: str = "fp32", device: torch.device | str | None = None):
    """``model`` ready for fast inference: a copy (``model`` is untouched) in eval
    mode, without gradients, BN folded (``fuse_bn``), channels-last activations and
    weights (``channels_last``; None: on CPU), on ``device`` (default: where ``model``
    is), the body in ``precision`` (``"fp32"``; ``"bf16"`` on CPUs with
    AVX512_BF16/AMX or CUDA, ``"fp16"`` on CUDA: see :func:`check_precision`).

    ``inference_model(model)(x)`` takes and returns float32 tensors; fp32 gives
    darknet's numbers to ~1e-6 of each layer's range."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    dtype = check_precision(precision, device)
    m = fuse(model) if fuse_bn else copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    m = m.to(device)
    if channels_last is None:
        channels_last = device.type == "cpu"
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    m.channels_last = bool(channels_last)
    if dtype != torch.float32:
        _set_precision(m, dtype)
    return m
