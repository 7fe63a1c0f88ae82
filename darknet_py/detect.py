"""``darknet_py.detect``: images in, darknet's detections out.

The pipeline is darknet's ``test_detector``: load (RGB, ``v/255.``), letterbox
or plain resize (the cfg's choice unless told), the network (BN folded, see
:mod:`darknet_py.fuse`), ``get_network_boxes``, NMS (``do_nms_sort`` or the
cfg's AlexeyAB ``nms_kind``), then one :class:`Detection` per (box, class)
whose probability exceeds ``thresh``, in the order darknet prints them.
Boxes are ``(x1, y1, x2, y2)`` in pixels of the original image.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from .data.datafile import read_names  # noqa: F401  (darknet_py.detect.read_names, one reader)
from .errors import DarknetError
from .fuse import inference_model
from .image import default_resize_mode, load_image, prepare, to_float
from .postprocess import Detections, Postprocessor

ImageInput = "str | os.PathLike | np.ndarray"


@dataclass
class Detection:
    """One (box, class) darknet reports: ``box`` = (x1, y1, x2, y2) pixels."""

    class_id: int
    name: str
    prob: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict:
        return {"class_id": self.class_id, "name": self.name, "prob": self.prob,
                "box": [float(v) for v in self.box]}


@dataclass
class ImageResult:
    """The detections of one image, or the error that stopped it."""

    image: str
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        return {"image": self.image, "width": self.width, "height": self.height,
                "detections": [d.to_json() for d in self.detections]}


class Detector:
    """A model ready to detect: ``Detector(model, names=..., thresh=...)``.

    ``model``: a loaded :class:`~darknet_py.Darknet`.  ``resize``: ``"letterbox"``,
    ``"resize"`` or None for darknet's choice (pjreddie: letterbox; AlexeyAB:
    ``[net] letter_box``).  ``nms=0`` disables NMS; ``nms_kind`` overrides the
    cfg's AlexeyAB ``nms_kind``.  The network runs with batch norm folded and,
    by default, channels_last activations (faster with oneDNN on CPU, same
    numbers to ~1e-6; see benchmarks/bench_inference.py).  ``channels_last=None``:
    on CPU.  ``precision``: ``"fp32"`` (darknet's numbers), ``"bf16"`` (CPUs with
    AVX512_BF16/AMX, CUDA) or ``"fp16"`` (CUDA); refused where the hardware lacks it.
    """

    def __init__(self, model, names: Sequence[str] | None = None, thresh: float = 0.25,
                 hier_thresh: float = 0.5, nms: float = 0.45, resize: str | None = None,
                 nms_kind: str | None = None, device: torch.device | str | None = None,
                 batch_size: int = 8, fuse: bool = True, channels_last: bool | None = None,
                 precision: str = "fp32"):
        if not model.heads:
            raise DarknetError("the network has no detection head ([yolo], [region], [detection])")
        self.device = torch.device(device) if device is not None else next(
            (p.device for p in model.parameters()), torch.device("cpu"))
        self.model = inference_model(model, fuse_bn=fuse, channels_last=channels_last,
                                     precision=precision, device=self.device)
        self.channels_last = self.model.channels_last
        self._set_postprocessing(model, names, thresh, hier_thresh, nms, resize, nms_kind, batch_size)

    def _set_postprocessing(self, model, names: Sequence[str] | None, thresh: float,
                            hier_thresh: float, nms: float, resize: str | None,
                            nms_kind: str | None, batch_size: int) -> None:
        """darknet's resize mode, decoding, NMS and class names for ``model``'s heads."""
        self.net_w, self.net_h = model.width, model.height
        letter_box = int(model.net.options.get("letter_box", 0) or 0)
        self.resize = resize or default_resize_mode(model.dialect, letter_box)
        kw = {"thresh": thresh, "hier_thresh": hier_thresh, "nms": nms,
              "letter": self.resize == "letterbox"}
        if nms_kind:
            kw["nms_kind"] = nms_kind
        self.post = Postprocessor.for_model(model, **kw)
        self.classes = self.post.heads[0].classes
        self.names = list(names) if names else [str(i) for i in range(self.classes)]
        self.batch_size = max(1, int(batch_size))

    @property
    def thresh(self) -> float:
        return self.post.thresh

    # ------------------------------------------------------------ core
    def run(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """darknet's post-NMS :class:`Detections` for ``uint8 [H, W, 3]`` RGB images."""
        result: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = torch.stack([prepare(to_float(im), self.net_w, self.net_h, self.resize) for im in chunk])
            x = x.to(self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                outs = self.model(x)
            result.extend(self.post(outs, [(im.shape[1], im.shape[0]) for im in chunk]))
        return result

    def to_detections(self, dets: Detections, width: int, height: int) -> list[Detection]:
        out = []
        for i, cls, prob in dets.pairs(self.post.thresh, self.post.dialect, self.names):
            name = self.names[cls] if cls < len(self.names) else str(cls)
            out.append(Detection(cls, name, prob, dets.corners(i, width, height)))
        return out

    def detect_arrays(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections of ``uint8 [H, W, 3]`` RGB images."""
        return [self.to_detections(d, im.shape[1], im.shape[0]) for d, im in zip(self.run(images), images)]

    def __call__(self, images: Iterable[ImageInput]) -> list[ImageResult]:
        """Detect on files or arrays; a file that cannot be read gives an
        :class:`ImageResult` with ``error`` set, the others are still processed."""
        items = list(images)
        results: list[ImageResult] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            t0 = time.perf_counter()
            loaded, pending = [], []
            for item in chunk:
                name = item if isinstance(item, str) else ("<array>" if isinstance(item, np.ndarray)
                                                            else os.fspath(item))
                res = ImageResult(name)
                results.append(res)
                try:
                    im = item if isinstance(item, np.ndarray) else load_image(item)
                except DarknetError as exc:
                    res.error = str(exc)
                    continue
                res.height, res.width = im.shape[:2]
                loaded.append(im)
                pending.append(res)
            if loaded:
                dets = self.run(loaded)
                per = (time.perf_counter() - t0) / len(loaded)
                for res, d in zip(pending, dets):
                    res.detections = self.to_detections(d, res.width, res.height)
                    res.seconds = per
        return results


#: model files that carry their cfg with the parameters (what ``convert`` writes)
MODEL_FILE_EXTS = (".pt", ".pth", ".safetensors")


def is_model_file(path: str | os.PathLike) -> bool:
    """True for a ``.pt``/``.pth``/``.safetensors`` file name."""
    return os.fspath(path).lower().endswith(MODEL_FILE_EXTS)


def load_detector_model(model: str | os.PathLike, weights: str | os.PathLike | None = None,
                        dialect: str = "auto"):
    """A :class:`~darknet_py.Darknet` with its parameters, from

    * a cfg and its ``.weights`` (darknet's pair),
    * a cfg and a ``.pt``/``.safetensors`` (the cfg replaces the embedded one;
      needed for a bare state dict),
    * a ``.pt``/``.safetensors`` alone (the cfg ``convert`` stored in it).
    """
    import warnings

    from .convert import load_model
    from .model import Darknet
    from .weights import PartialWeightsWarning

    if weights is None and is_model_file(model):
        net, info = load_model(model, None, dialect)
    elif weights is None:
        what = "a .weights file needs its cfg" if os.fspath(model).lower().endswith(".weights") \
            else "a cfg needs its weights file"
        raise DarknetError(f"{os.fspath(model)}: {what} (CFG WEIGHTS, or a .pt/.safetensors "
                           f"that holds its cfg)")
    elif is_model_file(weights):
        net, info = load_model(weights, model, dialect)
    else:
        net = Darknet(model, dialect=dialect)
        net.load_weights(weights)
        return net
    if info.cutoff is not None:  # as load_weights warns for a partial .weights
        warnings.warn(f"{info.file}: holds only layers [0, {info.cutoff}) of "
                      f"{len(net.module_list)}; the others keep their initial values",
                      PartialWeightsWarning, stacklevel=2)
    return net


def detect(model, images, weights: str | os.PathLike | None = None, **kw) -> list[ImageResult]:
    """Detect objects the way darknet does.

    ``model``: a :class:`~darknet_py.Darknet` (weights loaded), a cfg path (then
    ``weights`` is its ``.weights``, ``.pt`` or ``.safetensors`` file) or a
    ``.pt``/``.safetensors`` model file alone (:func:`load_detector_model`).
    ``images``: one or several paths or ``uint8 [H, W, 3]`` RGB arrays.
    Keyword arguments go to :class:`Detector` (``names``, ``thresh``,
    ``hier_thresh``, ``nms``, ``resize``, ``nms_kind``, ``device``,
    ``batch_size``, ``channels_last``, ``precision``).
    """
    if not isinstance(model, torch.nn.Module):
        model = load_detector_model(model, weights)
    elif weights is not None:
        model.load_weights(weights)
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    names = kw.pop("names", None)
    if isinstance(names, (str, os.PathLike)):
        names = read_names(names)
    return Detector(model, names=names, **kw)(images)
