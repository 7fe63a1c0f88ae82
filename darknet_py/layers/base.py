"""The base of every layer module."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..builder import BuildContext, Shape
from ..cfg import Section


class DarknetLayer(nn.Module):
    """One darknet layer.

    ``forward(*inputs)`` takes the outputs of ``self.sources`` (absolute layer
    indices, in order) and returns this layer's output, so any layer can be run
    on given inputs (teacher forcing).  ``in_shape`` / ``out_shape`` are
    ``(c, h, w)`` as darknet computes them.  ``darknet_tensors()`` lists the
    parameters and buffers in the order darknet's weights file stores them.
    """

    type: ClassVar[str] = "?"

    def __init__(self, sec: Section, ctx: BuildContext, out_shape: Shape,
                 sources: list[int] | None = None):
        super().__init__()
        self.index = ctx.index
        self.section = sec
        self.dialect = ctx.dialect
        self.in_shape: Shape = ctx.in_shape
        self.out_shape: Shape = tuple(int(v) for v in out_shape)  # type: ignore[assignment]
        self.sources: list[int] = [ctx.index - 1] if sources is None else list(sources)
        if self.index == 0 and sources is None:
            self.sources = [-1]  # the network input
        self.lr_scale = float(sec.get("learning_rate", 1.0))
        self.stopbackward = int(sec.get("stopbackward", 0))
        if min(self.out_shape) <= 0:
            raise sec.error(f"layer {self.index} [{sec.name}] has an empty output shape "
                            f"{self.out_shape} for input {self.in_shape}")

    @property
    def is_head(self) -> bool:
        return False

    def darknet_tensors(self) -> list[tuple[str, Tensor]]:
        """(name, tensor) in darknet's file order; empty for layers without weights."""
        return []

    def flops(self) -> float:
        """Darknet's BFLOPs count for this layer (0 where darknet prints none)."""
        return 0.0

    def extra_repr(self) -> str:
        c, h, w = self.in_shape
        oc, oh, ow = self.out_shape
        return f"{self.index}: {self.type} {c}x{h}x{w} -> {oc}x{oh}x{ow}"


def zeros_param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


def flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)
