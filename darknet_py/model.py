"""``Darknet``: an ``nn.Module`` built from a cfg, one module per darknet layer."""
from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from . import layers as _layers  # noqa: F401  (registers the builders)
from .builder import BuildContext, Shape, build_layer
from .cfg import Cfg, Section, parse_cfg
from .init import init_darknet_
from .layers.base import DarknetLayer
from .weights import DEFAULT_VERSION, Header, LoadReport, load_weights, save_weights


#: layer types whose forward takes channels-last inputs as they are (the others get
#: NCHW-contiguous copies in a channels-last forward; e.g. a ``.view`` needs them);
#: in training the heads are not among them (their losses view the raw input)
_CHANNELS_LAST_TYPES = frozenset({"convolutional", "route", "shortcut", "upsample", "yolo"})
_CHANNELS_LAST_TRAINING = _CHANNELS_LAST_TYPES - {"yolo"}


def _channels_last_safe(layer: nn.Module, training: bool = False) -> bool:
    kind = getattr(layer, "type", None)
    if kind == "maxpool":
        return not getattr(layer, "depth", False)
    return kind in (_CHANNELS_LAST_TRAINING if training else _CHANNELS_LAST_TYPES)


class Darknet(nn.Module):
    """A darknet network.

    ``Darknet(cfg, width=None, height=None, dialect="auto")``: ``cfg`` is a path,
    cfg text or a parsed :class:`~darknet_py.cfg.Cfg`.  ``module_list[i]`` is
    darknet layer ``i``; ``shapes[i]`` its output (c, h, w).

    ``forward(x)`` takes ``Tensor[N, C, H, W]`` and returns the list of head
    outputs (darknet's ``l.output`` in eval mode, the raw head inputs in train
    mode); a network without heads returns ``[output of the last layer]``.
    """

    def __init__(self, cfg: str | os.PathLike | Cfg, width: int | None = None,
                 height: int | None = None, dialect: str = "auto"):
        super().__init__()
        if not isinstance(cfg, Cfg):
            cfg = parse_cfg(cfg, dialect=dialect)
        self.cfg = cfg
        self.dialect = cfg.dialect
        net = cfg.net
        w = width or net["width"]
        h = height or net["height"]
        c = net["channels"]
        if not (w > 0 and h > 0 and c > 0):
            if net["inputs"] <= 0:
                raise net.error(f"[net] needs width, height and channels > 0 (got {w}x{h}x{c})")
            c, h, w = net["inputs"], 1, 1
        self.input_shape: Shape = (c, h, w)
        shapes: list[Shape] = []
        built: list[DarknetLayer] = []
        in_shape: Shape = (c, h, w)
        for i, sec in enumerate(cfg.layers):
            ctx = BuildContext(i, in_shape, shapes, built, net, cfg.dialect, cfg.file,
                               batch=net["batch"])
            layer = build_layer(sec, ctx)
            built.append(layer)
            shapes.append(layer.out_shape)
            in_shape = layer.out_shape
        if not built:
            raise net.error("the cfg has no layers after [net]")
        self.module_list = nn.ModuleList(built)
        init_darknet_(self)
        self.shapes = shapes
        self.heads = [i for i, m in enumerate(built) if m.is_head]
        last_use = {}
        for i, m in enumerate(built):
            for s in m.sources:
                last_use[s] = i
        self._last_use = last_use
        self.header = Header.new(DEFAULT_VERSION[self.dialect], 0, self.dialect)

    # ------------------------------------------------------------- properties
    @property
    def net(self) -> Section:
        return self.cfg.net

    @property
    def width(self) -> int:
        return self.input_shape[2]

    @property
    def height(self) -> int:
        return self.input_shape[1]

    @property
    def seen(self) -> int:
        return self.header.seen

    @seen.setter
    def seen(self, value: int) -> None:
        h = self.header
        self.header = Header(h.major, h.minor, h.revision, int(value), h.seen_width)
        for i in self.heads:
            self.module_list[i].seen = int(value)

    # ------------------------------------------------------------- running
    def run_layer(self, i: int, *inputs: Tensor) -> Tensor:
        """Run layer ``i`` alone on the given outputs of its ``sources`` (teacher forcing)."""
        return self.module_list[i](*inputs)

    def forward_all(self, x: Tensor, keep: Iterable[int] | None = None) -> dict[int, Tensor]:
        """Run the network; returns {layer index: output} for the heads, the last
        layer and every index in ``keep``."""
        wanted = set(self.heads) | {len(self.module_list) - 1} | set(keep or ())
        # like darknet's net.w/net.h after resize_network: the loss reads the size run last
        self.input_hw = (int(x.shape[-2]), int(x.shape[-1]))
        nhwc = self._use_channels_last(x)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        outs: dict[int, Tensor] = {-1: x}
        result: dict[int, Tensor] = {}
        for i, m in enumerate(self.module_list):
            if nhwc and not _channels_last_safe(m, self.training):
                y = m(*(outs[s].contiguous() for s in m.sources))
            else:
                y = m(*(outs[s] for s in m.sources))
            outs[i] = y
            if i in wanted:
                result[i] = y
            for s in m.sources:  # free what no later layer reads
                if self._last_use.get(s) == i and s not in wanted:
                    outs.pop(s, None)
        return result

    def _use_channels_last(self, x: Tensor) -> bool:
        """On CPU the forward runs channels-last (NHWC) activations, in eval and training
        mode: oneDNN's convolutions (and their backward) and max pooling are much faster
        so (the same numbers to ~1e-6).  ``model.channels_last = False`` turns it off."""
        return (x.dim() == 4 and x.device.type == "cpu"
                and getattr(self, "channels_last", None) is not False and not torch.jit.is_tracing())

    def forward(self, x: Tensor) -> list[Tensor]:
        res = self.forward_all(x)
        if self.heads:
            return [res[i] for i in self.heads]
        return [res[len(self.module_list) - 1]]

    def for_inference(self, precision: str = "fp32", channels_last: bool | None = None,
                      device: torch.device | str | None = None) -> "Darknet":
        """The fastest way to run this network: a copy in eval mode with batch norm
        folded into the convolutions, no gradients, channels-last on CPU and, with
        ``precision="bf16"`` (CPUs with AVX512_BF16/AMX, CUDA) or ``"fp16"`` (CUDA),
        the body in reduced precision (float32 in and out).  This model is untouched
        (train or save it, not the copy).  fp32 gives darknet's numbers to ~1e-6 of
        each layer's range; it is what ``darknet_py.detect`` runs."""
        from .fuse import inference_model
        return inference_model(self, channels_last=channels_last, precision=precision, device=device)

    # ------------------------------------------------------------- loss
    def loss(self, outputs: list[Tensor], targets: Tensor,
             input_hw: tuple[int, int] | None = None) -> tuple[Tensor, list[dict]]:
        """Sum of the heads' losses on train-mode ``outputs``; per-head stats.

        ``input_hw`` (net_h, net_w) defaults to the size of the last forward
        (darknet's net.h/net.w after a multi-scale resize), else the cfg's.
        """
        total = outputs[0].new_zeros(())
        stats = []
        hw = input_hw or getattr(self, "input_hw", None) or (self.height, self.width)
        for i, x in zip(self.heads, outputs):
            l, s = self.module_list[i].loss(x, targets, hw)
            total = total + l
            stats.append({"layer": i, **s})
        return total, stats

    # ------------------------------------------------------------- weights
    def reset_state(self) -> None:
        """Forget the state recurrent layers carry from one call to the next."""
        for layer in self.module_list:
            reset = getattr(layer, "reset_state", None)
            if reset is not None:
                reset()

    def load_weights(self, path: str | os.PathLike, cutoff: int | None = None,
                     allow_trailing: bool = False, allow_partial: bool = True,
                     allow_nonfinite: bool = False) -> LoadReport:
        report = load_weights(self, path, cutoff, allow_trailing, allow_partial, allow_nonfinite)
        self.seen = report.header.seen
        # the loader may read straight into the storage, which torch does not see: bump the
        # version counters so what is derived from the weights (eval_affine) is redone
        for t in self.state_dict(keep_vars=True).values():
            if not t.is_inference():
                increment_version(t)
        return report

    def save_weights(self, path: str | os.PathLike, cutoff: int | None = None,
                     version: tuple[int, int, int] | None = None, seen: int | None = None,
                     durable: bool = False) -> Header:
        return save_weights(self, path, cutoff, version, seen, durable)
