"""What every detection head shares, and the registry the head types come from.

A head class owns everything about its section type: the typed parameter
record read once from the section (``head.params``), ``forward`` (darknet's
``l.output`` in eval mode, the raw input in train mode), ``loss`` (darknet's
``l.delta`` as a gradient), ``decode`` (darknet's detections, exact) and, for
the types that export decoded boxes, ``traceable_decode`` (all in torch).
:func:`register_head` records the class and its builder; :data:`HEAD_CLASSES`
and :func:`is_head` are derived from it, so no list of head type names is
written anywhere else.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ...builder import BuildContext, register
from ...cfg import Section
from ...errors import UnsupportedLayerError
from ..base import DarknetLayer
from .delta import DeltaResult

if TYPE_CHECKING:
    from ...postprocess import DecodeContext, Detections

#: section type -> head class, in registration order (yolo, Gaussian_yolo, region, detection)
HEAD_CLASSES: dict[str, type["Head"]] = {}


def register_head(cls: type["Head"]) -> type["Head"]:
    """Class decorator: ``cls.type`` becomes a head type and ``cls`` its builder."""
    if cls.type in HEAD_CLASSES:
        raise RuntimeError(f"head type [{cls.type}] registered twice")
    HEAD_CLASSES[cls.type] = cls
    register(cls.type)(cls)
    return cls


def is_head(what: "DarknetLayer | Section | str") -> bool:
    """Whether a layer, a section or a section type name is a detection head."""
    if isinstance(what, str):
        return what in HEAD_CLASSES
    if isinstance(what, Section):
        return what.type in HEAD_CLASSES
    return isinstance(what, Head)


def traceable_head_types() -> tuple[str, ...]:
    """The head types with a :meth:`Head.traceable_decode` (decoded-box export)."""
    return tuple(t for t, cls in HEAD_CLASSES.items() if cls.traceable)


def where_of(index: int, sec: Section) -> str:
    """``layer 3 [yolo] at file.cfg:12``: how loss errors name the head."""
    return f"layer {index} [{sec.name or sec.type}] at {sec.file}:{sec.line}"


def check_channels(sec: Section, ctx: BuildContext, expected: int, formula: str,
                   flat: bool = False) -> None:
    """The head's input must have ``expected`` channels (``c*h*w`` values when ``flat``)."""
    c, h, w = ctx.in_shape
    got = c * h * w if flat else c
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


def read_anchors(sec: Section, total: int, key: str = "anchors") -> tuple[tuple[float, float], ...]:
    """``total`` (w, h) pairs of ``anchors=`` (raises when it is too short)."""
    a = sec["anchors"] or ()
    if len(a) < 2 * total:
        raise sec.error(f"anchors= has {len(a)} numbers but num={total} needs {2 * total}", key)
    return tuple((a[2 * i], a[2 * i + 1]) for i in range(total))


class DialectParams:
    """Mixin for the head parameter records: ``ab`` is True for AlexeyAB."""

    dialect: str

    @property
    def ab(self) -> bool:
        return self.dialect == "alexeyab"


class Head(DarknetLayer, metaclass=abc.ABCMeta):
    """A detection head: typed parameters, forward, loss, decode.

    ``params`` is the head's frozen parameter record, built once from the
    section in ``__init__``; the attributes other code reads (``classes``,
    ``n``, ``anchors`` ...) are views of it.
    """

    #: whether :meth:`traceable_decode` exists for this type (decoded-box ONNX export)
    traceable: ClassVar[bool] = False
    #: the network's ``seen`` counter; the model keeps it current (region prior term)
    seen: int = 0
    params: Any

    @property
    def is_head(self) -> bool:
        return True

    @property
    def opts(self) -> dict[str, Any]:
        return self.section.options

    @property
    def where(self) -> str:
        return self.params.where

    @property
    def classes(self) -> int:
        return self.params.classes

    def forward(self, x: Tensor) -> Tensor:
        return x if self.training else self.activate(x)

    @abc.abstractmethod
    def activate(self, x: Tensor) -> Tensor:
        """The eval-mode output (darknet's ``l.output``) of the input ``x``."""

    @abc.abstractmethod
    def delta(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> DeltaResult:
        """darknet's ``l.delta`` (``x``'s shape), its cost and the stats darknet prints."""

    @abc.abstractmethod
    def loss(self, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        """(loss, stats) whose gradient w.r.t. ``x`` is minus darknet's ``l.delta``.

        ``x``: Tensor[N, C, H, W], the head's raw input; ``targets``: Tensor[M, 6]
        rows (image, class, cx, cy, w, h) normalised; ``input_hw``: (net_h, net_w).
        """

    @abc.abstractmethod
    def decode(self, out: Tensor, ctx: DecodeContext) -> Detections:
        """darknet's detections of one image: ``out`` is this head's eval output for
        it (``Tensor[C, H, W]``, ``[outputs]`` for [detection]); the
        :class:`~darknet_py.postprocess.Detections` in darknet's array order."""

    def traceable_decode(self, y: Tensor, net_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Eval output ``y`` Tensor[N, C, H, W] -> (boxes [N, K, 4], objectness [N, K],
        scores [N, K, classes]), torch only (ONNX export); only where ``traceable``."""
        sec = self.section
        raise UnsupportedLayerError(f"{self.where}: [{self.type}] has no traceable box decode",
                                    sec.file, sec.line)

    def summary_columns(self) -> tuple[int | None, str, str]:
        """(filters, size/stride text, note) of the ``inspect`` layer table."""
        return None, "", f"anchors {self.section['num']} classes {self.section['classes']}"

    def darknet_backward(self, x: Tensor) -> Tensor:
        """``x`` (the train-mode input) wrapped so that the gradient leaving the head
        is what darknet's backward of the head passes on; identity by default."""
        return x
