"""Darknet's training losses: a compatibility layer over the head classes.

Each head class of :mod:`darknet_py.layers.heads` owns its loss
(``head.loss(x, targets, input_hw) -> (loss, stats)``, gradient w.r.t. ``x``
exactly minus darknet's ``l.delta``).  This module keeps the older function
names: :data:`LOSSES` (derived from the head classes), :func:`head_loss`, and
``yolo_loss(head, x, targets, input_hw, ...)`` etc., which are the classes'
``loss`` methods.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from ..errors import UnsupportedLayerError
from ..layers.heads import HEAD_CLASSES, DetectionHead, GaussianYolo, Region, Yolo, is_head

LossFn = Callable[..., tuple[Tensor, dict[str, Any]]]

#: head type -> loss function ``(head, x, targets, input_hw)`` (each class's ``loss``)
LOSSES: dict[str, LossFn] = {t: cls.loss for t, cls in HEAD_CLASSES.items()}

yolo_loss = Yolo.loss
gaussian_yolo_loss = GaussianYolo.loss
region_loss = Region.loss
detection_loss = DetectionHead.loss


def head_loss(head: Any, x: Tensor, targets: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
    """``(loss, stats)`` of one head; ``d loss / d x == -l.delta`` of darknet."""
    if not is_head(head):
        sec = head.section
        raise UnsupportedLayerError(f"layer {head.index} [{sec.type}] has no loss in darknet_py",
                                    sec.file, sec.line)
    return head.loss(x, targets, input_hw)


__all__ = ["LOSSES", "head_loss", "yolo_loss", "region_loss", "detection_loss", "gaussian_yolo_loss"]
