"""Run an exported ONNX graph the way ``darknet-py detect`` runs the .weights.

``darknet-py detect --engine onnxruntime|opencv|openvino MODEL.onnx IMAGES``:
the graph's metadata (written by :func:`~darknet_py.onnx_export.export_onnx`)
holds the cfg, so the images are letterboxed or resized as darknet does for
that cfg, and the outputs go through darknet's post-processing:

* a graph of head outputs (the default export): ``get_network_boxes`` and the
  cfg's NMS, exactly what :class:`~darknet_py.detect.Detector` does with torch;
* a ``--nms`` graph (``detections [M, 7]``, NMS done in the graph): its rows
  are grouped into darknet detections, their boxes mapped back through the
  letterbox (darknet's ``correct_*_boxes``), then printed in darknet's order.

:data:`ENGINES` maps an engine name to a loader ``path -> run``, where
``run(x: float32 [N, C, H, W]) -> list[np.ndarray]`` returns the graph's
outputs in its output order.  The engine packages are imported only when used.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
import torch

from .detect import Detector
from .errors import DarknetError
from .image import prepare, to_float
from .postprocess import CORRECTIONS, Detections

Run = Callable[[np.ndarray], list]


def _onnxruntime(path: str) -> Run:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _opencv(path: str) -> Run:
    import cv2

    net = cv2.dnn.readNetFromONNX(path)
    names = list(net.getUnconnectedOutLayersNames())
    order = _output_names(path)

    def run_batch(x: np.ndarray) -> list:
        net.setInput(np.ascontiguousarray(x))
        outs = dict(zip(names, net.forward(names)))
        return [outs[n] for n in order] if set(order) <= set(outs) else [outs[n] for n in names]

    if int(cv2.__version__.split(".")[0]) >= 5:
        return run_batch

    def run(x: np.ndarray) -> list:   # OpenCV 4's importer fixes the batch at 1 in the heads' reshapes
        parts = [run_batch(x[i:i + 1]) for i in range(len(x))]
        return [np.concatenate(p) for p in zip(*parts)]
    return run


def _openvino(path: str) -> Run:
    import openvino as ov

    # OpenVINO's CPU plugin computes in bf16/fp16 where the CPU has it unless told: darknet's f32
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outs = compiled.outputs

    def run(x: np.ndarray) -> list:
        res = compiled(x)
        return [np.asarray(res[o]) for o in outs]
    return run


#: engine name -> loader of a graph file
ENGINES: dict[str, Callable[[str], Run]] = {
    "onnxruntime": _onnxruntime,
    "opencv": _opencv,
    "openvino": _openvino,
}


def _proto(path: str):
    try:
        import onnx
    except ImportError:
        raise DarknetError(f"{path}: reading the graph's metadata needs the onnx package "
                           f"(pip install onnx)") from None
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:   # noqa: BLE001 - any reader failure is the same user error
        raise DarknetError(f"{path}: not a readable ONNX file: {str(exc).strip()[:200]}") from None


def _output_names(path: str) -> list[str]:
    return [o.name for o in _proto(path).graph.output]


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``darknet_py.*`` metadata of an exported graph (values decoded)."""
    path = os.fspath(path)
    props = {p.key[len("darknet_py."):]: p.value for p in _proto(path).metadata_props
             if p.key.startswith("darknet_py.")}
    if "cfg" not in props:
        raise DarknetError(f"{path}: no darknet_py metadata (cfg): export the graph with "
                           f"darknet-py convert ... OUT.onnx")
    return {k: (v if k in ("cfg", "dialect") else json.loads(v)) for k, v in props.items()}


def model_of(meta: dict, path: str):
    """The :class:`~darknet_py.Darknet` of the embedded cfg (no weights: its heads
    give the post-processing its anchors, classes and options)."""
    import warnings

    from .cfg import parse_cfg
    from .model import Darknet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = parse_cfg(meta["cfg"], dialect=meta["dialect"], name=f"{path} (embedded cfg)")
        return Darknet(cfg, width=meta["width"], height=meta["height"])


class EngineDetector(Detector):
    """:class:`~darknet_py.detect.Detector` whose network is an ONNX graph run by ``engine``.

    Same arguments as the Detector (``names``, ``thresh``, ``hier_thresh``,
    ``nms``, ``resize``, ``nms_kind``, ``batch_size``); with a ``--nms`` graph
    the graph's own IoU and score thresholds apply (``nms`` and ``thresh``
    below the graph's can only keep what it kept).
    """

    def __init__(self, path: str | os.PathLike, engine: str = "onnxruntime",
                 names: Sequence[str] | None = None, thresh: float = 0.25, hier_thresh: float = 0.5,
                 nms: float = 0.45, resize: str | None = None, nms_kind: str | None = None,
                 batch_size: int = 8, **_):
        path = os.fspath(path)
        if engine not in ENGINES:
            raise DarknetError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
        self.meta = read_metadata(path)
        model = model_of(self.meta, path)
        if not model.heads:
            raise DarknetError(f"{path}: the network has no detection head ([yolo], [region], [detection])")
        try:
            self.engine = ENGINES[engine](path)
        except ImportError as exc:
            raise DarknetError(f"engine {engine!r} is not installed ({exc})") from None
        except Exception as exc:   # noqa: BLE001 - the runtime's own message, once
            raise DarknetError(f"{path}: {engine} cannot load the graph: "
                               f"{str(exc).strip().splitlines()[-1][:300]}") from None
        self.engine_name = engine
        self.device, self.channels_last = torch.device("cpu"), False
        self._set_postprocessing(model, names, thresh, hier_thresh, nms, resize, nms_kind, batch_size)
        self.unit = int(self.meta.get("batch_unit", 1))
        if self.meta.get("decode") and self.meta.get("nms") is None:
            raise DarknetError(f"{path}: a --decode graph without --nms is not run by detect "
                               f"(export the head outputs, or --nms)")

    def _forward(self, x: np.ndarray) -> list:
        try:
            return self.engine(x)
        except Exception as exc:   # noqa: BLE001
            hint = ""
            if self.engine_name == "opencv":
                import cv2
                if int(cv2.__version__.split(".")[0]) < 5:   # its ONNX importer lacks 6-D reshapes
                    hint = f" (OpenCV {cv2.__version__}; the graphs are tested with OpenCV >= 5)"
            raise DarknetError(f"{self.engine_name} cannot run the graph: "
                               f"{str(exc).strip().splitlines()[-1][:300]}{hint}") from None

    def run(self, images: Sequence[np.ndarray]) -> list[Detections]:
        result: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = torch.stack([prepare(to_float(im), self.net_w, self.net_h, self.resize)
                             for im in chunk]).numpy()
            sizes = [(im.shape[1], im.shape[0]) for im in chunk]
            outs = self._forward(x)
            if self.meta.get("nms") is None:
                result.extend(self.post([torch.from_numpy(np.asarray(o)) for o in outs], sizes))
            else:
                result.extend(self._from_rows(np.asarray(outs[0]), b, *wh) for b, wh in enumerate(sizes))
        return result

    def _from_rows(self, rows: np.ndarray, b: int, image_w: int, image_h: int) -> Detections:
        """A ``--nms`` graph's rows of image ``b`` as darknet's post-NMS detections: one
        detection per box (its classes' scores in ``prob``), boxes in the original image."""
        rows = rows[rows[:, 0] == b]
        if not len(rows):
            return Detections.empty(self.classes)
        corners, inverse = np.unique(rows[:, 3:7], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        prob = np.zeros((len(corners), self.classes), np.float32)
        prob[inverse, rows[:, 1].astype(np.int64)] = rows[:, 2]
        x1, y1, x2, y2 = corners.T.astype(np.float64)
        rel = np.stack([(x1 + x2) / 2 / self.net_w, (y1 + y2) / 2 / self.net_h,
                        (x2 - x1) / self.net_w, (y2 - y1) / self.net_h], 1).astype(np.float32)
        boxes = CORRECTIONS[self.post.dialect](rel, self.post.context(image_w, image_h))
        return Detections(boxes, prob.max(1), prob, np.full(len(corners), self.classes - 1),
                          np.ones(len(corners), bool), self.classes)


def detector(engine: str, model_path: str | os.PathLike, **kw) -> Detector:
    """The detector ``darknet-py detect --engine ENGINE MODEL.onnx`` uses."""
    return EngineDetector(model_path, engine, **kw)
