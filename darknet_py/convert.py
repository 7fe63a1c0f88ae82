"""Move a darknet model between formats without losing a bit.

* ``.weights``: darknet's own file (needs the cfg);
* ``.pt``: a torch checkpoint, a plain dict read with ``weights_only=True``::

      {"format": "darknet_py.checkpoint", "format_version": 1, "cfg": <cfg text>,
       "dialect": "pjreddie" | "alexeyab", "width": int, "height": int,
       "header": {"major", "minor", "revision", "seen", "seen_width"},
       "cutoff": None | int,          # the source .weights held only layers [0, cutoff)
       "state_dict": {name: Tensor}}

  A bare state_dict (a dict of tensors) is read too, with a cfg given;
* ``.safetensors``: the tensors, with the same fields as strings in the metadata
  (``header`` as JSON);
* ``.onnx``: export only (:func:`export_onnx`): dynamic batch, the head outputs
  as the model returns them in eval mode, or decoded boxes (:class:`BoxDecoder`).

The header (``seen`` included) and the cutoff travel with the tensors, so
``.weights -> .pt/.safetensors -> .weights`` gives back the same bytes.
:func:`partial` is darknet's ``partial`` command.  Every file is written
atomically.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .cfg import parse_cfg, write_cfg
from .errors import ConvertError, DarknetError, WeightsError
from .io import atomic_open, atomic_write
from .model import Darknet
from .weights import DEFAULT_VERSION, Header, LoadReport, PartialWeightsWarning

FORMAT = "darknet_py.checkpoint"
FORMAT_VERSION = 1


@dataclass
class LoadInfo:
    """Where a model came from: format, header, and what was (not) in the file."""

    file: str
    format: str
    header: Header
    cutoff: int | None = None          # layers [0, cutoff) were in the source (partial files)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    report: LoadReport | None = None   # for .weights sources


def _ext(path: str | os.PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def _build(cfg, dialect: str, width: int | None = None, height: int | None = None) -> Darknet:
    return Darknet(cfg, width=width, height=height, dialect=dialect)


# ---------------------------------------------------------------- tensors <-> model

def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_state(model: Darknet, tensors: dict[str, Tensor], file: str,
               strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy ``tensors`` into ``model`` like a strict ``load_state_dict``, with a
    :class:`ConvertError` that lists missing, unexpected and wrongly shaped names.

    Returns (missing, unexpected) (both empty when ``strict``).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} (file {tuple(tensors[k].shape)}, cfg {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_short(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with another shape: {_short(wrong, 4)}")
        raise ConvertError(f"{file}: the tensors do not match the cfg: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in expected.items():
            if k in tensors:
                v.copy_(tensors[k])
    return missing, unexpected


def _meta(model: Darknet, header: Header, cutoff: int | None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "cfg": write_cfg(model.cfg),
            "dialect": model.dialect, "width": model.width, "height": model.height,
            "header": header.as_dict(), "cutoff": cutoff}


def _header_for(model: Darknet, version: tuple[int, int, int] | None) -> Header:
    h = model.header
    if version is None:
        return Header(h.major, h.minor, h.revision, model.seen, h.seen_width)
    return Header.new(version, model.seen, model.dialect)


def _model_from_meta(meta: dict, file: str, cfg, dialect: str) -> tuple[Darknet, Header]:
    if meta.get("format") != FORMAT:
        raise ConvertError(f"{file}: not a darknet_py checkpoint (format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ConvertError(f"{file}: checkpoint format_version {meta['format_version']} is newer than "
                           f"this darknet_py reads ({FORMAT_VERSION})")
    header = Header.from_dict(meta.get("header") or {}, file)
    use_dialect = dialect if dialect != "auto" else meta.get("dialect", "auto")
    if cfg is None:
        text = meta.get("cfg")
        if not text:
            raise ConvertError(f"{file}: the checkpoint holds no cfg; pass one (--cfg)")
        cfg = parse_cfg(text, dialect=use_dialect, name=f"{file} (embedded cfg)")
        model = _build(cfg, use_dialect, meta.get("width"), meta.get("height"))
    else:
        model = _build(cfg, use_dialect)
    model.header = header
    model.seen = header.seen
    return model, header


def _write_error(path, exc: OSError) -> ConvertError:
    return ConvertError(f"{os.fspath(path)}: cannot write: {exc.strerror or exc}")


# ---------------------------------------------------------------- .pt

def save_pt(model: Darknet, path: str | os.PathLike, *, version: tuple[int, int, int] | None = None,
            cutoff: int | None = None) -> Header:
    """A torch checkpoint with state_dict, cfg text and darknet header (atomic)."""
    header = _header_for(model, version)
    header.pack()  # seen must fit the chosen header
    ckpt = _meta(model, header, cutoff)
    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        with atomic_open(path) as fh:
            torch.save(ckpt, fh)
    except OSError as exc:
        raise _write_error(path, exc) from None
    return header


def load_pt(path: str | os.PathLike, cfg=None, dialect: str = "auto",
            strict: bool = True) -> tuple[Darknet, LoadInfo]:
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: cannot read: no such file") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: a torch checkpoint holding {type(obj).__name__}, not a dict")
    if "state_dict" in obj and "format" in obj:
        model, header = _model_from_meta(obj, path, cfg, dialect)
        tensors, cutoff = obj["state_dict"], obj.get("cutoff")
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        if cfg is None:
            raise ConvertError(f"{path}: a bare state_dict without a cfg; pass the cfg (--cfg)")
        model = _build(cfg, dialect)
        header, tensors, cutoff = model.header, obj, None
    else:
        raise ConvertError(f"{path}: not a darknet_py checkpoint (no 'format'/'state_dict' keys; "
                           f"keys: {_short(sorted(map(str, obj)))})")
    if not isinstance(tensors, dict):
        raise ConvertError(f"{path}: 'state_dict' is a {type(tensors).__name__}, not a dict")
    missing, unexpected = load_state(model, tensors, path, strict)
    return model, LoadInfo(path, ".pt", header, cutoff, missing, unexpected)


# ---------------------------------------------------------------- .safetensors

def save_safetensors(model: Darknet, path: str | os.PathLike, *,
                     version: tuple[int, int, int] | None = None, cutoff: int | None = None) -> Header:
    """Tensors plus cfg text and header in the metadata (atomic)."""
    from safetensors.torch import save

    header = _header_for(model, version)
    header.pack()
    meta = _meta(model, header, cutoff)
    metadata = {k: (json.dumps(v) if k == "header" else "" if v is None else str(v))
                for k, v in meta.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        atomic_write(path, save(tensors, metadata=metadata))
    except OSError as exc:
        raise _write_error(path, exc) from None
    return header


def load_safetensors(path: str | os.PathLike, cfg=None, dialect: str = "auto",
                     strict: bool = True) -> tuple[Darknet, LoadInfo]:
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConvertError(f"{path}: cannot read: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"{path}: not a readable safetensors file ({first})") from None
    if metadata.get("format") == FORMAT:
        meta = dict(metadata)
        try:
            meta["header"] = json.loads(metadata.get("header", "{}"))
            meta["width"] = int(meta["width"]) if meta.get("width") else None
            meta["height"] = int(meta["height"]) if meta.get("height") else None
            cutoff = int(meta["cutoff"]) if meta.get("cutoff") else None
        except ValueError as exc:
            raise ConvertError(f"{path}: damaged darknet_py metadata ({exc})") from None
        model, header = _model_from_meta(meta, path, cfg, dialect)
    else:
        if cfg is None:
            raise ConvertError(f"{path}: no darknet_py metadata (cfg, header); pass the cfg (--cfg)")
        model = _build(cfg, dialect)
        header, cutoff = model.header, None
    missing, unexpected = load_state(model, tensors, path, strict)
    return model, LoadInfo(path, ".safetensors", header, cutoff, missing, unexpected)


# ---------------------------------------------------------------- .weights

def load_darknet(path: str | os.PathLike, cfg=None, dialect: str = "auto",
                 allow_trailing: bool = False, **_) -> tuple[Darknet, LoadInfo]:
    path = os.fspath(path)
    if cfg is None:
        raise ConvertError(f"{path}: a darknet .weights file needs its cfg (--cfg)")
    model = _build(cfg, dialect)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialWeightsWarning)  # the LoadInfo says so
        report = model.load_weights(path, allow_trailing=allow_trailing)
    cutoff = report.layers_loaded if report.partial else None
    return model, LoadInfo(path, ".weights", report.header, cutoff, report=report)


def _save_darknet(model: Darknet, path, *, version=None, cutoff=None, **_) -> Header:
    return model.save_weights(path, cutoff=cutoff, version=version)


def _read_only_onnx(path, *args, **kwargs):
    raise ConvertError(f"{os.fspath(path)}: .onnx is an export format; it cannot be read back")


READERS: dict[str, Callable[..., tuple[Darknet, LoadInfo]]] = {
    ".weights": load_darknet, ".pt": load_pt, ".pth": load_pt, ".safetensors": load_safetensors,
    ".onnx": _read_only_onnx,
}


def load_model(path: str | os.PathLike, cfg=None, dialect: str = "auto", strict: bool = True,
               allow_trailing: bool = False) -> tuple[Darknet, LoadInfo]:
    """A :class:`Darknet` with its parameters from any supported file (chosen by extension)."""
    reader = READERS.get(_ext(path))
    if reader is None:
        raise ConvertError(f"{os.fspath(path)}: unknown extension {_ext(path)!r}; expected one of "
                           f"{', '.join(sorted(READERS))}")
    if reader is load_darknet:
        return reader(path, cfg, dialect, allow_trailing=allow_trailing)
    return reader(path, cfg, dialect, strict)


from .onnx_export import (  # noqa: F401  (re-exported: the ONNX code lives there)
    _yolo_like, _decode_yolo, _decode_region, DECODERS, BoxDecoder, _Outputs,
    TeacherForced, _onnx_bytes, _ort_run, _rel, _layer_name, _all_outputs,
    _probe_layers, _first_line, OnnxReport, export_onnx, _check_onnx, exact_arithmetic_gaps, _save_onnx)

# ---------------------------------------------------------------- writers, convert, partial

def _save_pt(model: Darknet, path, *, version=None, cutoff=None, **_) -> Header:
    return save_pt(model, path, version=version, cutoff=cutoff)


def _save_st(model: Darknet, path, *, version=None, cutoff=None, **_) -> Header:
    return save_safetensors(model, path, version=version, cutoff=cutoff)


#: output extension -> writer(model, path, *, version, cutoff, decode, opset, check)
WRITERS: dict[str, Callable[..., object]] = {
    ".weights": _save_darknet, ".pt": _save_pt, ".pth": _save_pt, ".safetensors": _save_st,
    ".onnx": _save_onnx,
}


@dataclass
class ConvertReport:
    source: LoadInfo
    target: str
    result: object      # the Header written, or an OnnxReport

    def __str__(self) -> str:
        s = f"{self.source.file} -> {self.target}"
        if isinstance(self.result, Header):
            h = self.result
            s += f" (header {h.major}.{h.minor}.{h.revision}, seen={h.seen})"
        elif isinstance(self.result, OnnxReport):
            r = self.result
            s += f" (outputs {', '.join(r.outputs)}"
            if r.checked:
                s += f"; onnxruntime matches torch to {r.end_to_end_diff:.2g}"
            s += f"{'; ' + r.note if r.note else ''})"
        if self.source.cutoff is not None:
            s += f"; the source held only layers 0..{self.source.cutoff - 1}"
        return s


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, cfg=None, dialect: str = "auto",
            version: tuple[int, int, int] | None = None, decode: bool = False, strict: bool = True,
            allow_trailing: bool = False, opset: int = 17, check: bool = True) -> ConvertReport:
    """Convert between .weights, .pt, .safetensors (and export .onnx), by extension.

    The header (``seen`` included) is kept unless ``version`` asks for another;
    a partial source stays partial.
    """
    writer = WRITERS.get(_ext(dst))
    if writer is None:
        raise ConvertError(f"{os.fspath(dst)}: unknown output extension {_ext(dst)!r}; expected one "
                           f"of {', '.join(sorted(WRITERS))}")
    model, info = load_model(src, cfg=cfg, dialect=dialect, strict=strict,
                             allow_trailing=allow_trailing)
    result = writer(model, dst, version=version, cutoff=info.cutoff, decode=decode, opset=opset,
                    check=check)
    return ConvertReport(info, os.fspath(dst), result)


def partial(cfg, weights: str | os.PathLike, out: str | os.PathLike, n: int, *,
            dialect: str = "auto", version: tuple[int, int, int] | None = None) -> Header:
    """darknet's ``partial``: layers [0, n) of ``weights`` into ``out``, ``seen`` reset to 0.

    The header is the one the dialect's darknet writes (pjreddie 0.2.0,
    AlexeyAB 0.2.5) unless ``version`` asks for another.
    """
    model = Darknet(cfg, dialect=dialect)
    layers = len(model.module_list)
    if not 0 < n <= layers:
        raise ConvertError(f"{model.cfg.file}: N={n} must lie in 1..{layers} (the cfg has {layers} "
                           f"layers)")
    try:
        model.load_weights(weights, cutoff=n, allow_partial=False)
    except WeightsError as exc:
        raise ConvertError(f"cannot take the first {n} layers: {exc}") from None
    return model.save_weights(out, cutoff=n, version=version or DEFAULT_VERSION[model.dialect], seen=0)
