"""Darknet's training losses, one module per head type.

``head_loss(head, x, targets, input_hw) -> (loss, stats)`` dispatches on the
head's type through :data:`LOSSES`.  Every loss is built so that its autograd
gradient with respect to ``x`` (the head's raw input) is exactly minus the
``l.delta`` darknet computes for that layer, in darknet's sum form (no batch
averaging), and its value is the cost darknet reports (see :mod:`.base`).

``targets`` is ``Tensor[M, 6]`` with rows ``(image, class, cx, cy, w, h)``
normalised to [0, 1], in the order darknet would read them; ``input_hw`` is
the network input ``(height, width)``.  Target assignment lives in
:mod:`.targets` (pure functions), the loss terms in :mod:`.yolo`,
:mod:`.region`, :mod:`.detection` and :mod:`.gaussian_yolo`.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..errors import UnsupportedLayerError
from .detection import detection_loss
from .gaussian_yolo import gaussian_yolo_loss
from .region import region_loss
from .yolo import yolo_loss

LossFn = Callable[[Any, Tensor, Tensor, tuple[int, int]], tuple[Tensor, dict[str, Any]]]

#: head type (``head.type``) -> loss function
LOSSES: dict[str, LossFn] = {
    "yolo": yolo_loss,
    "Gaussian_yolo": gaussian_yolo_loss,
    "region": region_loss,
    "detection": detection_loss,
}


def head_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of one head; ``d loss / d x == -l.delta`` of darknet."""
    try:
        fn = LOSSES[head.type]
    except KeyError:
        sec = head.section
        raise UnsupportedLayerError(f"layer {head.index} [{sec.type}] has no loss in darknet_py",
                                    sec.file, sec.line) from None
    return fn(head, x, targets, input_hw)


__all__ = ["LOSSES", "head_loss", "yolo_loss", "region_loss", "detection_loss", "gaussian_yolo_loss"]
