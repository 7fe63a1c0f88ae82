"""ONNX export of a darknet model, checked against torch layer by layer.

* :func:`export_onnx` writes the graph (dynamic batch) with the head outputs as
  the model returns them in eval mode, or decoded boxes (:class:`BoxDecoder`);
* :class:`TeacherForced` runs every layer on given inputs so that each layer's
  ONNX graph is checked on its own (:func:`_probe_layers`), and a layer ONNX
  cannot express is named with its cfg line;
* :func:`exact_arithmetic_gaps` tells float rounding amplified by depth from a
  wrong graph by comparing both runtimes with float64 torch.

``darknet_py.convert`` re-exports these names (``convert x.weights x.onnx``).
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .errors import ConvertError, DarknetError
from .formats import _first_line, _write_error
from .layers.heads import traceable_head_types
from .optional import INSTALL, available, require
from .weights import layer_label
from .files import atomic_write
from .model import Darknet


# ---------------------------------------------------------------- decoding (traceable)

class BoxDecoder(nn.Module):
    """The model with its heads decoded, all in torch (so it exports to ONNX).

    ``forward(x: Tensor[N, C, H, W])`` -> ``(boxes Tensor[N, K, 4], scores
    Tensor[N, K, classes], objectness Tensor[N, K])``: boxes are centre x, y,
    w, h relative to the network input (darknet's ``get_network_boxes`` with the
    image size equal to the network size), ``scores`` = objectness x class
    probability, rows in darknet's detection order, heads in layer order.
    Thresholding and NMS are left to the caller, as darknet does them.
    """

    def __init__(self, model: Darknet):
        super().__init__()
        heads = [model.module_list[i] for i in model.heads]
        if not heads:
            raise ConvertError(f"{model.cfg.file}: the network has no detection head to decode")
        for h in heads:
            s = h.section
            if not getattr(h, "traceable", False):
                raise ConvertError(f"{s.file}:{s.line}: layer {h.index} [{s.name}]: decoded-box export "
                                   f"supports {', '.join('[%s]' % t for t in traceable_head_types())} "
                                   f"heads, not "
                                   f"[{h.type}]; export the raw head outputs instead")
            if getattr(h, "tree", None) is not None:
                raise ConvertError(f"{s.file}:{s.line}: layer {h.index} [{s.name}]: decoded-box export "
                                   f"does not do the tree= (hierarchical) class decode; export the raw "
                                   f"head outputs instead")
        classes = {h.classes for h in heads}
        if len(classes) > 1:
            raise ConvertError(f"{model.cfg.file}: heads with different class counts {sorted(classes)} "
                               f"cannot be decoded into one score tensor")
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.model.reset_state()   # the graph is one call from zero recurrent state
        # decoded in float32 (a float16 network too: pixels need the bits, ONNX Range no half)
        outs = [o.float() for o in self.model(x)]
        net_hw = (x.shape[-2], x.shape[-1])   # the size run (a dynamic-size graph: any)
        parts = [self.model.module_list[i].traceable_decode(y, net_hw)
                 for i, y in zip(self.model.heads, outs)]
        boxes = torch.cat([p[0] for p in parts], dim=1)
        objectness = torch.cat([p[1] for p in parts], dim=1)
        scores = torch.cat([p[2] for p in parts], dim=1)
        return boxes, scores, objectness


# ---------------------------------------------------------------- the deployable graph

#: darknet's detector defaults (test_detector): probability threshold and NMS IoU threshold
DEFAULT_THRESH = 0.25
DEFAULT_NMS = 0.45


def greedy_nms(boxes: Tensor, scores: Tensor, iou: float, thresh: float) -> Tensor:
    """ONNX ``NonMaxSuppression`` (corner boxes, no box limit) in torch.

    ``boxes Tensor[N, K, 4]`` (x1, y1, x2, y2), ``scores Tensor[N, C, K]`` ->
    ``int64 Tensor[M, 3]`` rows (batch, class, box): per image and class the
    boxes scoring above ``thresh`` by descending score, each kept unless its
    IoU with a kept box exceeds ``iou``: darknet's ``do_nms_sort`` per class
    (boxes below ``thresh`` have probability 0 there and are skipped).
    """
    import numpy as np

    if torch.jit.is_tracing():   # the exporter only needs the op; the graph computes the rows
        return torch.zeros((0, 3), dtype=torch.int64)
    bx = boxes.detach().float().cpu().numpy()
    sc = scores.detach().float().cpu().numpy()
    rows = []
    for b in range(sc.shape[0]):
        x1, y1, x2, y2 = bx[b].T
        area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
        for k in range(sc.shape[1]):
            cand = np.nonzero(sc[b, k] > np.float32(thresh))[0]
            order = cand[np.argsort(-sc[b, k, cand], kind="stable")]
            alive = np.ones(len(order), bool)
            for j, i in enumerate(order):
                if not alive[j]:
                    continue
                rows.append((b, k, int(i)))
                rest = order[j + 1:]   # the lower-scoring boxes, suppressed by IoU with box i
                w = np.minimum(x2[rest], x2[i]) - np.maximum(x1[rest], x1[i])
                h = np.minimum(y2[rest], y2[i]) - np.maximum(y1[rest], y1[i])
                inter = np.maximum(w, 0) * np.maximum(h, 0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    alive[j + 1:] &= ~(inter / (area[rest] + area[i] - inter) > np.float32(iou))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


class _NonMaxSuppression(torch.autograd.Function):
    """:func:`greedy_nms` in torch; ONNX ``NonMaxSuppression`` in an exported graph."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou: float, thresh: float) -> Tensor:
        return greedy_nms(boxes, scores, iou, thresh)

    @staticmethod
    def symbolic(g, boxes, scores, iou: float, thresh: float):
        # no limit on the boxes kept per class (darknet keeps every survivor): the box count
        # K, as a runtime may allocate for the limit (OpenCV 5 does: 2^31 exhausts memory)
        limit = g.op("Gather", g.op("Shape", boxes),
                     g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)), axis_i=0)
        iou_t = g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32))
        thr_t = g.op("Constant", value_t=torch.tensor([thresh], dtype=torch.float32))
        return g.op("NonMaxSuppression", boxes, scores, limit, iou_t, thr_t, center_point_box_i=0)


class Deployable(nn.Module):
    """The model decoded for deployment: what a user of the graph needs, nothing after.

    ``forward(x: Tensor[N, C, H, W])`` (the network input: the image letterboxed
    or resized to the network size, RGB in [0, 1]) returns

    * without ``nms``: ``boxes Tensor[N, K, 4]`` (x1, y1, x2, y2 in pixels of the
      network input, unclamped), ``scores Tensor[N, K, classes]`` (objectness x
      class probability, darknet's ``prob``), ``objectness Tensor[N, K]``; rows in
      darknet's detection order (:class:`BoxDecoder`);
    * with ``nms``: ``detections Tensor[M, 7]``, rows ``(batch index, class,
      score, x1, y1, x2, y2)``, every (box, class) whose score exceeds
      ``thresh`` and survives per-class greedy IoU NMS at ``nms`` (ONNX
      ``NonMaxSuppression``: darknet's ``do_nms_sort``), grouped by image, then
      class, by descending score.

    Undoing the letterbox (boxes in the original image) is left to the caller,
    who knows the image size (:mod:`darknet_py.engines` does it).
    """

    def __init__(self, model: Darknet, nms: float | None = None, thresh: float = DEFAULT_THRESH):
        super().__init__()
        self.decoder = BoxDecoder(model)
        self.nms, self.thresh = nms, thresh

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        boxes, scores, objectness = self.decoder(x)
        h, w = x.shape[-2], x.shape[-1]
        cx, cy, bw, bh = boxes.unbind(-1)
        # darknet's draw/print: left = (x - w/2) * im.w, top = (y - h/2) * im.h, ...
        corners = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h,
                               (cx + bw / 2) * w, (cy + bh / 2) * h], dim=-1)
        if self.nms is None:
            return corners, scores, objectness
        sel = _NonMaxSuppression.apply(corners, scores.transpose(1, 2), float(self.nms),
                                       float(self.thresh))
        b, c, k = sel[:, 0], sel[:, 1], sel[:, 2]
        picked = corners[b, k]
        score = scores[b, k, c]
        return (torch.cat([b.unsqueeze(1).to(x.dtype), c.unsqueeze(1).to(x.dtype), score.unsqueeze(1),
                           picked], dim=1),)


def deploy_outputs(nms: float | None) -> list[str]:
    return ["boxes", "scores", "objectness"] if nms is None else ["detections"]


# ---------------------------------------------------------------- ONNX

class _Outputs(nn.Module):
    """The model returning a tuple (what the exporter wants)."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        # a graph cannot carry a recurrent state between runs: every run starts from zeros
        # (darknet's first forward after loading)
        self.model.reset_state()
        return tuple(self.model(x))


class TeacherForced(nn.Module):
    """Every layer of ``model`` run on given inputs (the outputs of its sources).

    ``forward(*feeds)`` takes one tensor per index in ``self.feeds`` (-1 = the
    network input) and returns every layer's output: exported to ONNX, each
    layer is checked on its own, free of the rounding a deep network amplifies.
    """

    def __init__(self, model: Darknet, layers: Sequence[int] | None = None):
        super().__init__()
        self.model = model
        self.layers = list(range(len(model.module_list))) if layers is None else list(layers)
        self.feeds = sorted({s for i in self.layers for s in model.module_list[i].sources})

    def forward(self, *feeds: Tensor) -> tuple[Tensor, ...]:
        src = dict(zip(self.feeds, feeds))
        self.model.reset_state()
        return tuple(self.model.module_list[i](*(src[s] for s in self.model.module_list[i].sources))
                     for i in self.layers)


def batch_unit(model: Darknet) -> int:
    """The batch must be a multiple of this: ``[net] time_steps`` when a recurrent layer
    reads the batch as that many time steps, else 1."""
    return max((getattr(m, "steps", 1) for m in model.module_list), default=1)


def _onnx_bytes(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str],
                output_names: list[str], opset: int, dynamic_size: bool = False) -> bytes:
    buf = io.BytesIO()
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in input_names + output_names}
    if dynamic_size:
        for name in input_names:
            axes[name].update({2: "height", 3: "width"})
        with torch.no_grad():
            ranks = [o.dim() for o in module.eval()(*args)]
        for name, rank in zip(output_names, ranks):   # a head's map, the box count follow the size
            axes[name] = {d: ("batch" if d == 0 else f"{name}_{d}") for d in range(rank)}
    if output_names == ["detections"]:
        axes["detections"] = {0: "detections"}
    # the exporter restores the wrapper's own mode afterwards, recursively: keep it eval
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, opset_version=opset,
                          do_constant_folding=True)
    return buf.getvalue()


def _ort_run(data: bytes, feeds: dict[str, Tensor]) -> list:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})


def _rel(a, b: Tensor) -> float:
    ref = b.detach().cpu().double()
    got = torch.as_tensor(a).double().reshape(ref.shape)
    if ref.numel() == 0:
        return 0.0
    same = (got == ref) | (got.isnan() & ref.isnan())   # equal infinities / NaNs agree
    diff = torch.where(same, torch.zeros_like(ref), (got - ref).abs())
    finite = ref[ref.isfinite()]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return float(diff.max()) / scale   # NaN (never <= atol) when only one side is NaN


_layer_name = layer_label


def _all_outputs(model: Darknet, x: Tensor) -> dict[int, Tensor]:
    model.reset_state()   # as the exported graph starts
    with torch.no_grad():
        return model.forward_all(x, keep=range(len(model.module_list)))


def _probe_layers(model: Darknet, x: Tensor, opset: int, atol: float,
                  x_trace: Tensor | None = None) -> tuple[float, list[float]]:
    """Export all layers teacher-forced, run them in onnxruntime, compare each with torch.

    The graph is traced on the layer inputs of ``x_trace`` (a fresh random batch
    by default) and checked on those of ``x``, so a value the trace froze in
    shows up.  Returns (worst relative difference, per-layer differences);
    raises a :class:`ConvertError` naming the first layer that cannot be
    exported, run or matched (one layer at a time when the whole probe fails).
    """
    if x_trace is None:
        x_trace = torch.rand(x.shape, generator=torch.Generator().manual_seed(12345)).to(x)
    outs, touts = _all_outputs(model, x), _all_outputs(model, x_trace)
    outs[-1], touts[-1] = x, x_trace
    probe = TeacherForced(model)
    names = [f"in_{s}" for s in probe.feeds]
    feeds = dict(zip(names, (outs[s] for s in probe.feeds)))
    try:
        data = _onnx_bytes(probe, tuple(touts[s] for s in probe.feeds), names,
                           [f"out_{i}" for i in probe.layers], opset)
        got = _ort_run(data, feeds)
    except Exception:
        got = None
    if got is not None:
        diffs = [_rel(g, outs[i]) for g, i in zip(got, probe.layers)]
        for i, d in zip(probe.layers, diffs):
            if not d <= atol:
                raise ConvertError(f"{_layer_name(model, i)}: the ONNX graph of this layer differs "
                                   f"from torch by {d:.3g} (relative to its max |value|); it cannot "
                                   f"be exported faithfully")
        return max(diffs, default=0.0), diffs
    diffs = []
    for i in range(len(model.module_list)):   # find the first layer that fails on its own
        one = TeacherForced(model, [i])
        n = [f"in_{s}" for s in one.feeds]
        try:
            data = _onnx_bytes(one, tuple(touts[s] for s in one.feeds), n, ["out"], opset)
            res = _ort_run(data, dict(zip(n, (outs[s] for s in one.feeds))))
        except Exception as exc:
            raise ConvertError(f"{_layer_name(model, i)}: cannot be expressed in ONNX (opset {opset}): "
                               f"{_first_line(exc)}") from None
        d = _rel(res[0], outs[i])
        if not d <= atol:
            raise ConvertError(f"{_layer_name(model, i)}: the ONNX graph of this layer differs from "
                               f"torch by {d:.3g}; it cannot be exported faithfully")
        diffs.append(d)
    raise ConvertError(f"{model.cfg.file}: every layer exports on its own but the whole network "
                       f"does not")


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "allocate" in text or "bad_alloc" in text


@dataclass
class OnnxReport:
    """What :func:`export_onnx` wrote and how it was checked."""

    file: str
    outputs: list[str]
    bytes: int
    checked: bool
    end_to_end_diff: float | None = None     # whole graph vs torch, relative to max |value|
    worst_layer_diff: float | None = None    # teacher-forced, when the whole-graph check needed it
    onnx_vs_exact: float | None = None       # onnxruntime vs torch in float64, when checked per layer
    torch_vs_exact: float | None = None      # torch float32 vs torch float64, likewise
    note: str = ""


def export_onnx(model: Darknet, path: str | os.PathLike, *, decode: bool = False,
                nms: float | None = None, thresh: float = DEFAULT_THRESH, fp16: bool = False,
                dynamic_size: bool = False, opset: int = 17, check: bool = True, atol: float = 1e-4,
                seed: int = 0) -> OnnxReport:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis, atomically.

    Input ``input``: ``float32 [N, C, H, W]``, the network input.  Outputs: one
    per head, named ``<type>_<layer>`` (e.g. ``yolo_16``), as the model returns
    them in eval mode; with ``decode=True`` instead ``boxes``, ``scores``,
    ``objectness`` in input pixels, or with ``nms`` (an IoU threshold, darknet's
    is :data:`DEFAULT_NMS`) ``detections`` (:class:`Deployable` documents the
    layout).  ``fp16``: weights and arithmetic in float16, input and outputs
    float32.  ``dynamic_size``: height and width are dynamic too (refused when a
    layer's weights depend on the size, e.g. [connected]).  The graph carries the
    cfg and how it was exported in its metadata (``darknet_py.*`` keys) for
    :mod:`darknet_py.engines`.

    With ``check`` (and onnxruntime installed) the graph is run on a random batch
    of 2 and compared with torch; beyond ``atol`` every layer is checked on its
    own (teacher-forced) so a layer ONNX cannot express is named, while a deep
    network's amplified float rounding is told apart and accepted.  Any failure
    is a :class:`ConvertError` naming the layer and its cfg line.

    Recurrent layers: the batch is ``[net] time_steps`` steps of ``batch /
    time_steps`` sequences (:func:`batch_unit`), the steps unrolled in the graph,
    which starts every run from zero state (no state is carried between runs).
    """
    require("onnx", "ONNX export")
    path = os.fspath(path)
    if nms is not None:
        decode = True
    was_training = model.training
    model.eval()
    try:
        module: nn.Module = Deployable(model, nms, thresh) if decode else _Outputs(model)
        c, h, w = model.input_shape
        gen = torch.Generator().manual_seed(seed)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        unit = batch_unit(model)
        x1 = torch.rand(unit, c, h, w, generator=gen).to(device)
        if decode:
            out_names = deploy_outputs(nms)
        else:
            idx = model.heads or [len(model.module_list) - 1]
            out_names = [f"{model.module_list[i].type}_{i}" for i in idx]
        if dynamic_size:
            _refuse_fixed_size(model)
        exported = _Float16(module) if fp16 else module
        try:
            data = _onnx_bytes(exported, (x1,), ["input"], out_names, opset, dynamic_size)
        except DarknetError:
            raise
        except Exception as exc:
            if _out_of_memory(exc):   # not the fault of a layer: say so rather than probe
                raise ConvertError(f"{model.cfg.file}: ran out of memory exporting the graph "
                                   f"(batch {unit}, {len(model.module_list)} layers"
                                   f"{f', time_steps={unit} unrolled' if unit > 1 else ''}): "
                                   f"{_first_line(exc)}") from None
            _probe_layers(model, x1, opset, atol)   # names the layer when one is at fault
            raise ConvertError(f"{model.cfg.file}: ONNX export failed: {_first_line(exc)}") from None
        report = OnnxReport(path, out_names, len(data), checked=False)
        if check and not available("onnxruntime"):   # every check below runs onnxruntime
            report.note = f"not checked: onnxruntime is not installed ({INSTALL['onnxruntime']})"
        elif check:
            if fp16 and nms is not None:   # the float16 boxes and scores; NMS as in float32
                plain = Deployable(model, None, thresh)
                plain_data = _onnx_bytes(_Float16(plain), (x1,), ["input"], deploy_outputs(None), opset)
                _check_fp16(model, plain, plain_data, report, gen, device)
            elif fp16:
                _check_fp16(model, module, data, report, gen, device)
            elif nms is not None:
                _check_nms(model, module, data, report, opset, atol, gen, device)
            else:
                _check_onnx(model, module, data, report, opset, atol, gen, device)
            if dynamic_size:
                _check_other_size(model, module, data, report, atol, fp16)
        if nms is not None:
            from .postprocess import nms_kind_of
            kind = nms_kind_of(model)[0]
            if kind != "default":   # the graph's NonMaxSuppression is IoU greedy NMS only
                report.note += (f"{'; ' if report.note else ''}the cfg asks for nms_kind={kind}: the "
                                f"graph does darknet's default IoU NMS instead")
        data = _with_metadata(data, model, decode=decode, nms=nms, thresh=thresh, fp16=fp16,
                              dynamic_size=dynamic_size)
        report.bytes = len(data)
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise _write_error(path, exc) from None
        return report
    finally:
        model.reset_state()
        model.train(was_training)


class _Float16(nn.Module):
    """``module`` in float16 (a copy), float32 in and out."""

    def __init__(self, module: nn.Module):
        super().__init__()
        import copy

        self.inner = copy.deepcopy(module).half()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(o.float() if o.is_floating_point() else o for o in self.inner(x.half()))


#: layer types whose weights or output size are tied to the input size (no dynamic size)
FIXED_SIZE = {"connected", "local", "locally_connected", "detection", "crop", "cost"}


def _refuse_fixed_size(model: Darknet) -> None:
    for m in model.module_list:
        if m.type in FIXED_SIZE:
            s = m.section
            raise ConvertError(f"{s.file}:{s.line}: layer {m.index} [{s.name}]: its weights or "
                               f"output are tied to the {model.width}x{model.height} input: this cfg "
                               f"cannot be exported with a dynamic input size")


def _check_other_size(model: Darknet, module: nn.Module, data: bytes, report: OnnxReport,
                      atol: float, fp16: bool) -> None:
    """The dynamic-size graph at another size (32 more each way) equals torch there."""
    c, h, w = model.input_shape
    x = torch.rand(batch_unit(model), c, h + 32, w + 32, generator=torch.Generator().manual_seed(7))
    x = x.to(next((p.device for p in model.parameters()), torch.device("cpu")))
    try:
        with torch.no_grad():
            ref = module(x)
    except (DarknetError, RuntimeError) as exc:
        raise ConvertError(f"{model.cfg.file}: the network does not run at {w + 32}x{h + 32}: "
                           f"{_first_line(exc)}; export it without a dynamic input size") from None
    try:
        got = _ort_run(data, {"input": x})
        diff = max(_rel(g, r) for g, r in zip(got, ref))
    except Exception as exc:   # a shape the trace froze in
        raise ConvertError(f"{model.cfg.file}: the graph does not run at {w + 32}x{h + 32} "
                           f"({_first_line(exc)}): a layer froze the input size in") from None
    limit = FP16_RULE if fp16 else atol
    if not diff <= max(limit, report.end_to_end_diff or 0.0):
        raise ConvertError(f"{model.cfg.file}: at {w + 32}x{h + 32} the graph differs from torch by "
                           f"{diff:.3g}: a layer froze the input size in")
    report.note += f"{'; ' if report.note else ''}dynamic size checked at {w + 32}x{h + 32} ({diff:.2g})"


#: float16 keeps 11 significant bits: a value rounds by <= 2^-11 relative.  The fp16 graph
#: is a float16 evaluation of the network as torch's own float16 forward is, with rounding
#: noise of the same size but not the same values (another kernel order): it must be within
#: twice torch's distance from float32 (the two noises can add up), or this (4 roundings'
#: worth, for a shallow network where both are tiny).
FP16_RULE = 4 * 2.0 ** -11


def _check_fp16(model: Darknet, module: nn.Module, data: bytes, report: OnnxReport,
                gen: torch.Generator, device) -> None:
    c, h, w = model.input_shape
    x2 = torch.rand(2 * batch_unit(model), c, h, w, generator=gen).to(device)
    with torch.no_grad():
        ref = module(x2)
        half = _Float16(module)(x2)
    got = _ort_run(data, {"input": x2})
    diff = max(_rel(g, r) for g, r in zip(got, ref))
    torch_gap = max(_rel(a, r) for a, r in zip(half, ref))
    report.checked = True
    report.end_to_end_diff = diff
    report.note = f"float16: onnxruntime {diff:.2g}, torch float16 {torch_gap:.2g} from torch float32"
    if not diff <= max(FP16_RULE, 2 * torch_gap):
        raise ConvertError(f"{model.cfg.file}: the float16 graph differs from float32 torch by "
                           f"{diff:.3g}, more than twice torch's own float16 forward ({torch_gap:.3g})")


def _check_nms(model: Darknet, module: "Deployable", data: bytes, report: OnnxReport, opset: int,
               atol: float, gen: torch.Generator, device) -> None:
    """The boxes and scores as :func:`_check_onnx` checks them (graph without NMS), then
    the NMS graph's rows == :func:`greedy_nms` on onnxruntime's own boxes and scores."""
    plain = Deployable(model, None, module.thresh)
    c, h, w = model.input_shape
    x1 = torch.rand(batch_unit(model), c, h, w, generator=gen).to(device)
    plain_data = _onnx_bytes(plain, (x1,), ["input"], deploy_outputs(None), opset)
    state = gen.get_state()
    _check_onnx(model, plain, plain_data, report, opset, atol, gen, device)
    gen.set_state(state)
    x2 = torch.rand(2 * batch_unit(model), c, h, w, generator=gen).to(device)
    boxes, scores, _ = (torch.from_numpy(a) for a in _ort_run(plain_data, {"input": x2}))
    sel = greedy_nms(boxes, scores.transpose(1, 2), module.nms, module.thresh)
    b, k, cls = sel[:, 0], sel[:, 2], sel[:, 1]
    want = torch.cat([b[:, None].float(), cls[:, None].float(), scores[b, k, cls][:, None], boxes[b, k]], 1)
    got = _ort_run(data, {"input": x2})[0]
    if got.shape != tuple(want.shape) or not _rel(got, want) <= atol:
        raise ConvertError(f"{model.cfg.file}: onnxruntime's NonMaxSuppression kept {got.shape[0]} "
                           f"(box, class) pairs where darknet's greedy NMS keeps {want.shape[0]}")
    report.note += f"{'; ' if report.note else ''}NMS checked ({want.shape[0]} detections)"


def _with_metadata(data: bytes, model: Darknet, **how) -> bytes:
    """The graph with the cfg and the export options in ``metadata_props`` (``darknet_py.*``),
    when the onnx package is there to write them."""
    try:
        import onnx
    except ImportError:
        return data
    from .cfg import write_cfg

    proto = onnx.load_from_string(data)
    props = {"cfg": write_cfg(model.cfg), "dialect": model.dialect, "width": model.width,
             "height": model.height, "channels": model.input_shape[0],
             "batch_unit": batch_unit(model), **how}
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"darknet_py.{k}", json.dumps(v) if not isinstance(v, str) else v
    return proto.SerializeToString()


def _check_onnx(model: Darknet, module: nn.Module, data: bytes, report: OnnxReport, opset: int,
                atol: float, gen: torch.Generator, device) -> None:
    c, h, w = model.input_shape
    x2 = torch.rand(2 * batch_unit(model), c, h, w, generator=gen).to(device)
    with torch.no_grad():
        ref = module(x2)
    try:
        got = _ort_run(data, {"input": x2})
        diffs = [_rel(g, r) for g, r in zip(got, ref)]
        diff = float("inf") if any(d != d for d in diffs) else max(diffs)
    except Exception:
        diff = float("inf")
    report.checked = True
    report.end_to_end_diff = diff
    if diff <= atol:
        return
    worst, _ = _probe_layers(model, x2, opset, atol)   # raises naming the layer at fault
    if diff == float("inf"):
        raise ConvertError(f"{model.cfg.file}: onnxruntime cannot run the exported graph, though "
                           f"each layer exports on its own")
    report.worst_layer_diff = worst
    report.onnx_vs_exact, report.torch_vs_exact = exact_arithmetic_gaps(module, got, x2, ref)
    report.note = (f"whole graph differs from torch by {diff:.3g} (relative), every layer on its own "
                   f"by <= {worst:.3g}: float rounding amplified by depth (against float64 torch: "
                   f"onnxruntime {report.onnx_vs_exact:.3g}, torch float32 {report.torch_vs_exact:.3g})")


def exact_arithmetic_gaps(module: nn.Module, got: Sequence, x: Tensor,
                          ref32: Sequence[Tensor] | None = None) -> tuple[float, float]:
    """How far onnxruntime's outputs ``got`` and torch's float32 outputs are
    from the same network run in float64 (relative to max |value|).

    A deep network amplifies rounding until two correct float32 programs
    disagree; the float64 run tells which one is closer to the exact result.
    """
    import copy

    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        if ref32 is None:     # torch's float32 outputs, unless the caller has them
            ref32 = module(x)
        ref64 = exact(x.double())
    del exact
    onnx_gap = max((_rel(g, r) for g, r in zip(got, ref64)), default=0.0)
    torch_gap = max((_rel(a, r) for a, r in zip(ref32, ref64)), default=0.0)
    return onnx_gap, torch_gap


# ---------------------------------------------------------------- the convert writer

def _save_onnx(model: Darknet, path, *, decode: bool = False, opset: int = 17, check: bool = True,
               nms: float | None = None, thresh: float = DEFAULT_THRESH, fp16: bool = False,
               dynamic_size: bool = False, **_) -> OnnxReport:
    return export_onnx(model, path, decode=decode, nms=nms, thresh=thresh, fp16=fp16,
                       dynamic_size=dynamic_size, opset=opset, check=check)
