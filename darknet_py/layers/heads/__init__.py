"""Detection heads: [yolo], [Gaussian_yolo], [region], [detection], one module each.

In eval mode a head returns darknet's ``l.output`` for the layer (same NCHW
layout, the same entries activated; AlexeyAB's [region] keeps the NCHW layout,
see :class:`Region`); in train mode it returns its raw input, which
``loss(x, targets, input_hw)`` turns into darknet's deltas.  Each class also
owns its typed parameters (``head.params``), ``decode`` (darknet's detections)
and, for [yolo] and [region], ``traceable_decode`` (decoded-box ONNX export).

The training deltas of [yolo] and [region] are long enough to have their own
modules, :mod:`.yolo_targets` and :mod:`.region_targets` (one function per
phase of darknet's forward pass).  Shared pieces: :mod:`.base` (the
:class:`Head` base and the registry), :mod:`.targets` (darknet's target
assignment as pure functions, truth buffers), :mod:`.delta` (the autograd
functions turning a delta into a loss).
"""
from .base import HEAD_CLASSES, Head, is_head, traceable_head_types
from .yolo import Yolo, YoloParams
from .gaussian_yolo import GaussianParams, GaussianYolo
from .region import Region, RegionParams
from .detection import DetectionHead, DetectionParams

#: the section types that are detection heads (derived from the registered classes)
HEAD_TYPES: frozenset[str] = frozenset(HEAD_CLASSES)

__all__ = ["HEAD_CLASSES", "HEAD_TYPES", "Head", "is_head", "traceable_head_types",
           "Yolo", "YoloParams", "GaussianYolo", "GaussianParams", "Region", "RegionParams",
           "DetectionHead", "DetectionParams"]
