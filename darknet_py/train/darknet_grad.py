"""Darknet's own backward, where it is not the exact gradient of its forward.

Four places differ from autograd:

* **Batch normalisation.**  Darknet back-propagates through its training-mode
  BN with a formula of its own (``backward_batchnorm_layer``): with ``N`` the
  number of values per channel (mini_batch*H*W), ``v`` the *unbiased* batch
  variance used by the forward, ``m`` the batch mean and ``dxh`` the incoming
  gradient times the BN scale,

  ``dx = dxh*k + dvar * 2*(x - m)/N + dmean/N`` with
  ``dmean = sum(dxh) * -1/sqrt(v + 1e-5)``,
  ``dvar = sum(dxh*(x - m)) * -0.5*(v + 1e-5)^-1.5``,
  ``k = 1/sqrt(v + 1e-5)`` (pjreddie) or ``1/(sqrt(v) + 1e-5)`` (AlexeyAB).

  The biased ``2/N`` against the unbiased forward and the epsilons that differ
  from the forward's make it differ from autograd by about 2e-4..5e-4 relative
  on small maps.  The scale gradient is ``sum(delta * x_hat)`` with the
  forward's ``x_hat``; the BN beta is the layer's bias, added after BN, whose
  gradient autograd computes as ``sum(delta)``.  That beta gradient is what
  darknet's GPU builds compute; AlexeyAB's CPU build omits it (its betas never
  train) and we follow the GPU build there.

* **pjreddie's [region] head.**  Its CPU ``backward_region_layer`` is empty (no
  gradient leaves the head); its GPU build multiplies the x, y and objectness
  deltas by the logistic derivative ``y*(1-y)`` of the region output before
  passing them on.  The loss gives ``d loss/d input = -delta`` (darknet's delta
  as the forward writes it); :func:`head_backward` applies the GPU build's
  factor.  AlexeyAB's region forward already includes the derivative.

* **Layers that overwrite their input's delta.**  Darknet runs the layers'
  backward in reverse order, each one writing into the delta buffer of the layer
  before it (``i-1``).  Most layers add to that buffer, but some assign: every
  AlexeyAB [convolutional] (its ``col2im`` clears the buffer first), pjreddie's
  1x1 [convolutional] (a ``gemm`` with beta 0 straight into the buffer) and
  [reorg].  Whatever a later reader of layer ``i-1`` (a route, a shortcut, ...)
  had already added is then lost: layer ``i-1`` trains on the gradient from
  layer ``i`` alone (:func:`dropped_edges`).

* **Deltas AlexeyAB never clears.**  AlexeyAB zeroes a layer's delta before the
  forward only when the layer has ``l.train`` set, which [route], [upsample] and
  a few other constructors never do; their delta keeps growing with every pass,
  so what they pass back is the sum of every gradient they received since
  training started (unless the next layer overwrites it).  :func:`stale_layers`
  lists them; the buffers are training state.

The last two are how darknet's CPU code computes (the conformance
trajectories, hybrids included, contain them: without them the AlexeyAB
yolov4-tiny gradients are off by 100%+); whether its cuDNN builds share them
is not covered by the data.

``install(model, mode)`` plugs these into a model: ``mode="exact"`` (all of
the above) or ``mode="autograd"`` (the exact gradient of darknet's forward:
autograd BN, no lost or accumulated deltas).  The [region] backward is the
same in both modes: with the loss's delta it is what makes the region
gradient a gradient.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ..errors import UnsupportedLayerError
from ..layers.norm import batch_stats, std_of
from . import darknet_order as order

MODES = ("exact", "autograd")

#: epsilon inside ``k`` of the dx formula, per dialect ("inside": 1/sqrt(v+eps))
_K_EPS = {"pjreddie": ("inside", 1e-5), "alexeyab": ("outside", 1e-5)}
_VAR_EPS = 1e-5


def _channel_view(x: Tensor) -> tuple[list[int], tuple[int, ...]]:
    dims = [0] + list(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return dims, shape


class DarknetBatchNorm(torch.autograd.Function):
    """``y = x_hat * scales`` with batch statistics; backward = darknet's formula.

    forward(x: Tensor[N, C, ...], scales: Tensor[C], dialect) ->
    (y: Tensor[N, C, ...], mean: Tensor[C], var: Tensor[C] (unbiased)).
    Only ``y`` carries a gradient.  With ``g`` the incoming gradient and
    ``xc = x - mean`` the backward needs two sums per channel, ``sum(g)`` and
    ``sum(g*xc)``: ``d scales = sum(g*x_hat)``, ``dmean = scales*sum(g)*-1/sqrt(v+1e-5)``,
    ``dvar = scales*sum(g*xc)*-0.5*(v+1e-5)^-1.5`` and
    ``dx = g*scales*k + xc*dvar*2/N + dmean/N`` (darknet's formula).

    On CPU every sum runs in darknet's order and every element-wise step rounds as
    darknet's C does (:mod:`.darknet_order`), so that near-ties (a leaky input within
    rounding of 0) fall the way they fall in darknet whatever torch's kernels are.  On
    other devices the same formula runs with torch's (faster) reductions.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scales: Tensor, dialect: str):  # type: ignore[override]
        _, shape = _channel_view(x)
        ctx.dialect = dialect
        ctx.darknet_order = order.applies(x)
        if ctx.darknet_order:
            mean, var = order.batch_stats(x)
            xc = x - mean.view(shape)
            x_hat = order.normalize(xc, var, dialect)
            y = x_hat * scales.view(shape)
            ctx.save_for_backward(xc, x_hat, var, scales)
        else:
            mean, var = batch_stats(x)
            xc = x - mean.view(shape)
            std = std_of(var, dialect)
            y = xc * (scales / std).view(shape)
            ctx.save_for_backward(xc, std, var, scales)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy: Tensor, _gm: Tensor | None, _gv: Tensor | None):  # type: ignore[override]
        if ctx.darknet_order:
            xc, x_hat, var, scales = ctx.saved_tensors
            gy = gy.contiguous()
            g_scales = order.channel_sum(gy * x_hat) if ctx.needs_input_grad[1] else None
            if not ctx.needs_input_grad[0]:
                return None, g_scales, None
            return order.bn_backward(gy, xc, var, scales, ctx.dialect), g_scales, None
        xc, std, var, scales = ctx.saved_tensors
        dims, shape = _channel_view(xc)
        n = xc.numel() // xc.shape[1]
        sum_g = gy.sum(dims)
        sum_gxc = (gy * xc).sum(dims)
        g_scales = sum_gxc / std if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, g_scales, None
        veps = var + _VAR_EPS
        d_mean = scales * sum_g * (-1.0 / torch.sqrt(veps))
        d_var = scales * sum_gxc * (-0.5) * veps.pow(-1.5)
        where, eps = _K_EPS[ctx.dialect]
        k = 1.0 / torch.sqrt(var + eps) if where == "inside" else 1.0 / (torch.sqrt(var) + eps)
        dx = torch.addcmul((d_mean / n).view(shape), gy, (scales * k).view(shape))
        return dx.addcmul_(xc, (d_var * (2.0 / n)).view(shape)), g_scales, None


class DarknetBias(torch.autograd.Function):
    """``x + biases`` whose backward sums the bias gradient as darknet's ``backward_bias``.

    forward(x: Tensor[N, C, ...], biases: Tensor[C], parts: dict) -> Tensor[N, C, ...].
    The gradient of ``biases`` is the sum over images of the per-image sums
    (Tensor[N, C], each over the positions in order); on CPU those per-image sums are
    also left in ``parts[biases]`` so that :class:`~darknet_py.train.Trainer` adds them
    into darknet's ``bias_updates`` buffer one image at a time, as darknet does.
    """

    @staticmethod
    def forward(ctx, x: Tensor, biases: Tensor, parts: dict):  # type: ignore[override]
        ctx.parts = parts
        ctx.key = biases
        return x + biases.view((1, -1) + (1,) * (x.dim() - 2))

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not ctx.needs_input_grad[1]:
            return g, None, None
        if not order.applies(g):            # CUDA: torch's sum, no order to keep
            return g, g.flatten(2).sum((0, 2)), None
        per_image = order.image_channel_sums(g)
        add_bias_rows(ctx.parts, ctx.key, per_image)
        return g, per_image.sum(0), None   # the Trainer adds the rows themselves


def add_bias_rows(parts: dict, biases: Tensor, per_image: Tensor) -> None:
    """Leave a backward's per-image bias sums Tensor[N, C] in ``parts[biases]`` for the
    Trainer.  A bias shared by two layers (share_index) gets both backwards' rows, in
    the order they run (darknet's: the later layer first)."""
    old = parts.get(biases)
    parts[biases] = per_image if old is None else torch.cat([old, per_image])


class _BiasSum:
    """The ``bias_function`` of a layer in exact mode: :class:`DarknetBias` into ``parts``."""

    def __init__(self, parts: dict):
        self.parts = parts

    def __call__(self, x: Tensor, biases: Tensor) -> Tensor:
        return DarknetBias.apply(x, biases, self.parts)


def darknet_bn(x: Tensor, scales: Tensor, dialect: str) -> tuple[Tensor, Tensor, Tensor]:
    """The ``bn_function`` of :func:`darknet_py.layers.norm.batchnorm` in exact mode."""
    return DarknetBatchNorm.apply(x, scales, dialect)


def head_backward(head, x: Tensor) -> Tensor:
    """``x`` (the head's train-mode input) wrapped so that the gradient leaving
    the head is what darknet's (GPU) backward of that head passes on (the head's
    ``darknet_backward``: only pjreddie's [region] changes anything)."""
    return head.darknet_backward(x)


def _conv_any(layer) -> bool:
    return layer.type == "convolutional"


def _conv_1x1(layer) -> bool:
    return layer.type == "convolutional" and layer.size == 1


def _reorg(layer) -> bool:
    return layer.type in ("reorg", "reorg3d")


#: dialect -> predicates of the layers whose backward assigns (not adds) the delta of layer i-1.
#: AlexeyAB conv and pjreddie 1x1 conv are confirmed by the train cases; [reorg] is read
#: from both sources (``reorg_cpu`` assigns) and not covered by the data.
OVERWRITES_INPUT_DELTA: dict[str, tuple[Callable[[object], bool], ...]] = {
    "pjreddie": (_conv_1x1, _reorg),
    "alexeyab": (_conv_any, _reorg),
}

#: dialect -> layer types whose delta buffer darknet never clears.  AlexeyAB's
#: ``forward_network`` zeroes ``l.delta`` only for layers with ``l.train`` set, and
#: the constructors of these layers never set it, so their delta keeps everything
#: added since training started.  [route] and [upsample] are confirmed by the
#: AlexeyAB train cases; the others from their constructors.
STALE_DELTA_TYPES: dict[str, frozenset[str]] = {
    "pjreddie": frozenset(),
    "alexeyab": frozenset({"route", "upsample", "reorg", "reorg3d", "scale_channels", "sam",
                           "avgpool"}),
}


def _overwritten_by_next(model, index: int) -> bool:
    """Does layer ``index + 1`` assign (not add) the delta of layer ``index``?"""
    if index + 1 >= len(model.module_list):
        return False
    nxt = model.module_list[index + 1]
    return nxt.sources == [index] and any(r(nxt) for r in OVERWRITES_INPUT_DELTA[model.dialect])


def dropped_edges(model) -> list[tuple[int, int]]:
    """(consumer, source) pairs whose gradient darknet loses: ``source = i-1`` of a
    layer ``i`` that overwrites its input delta, ``consumer > i`` another reader of
    ``source`` (its backward ran earlier and was overwritten)."""
    readers: dict[int, list[int]] = {}
    for j, layer in enumerate(model.module_list):
        for s in layer.sources:
            readers.setdefault(s, []).append(j)
    edges = []
    for src in range(len(model.module_list) - 1):
        if _overwritten_by_next(model, src):
            edges += [(j, src) for j in readers.get(src, []) if j > src + 1]
    return edges


def stale_layers(model) -> list[int]:
    """Layers whose delta darknet carries over from pass to pass (and update to
    update): a type of :data:`STALE_DELTA_TYPES` not overwritten by the next layer."""
    types = STALE_DELTA_TYPES[model.dialect]
    return [i for i, m in enumerate(model.module_list)
            if m.type in types and not _overwritten_by_next(model, i)]


def _detach_inputs(positions: tuple[int, ...]):
    def hook(module, inputs):
        return tuple(t.detach() if k in positions else t for k, t in enumerate(inputs))
    return hook


def _refuse_unsupported(model) -> None:
    """Layers with ``exact_backward = False`` (the recurrent ones: [rnn], [gru], [lstm],
    [crnn], [conv_lstm], [history]) have a backward of their own in darknet that is not
    reproduced here: exact mode would silently train them with autograd, so it refuses
    them."""
    for layer in model.module_list:
        if not getattr(layer, "exact_backward", True):
            sec = layer.section
            raise UnsupportedLayerError(
                f"layer {layer.index} [{sec.name or sec.type}]: the exact darknet backward "
                f"(mode='exact') does not support this layer; train with mode='autograd'",
                sec.file, sec.line)


class DarknetBackward:
    """Darknet's backward plugged into a model (see :func:`install`).

    Holds the hook handles and, for AlexeyAB, the delta buffers darknet never
    clears (``stale``: layer index -> Tensor[mini_batch, C, H, W]); they are part
    of the training state (:meth:`state_dict`).  A buffer restarts from zero when
    the layer's output shape changes (darknet reallocates it on resize).
    """

    def __init__(self, model, mode: str):
        if mode not in MODES:
            raise ValueError(f"unknown backward mode {mode!r}; expected one of {MODES}")
        if mode == "exact":
            _refuse_unsupported(model)
        self.mode = mode
        self.stale: dict[int, Tensor] = {}
        self.handles: list[RemovableHandle] = []
        #: exact mode: bias parameter -> its per-image gradient sums of the last backward
        self.bias_parts: dict[Tensor, Tensor] = {}
        from .conv_tail import ConvTail   # here: numba loads when a model trains, not on import
        fn = darknet_bn if mode == "exact" else None
        bias_fn = _BiasSum(self.bias_parts) if mode == "exact" else None
        for layer in model.module_list:
            if getattr(layer, "batch_normalize", False):
                layer.bn_function = fn
            if hasattr(layer, "_norm_bias"):
                layer.bias_function = bias_fn
            if layer.type == "convolutional":
                layer.__dict__["train_tail"] = (ConvTail(mode, model.dialect, layer.act_name,
                                                         self.bias_parts)
                                                if ConvTail.supports(layer) else None)
        if mode != "exact":
            return
        for consumer, source in dropped_edges(model):
            layer = model.module_list[consumer]
            pos = tuple(k for k, s in enumerate(layer.sources) if s == source)
            self.handles.append(layer.register_forward_pre_hook(_detach_inputs(pos)))
        for i in stale_layers(model):
            self.handles.append(model.module_list[i].register_forward_hook(self._stale_hook(i)))

    def _stale_hook(self, index: int):
        def on_grad(grad: Tensor) -> Tensor:
            old = self.stale.get(index)
            total = grad if old is None or old.shape != grad.shape else grad + old
            self.stale[index] = total.detach().clone()
            return total

        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled() and output.requires_grad:
                output.register_hook(on_grad)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def state_dict(self) -> dict:
        return {"stale": {i: t.clone() for i, t in self.stale.items()}}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.stale = {int(i): t.clone().to(device) if device is not None else t.clone()
                      for i, t in state.get("stale", {}).items()}


def install(model, mode: str = "exact") -> DarknetBackward:
    """Plug darknet's backward into ``model``: each batch-normalised layer's
    ``bn_function`` (exact mode: :func:`darknet_bn`; autograd mode: none) and, in
    exact mode, the gradient darknet loses (:func:`dropped_edges`) and the deltas
    it never clears (:func:`stale_layers`).  Exact mode raises
    :class:`~darknet_py.errors.UnsupportedLayerError` for a model with a layer whose
    darknet backward is not reproduced (``exact_backward = False``: [rnn], [gru], [lstm],
    [crnn], [conv_lstm], [history])."""
    return DarknetBackward(model, mode)
