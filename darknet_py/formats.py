"""Container formats of a darknet model: one reader and one writer per format.

* ``.weights``: darknet's own file (needs the cfg), read by :mod:`darknet_py.weights`;
* ``.pt``: a torch checkpoint, a plain dict read with ``weights_only=True``::

      {"format": "darknet_py.checkpoint", "format_version": 1, "cfg": <cfg text>,
       "dialect": "pjreddie" | "alexeyab", "width": int, "height": int,
       "header": {"major", "minor", "revision", "seen", "seen_width"},
       "cutoff": None | int,          # the source .weights held only layers [0, cutoff)
       "state_dict": {name: Tensor},
       "checksums": {"meta": sha256, "tensors": {name: sha256}}}

  A bare state_dict (a dict of tensors) is read too, with a cfg given;
* ``.safetensors``: the tensors, with the same fields as strings in the metadata
  (``header`` and ``checksums`` as JSON).

``checksums`` (written since darknet_py 0.1; files without them still load)
are SHA-256 digests of the metadata fields and of each tensor (name, dtype,
shape, bytes): neither container checks its payload, so without them a damaged
file loads silently.  Reading ``.pt`` and ``.safetensors`` takes one path:
the container's reader only unpacks the file into :class:`Contents`;
:func:`_load_contents` checks the metadata, builds the model, matches names
and shapes, verifies checksums, refuses non-finite values, and copies.  Every
file is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .cfg import parse_cfg, write_cfg
from .errors import ConvertError
from .files import atomic_open, atomic_write
from .model import Darknet
from .optional import require
from .weights import Header, LoadReport, PartialWeightsWarning, layer_label, nonfinite_text

FORMAT = "darknet_py.checkpoint"
FORMAT_VERSION = 1
#: the metadata fields every checkpoint carries (the ``meta`` checksum covers exactly these)
META_KEYS = ("format", "format_version", "cfg", "dialect", "width", "height", "header", "cutoff")

#: the record :func:`load_model` returned before one report served every format
LoadInfo = LoadReport


def _ext(path: str | os.PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def _build(cfg, dialect: str, width: int | None = None, height: int | None = None) -> Darknet:
    return Darknet(cfg, width=width, height=height, dialect=dialect)


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _write_error(path, exc: OSError) -> ConvertError:
    return ConvertError(f"{os.fspath(path)}: cannot write: {exc.strerror or exc}")


# ---------------------------------------------------------------- checksums

def tensor_digest(name: str, t: Tensor) -> str:
    """SHA-256 of a tensor's name, dtype, shape and bytes (in the machine's byte order: a file
    written on a little-endian machine verifies on little-endian machines)."""
    h = hashlib.sha256(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def meta_digest(meta: dict) -> str:
    """SHA-256 of the metadata fields (:data:`META_KEYS`), as typed values."""
    text = json.dumps({k: meta.get(k) for k in META_KEYS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _checksums_record(obj, file: str) -> dict | None:
    """The ``checksums`` record validated: {"meta": str, "tensors": {str: str}}, or None."""
    if obj is None:
        return None
    ok = (isinstance(obj, dict) and isinstance(obj.get("meta"), str)
          and isinstance(obj.get("tensors"), dict)
          and all(isinstance(k, str) and isinstance(v, str) for k, v in obj["tensors"].items()))
    if not ok:
        raise ConvertError(f"{file}: the checksums record is damaged (expected a meta digest and "
                           f"one digest per tensor)")
    return obj


def _tensor_label(model: Darknet, name: str) -> str:
    """``layer 3 [convolutional] (x.cfg:25), tensor 'biases'`` for ``module_list.3.biases``."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "module_list" and parts[1].isdigit() \
            and int(parts[1]) < len(model.module_list):
        return f"{layer_label(model, int(parts[1]))}, tensor {parts[2]!r}"
    return f"tensor {name!r}"


# ---------------------------------------------------------------- tensors <-> model

def load_state(model: Darknet, tensors: dict[str, Tensor], file: str, strict: bool = True, *,
               checksums: dict[str, str] | None = None,
               allow_nonfinite: bool = False) -> tuple[list[str], list[str]]:
    """Copy ``tensors`` into ``model`` like a strict ``load_state_dict``, with a
    :class:`ConvertError` that lists missing, unexpected and wrongly shaped names.

    With ``checksums`` (name -> :func:`tensor_digest`) every tensor copied must
    match its digest; a NaN or infinite value is an error naming the layer and
    tensor unless ``allow_nonfinite``.  Nothing is copied unless all is well.
    Returns (missing, unexpected) (both empty when ``strict``).
    """
    bad = [f"{k!r} ({type(v).__name__})" for k, v in tensors.items()
           if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ConvertError(f"{file}: entries that are not named tensors: {_short(bad, 4)}")
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
    loaded = [k for k in expected if k in tensors]
    if checksums is not None:
        for k in loaded:
            if checksums.get(k) != tensor_digest(k, tensors[k]):
                why = "has no checksum" if k not in checksums else "does not match its checksum"
                raise ConvertError(f"{file}: {_tensor_label(model, k)} ({k}) {why}: the file is "
                                   f"damaged")
    if not allow_nonfinite:
        for k in loaded:
            text = nonfinite_text(f"{_tensor_label(model, k)} ({k})", tensors[k])
            if text is not None:
                raise ConvertError(f"{file}: {text}")
    with torch.no_grad():
        for k in loaded:
            expected[k].copy_(tensors[k])
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


# Field -> accepted types, for checkpoints without checksums (hand-made or older files).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "cfg": (str, type(None)), "dialect": (str, type(None)), "width": (int, type(None)),
    "height": (int, type(None)), "cutoff": (int, type(None)), "header": (dict, type(None)),
}


def _model_from_meta(meta: dict, checksum: str | None, file: str, cfg,
                     dialect: str) -> tuple[Darknet, Header]:
    if meta.get("format") != FORMAT:
        raise ConvertError(f"{file}: not a darknet_py checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConvertError(f"{file}: checkpoint format_version {version!r} is not a version "
                           f"darknet_py writes (1..{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise ConvertError(f"{file}: checkpoint format_version {version} is newer than "
                           f"this darknet_py reads ({FORMAT_VERSION})")
    if checksum is not None and checksum != meta_digest(meta):
        raise ConvertError(f"{file}: the metadata (cfg, header, sizes) does not match its "
                           f"checksum: the file is damaged")
    for key, types in _META_TYPES.items():
        if not isinstance(meta.get(key), types) or isinstance(meta.get(key), bool):
            raise ConvertError(f"{file}: checkpoint field {key!r} has type {type(meta[key]).__name__}")
    for key in ("width", "height"):   # darknet holds them in a C int
        if meta.get(key) is not None and not 0 < meta[key] < 1 << 31:
            raise ConvertError(f"{file}: checkpoint {key}={meta[key]} is not a network size")
    header = Header.from_dict(meta.get("header") or {}, file)
    use_dialect = dialect if dialect != "auto" else meta.get("dialect") or "auto"
    if cfg is None:
        text = meta.get("cfg")
        if not text:
            raise ConvertError(f"{file}: the checkpoint holds no cfg; pass one (--cfg)")
        cfg = parse_cfg(text, dialect=use_dialect, name=f"{file} (embedded cfg)")
        try:
            model = _build(cfg, use_dialect, meta.get("width"), meta.get("height"))
        except (RuntimeError, MemoryError) as exc:   # a size no memory holds
            raise ConvertError(f"{file}: the checkpoint's {meta.get('width')}x{meta.get('height')} "
                               f"network cannot be built: {_first_line(exc)}") from None
    else:
        model = _build(cfg, use_dialect)
    cutoff = meta.get("cutoff")
    if cutoff is not None and not 0 <= cutoff <= len(model.module_list):
        raise ConvertError(f"{file}: checkpoint cutoff={cutoff} does not lie in "
                           f"0..{len(model.module_list)} (the layers of its cfg)")
    model.header = header
    model.seen = header.seen
    return model, header


# ---------------------------------------------------------------- one path for .pt and .safetensors

@dataclass
class Contents:
    """A checkpoint container unpacked: what :func:`_load_contents` needs, whatever the format."""

    format: str                    # ".pt" or ".safetensors"
    meta: dict | None              # the META_KEYS fields, typed; None: bare tensors
    tensors: dict[str, Tensor]
    checksums: dict | None         # the checksums record as stored (checked when loading)
    no_meta: str                   # the error when there is no metadata and no cfg


def _load_contents(path: str, c: Contents, cfg, dialect: str, strict: bool,
                   allow_nonfinite: bool) -> tuple[Darknet, LoadReport]:
    checksums = _checksums_record(c.checksums, path)
    if c.meta is None:
        if cfg is None:
            raise ConvertError(f"{path}: {c.no_meta}")
        model, cutoff = _build(cfg, dialect), None
        header = model.header
    else:
        model, header = _model_from_meta(c.meta, checksums and checksums["meta"], path, cfg,
                                         dialect)
        cutoff = c.meta.get("cutoff")
    missing, unexpected = load_state(model, c.tensors, path, strict,
                                     checksums=checksums and checksums["tensors"],
                                     allow_nonfinite=allow_nonfinite)
    total = len(model.module_list)
    in_file = sum(t.numel() for t in c.tensors.values())
    read = in_file - sum(c.tensors[k].numel() for k in unexpected)
    partial = cutoff is not None and 0 <= cutoff < total
    return model, LoadReport(path, header, cutoff if partial else total, total, read, in_file,
                             partial, format=c.format, missing=missing, unexpected=unexpected,
                             checksum_verified=checksums is not None)


def _container_payload(model: Darknet, version: tuple[int, int, int] | None,
                       cutoff: int | None) -> tuple[Header, dict, dict[str, Tensor], dict]:
    """(header, metadata, tensors, checksums) that .pt and .safetensors both write."""
    header = _header_for(model, version)
    header.pack()  # seen must fit the chosen header
    meta = _meta(model, header, cutoff)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    checksums = {"meta": meta_digest(meta),
                 "tensors": {k: tensor_digest(k, v) for k, v in tensors.items()}}
    return header, meta, tensors, checksums


# ---------------------------------------------------------------- .pt

def save_pt(model: Darknet, path: str | os.PathLike, *, version: tuple[int, int, int] | None = None,
            cutoff: int | None = None) -> Header:
    """A torch checkpoint with state_dict, cfg text, darknet header and checksums (atomic)."""
    header, meta, tensors, checksums = _container_payload(model, version, cutoff)
    try:
        with atomic_open(path) as fh:
            torch.save({**meta, "state_dict": tensors, "checksums": checksums}, fh)
    except OSError as exc:
        raise _write_error(path, exc) from None
    return header


def _torch_load_failure(exc: BaseException) -> str:
    """What went wrong, in one line.  torch's weights-only refusal suggests loading with
    ``weights_only=False``, which would run whatever code the file holds: only its reason is kept."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1].split(" Please use", 1)[0]
        why = next((line.strip() for line in rest.splitlines() if line.strip()), "")
        return f"damaged, or holds more than tensors and plain data: {why}"[:300]
    if isinstance(exc, (KeyError, IndexError, EOFError)) or not text.strip():
        return f"damaged: {type(exc).__name__} {text}".strip()[:300]
    return _first_line(exc)


def read_pt(path: str) -> Contents:
    """Unpack a .pt file (``weights_only``: no code in it is ever run)."""
    try:
        with warnings.catch_warnings():   # a damaged pickle makes torch warn before it fails
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: cannot read: no such file") from None
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise ConvertError(f"{path}: not a readable torch checkpoint ({_torch_load_failure(exc)})") \
            from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: a torch checkpoint holding {type(obj).__name__}, not a dict")
    no_meta = "a bare state_dict without a cfg; pass the cfg (--cfg)"
    if "state_dict" in obj and "format" in obj:
        tensors = obj["state_dict"]
        if not isinstance(tensors, dict):
            raise ConvertError(f"{path}: 'state_dict' is a {type(tensors).__name__}, not a dict")
        meta = {k: obj[k] for k in META_KEYS if k in obj}
        return Contents(".pt", meta, tensors, obj.get("checksums"), no_meta)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return Contents(".pt", None, obj, None, no_meta)
    raise ConvertError(f"{path}: not a darknet_py checkpoint (no 'format'/'state_dict' keys; "
                       f"keys: {_short(sorted(map(str, obj)))})")


def load_pt(path: str | os.PathLike, cfg=None, dialect: str = "auto", strict: bool = True, *,
            allow_nonfinite: bool = False, **_) -> tuple[Darknet, LoadReport]:
    path = os.fspath(path)
    return _load_contents(path, read_pt(path), cfg, dialect, strict, allow_nonfinite)


# ---------------------------------------------------------------- .safetensors

def save_safetensors(model: Darknet, path: str | os.PathLike, *,
                     version: tuple[int, int, int] | None = None, cutoff: int | None = None) -> Header:
    """Tensors plus cfg text, header and checksums in the metadata (atomic)."""
    save = require("safetensors.torch", "writing .safetensors").save
    header, meta, tensors, checksums = _container_payload(model, version, cutoff)
    metadata = {k: (json.dumps(v) if k == "header" else "" if v is None else str(v))
                for k, v in meta.items()}
    metadata["checksums"] = json.dumps(checksums)
    try:
        atomic_write(path, save(tensors, metadata=metadata))
    except OSError as exc:
        raise _write_error(path, exc) from None
    return header


def _typed_meta(metadata: dict[str, str], path: str) -> tuple[dict, dict | None]:
    """safetensors' string metadata -> (the META_KEYS fields as written, checksums record)."""
    def number(key: str) -> int | None:
        return int(metadata[key]) if metadata.get(key) else None

    try:
        meta = {"format": metadata.get("format"), "format_version": number("format_version") or 0,
                "cfg": metadata.get("cfg"), "dialect": metadata.get("dialect"),
                "width": number("width"), "height": number("height"),
                "header": json.loads(metadata.get("header", "{}")), "cutoff": number("cutoff")}
        checksums = json.loads(metadata["checksums"]) if "checksums" in metadata else None
    except ValueError as exc:   # json.JSONDecodeError is a ValueError
        raise ConvertError(f"{path}: damaged darknet_py metadata ({_first_line(exc)})") from None
    return meta, checksums


def read_safetensors(path: str) -> Contents:
    """Unpack a .safetensors file."""
    safe_open = require("safetensors", "reading .safetensors").safe_open
    if not os.path.exists(path):
        raise ConvertError(f"{path}: cannot read: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError and friends
        raise ConvertError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    no_meta = "no darknet_py metadata (cfg, header); pass the cfg (--cfg)"
    if metadata.get("format") != FORMAT and "checksums" not in metadata:
        return Contents(".safetensors", None, tensors, None, no_meta)
    meta, checksums = _typed_meta(metadata, path)
    return Contents(".safetensors", meta, tensors, checksums, no_meta)


def load_safetensors(path: str | os.PathLike, cfg=None, dialect: str = "auto", strict: bool = True,
                     *, allow_nonfinite: bool = False, **_) -> tuple[Darknet, LoadReport]:
    path = os.fspath(path)
    return _load_contents(path, read_safetensors(path), cfg, dialect, strict, allow_nonfinite)


# ---------------------------------------------------------------- .weights

def load_darknet(path: str | os.PathLike, cfg=None, dialect: str = "auto",
                 allow_trailing: bool = False, *, allow_nonfinite: bool = False,
                 **_) -> tuple[Darknet, LoadReport]:
    path = os.fspath(path)
    if cfg is None:
        raise ConvertError(f"{path}: a darknet .weights file needs its cfg (--cfg)")
    model = _build(cfg, dialect)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialWeightsWarning)  # the report says so
        report = model.load_weights(path, allow_trailing=allow_trailing,
                                    allow_nonfinite=allow_nonfinite)
    return model, report


def save_darknet(model: Darknet, path, *, version=None, cutoff=None, **_) -> Header:
    return model.save_weights(path, cutoff=cutoff, version=version)


def _read_only_onnx(path, *args, **kwargs):
    raise ConvertError(f"{os.fspath(path)}: .onnx is an export format; it cannot be read back")


# ---------------------------------------------------------------- by extension

#: input extension -> reader(path, cfg, dialect, *, strict, allow_trailing, allow_nonfinite)
READERS: dict[str, Callable[..., tuple[Darknet, LoadReport]]] = {
    ".weights": load_darknet, ".pt": load_pt, ".pth": load_pt, ".safetensors": load_safetensors,
    ".onnx": _read_only_onnx,
}

def _writer(save: Callable[..., Header]) -> Callable[..., Header]:
    """``save`` taking (and ignoring) the options of other formats' writers."""
    def write(model: Darknet, path, *, version=None, cutoff=None, **_) -> Header:
        return save(model, path, version=version, cutoff=cutoff)
    return write


#: output extension -> writer(model, path, *, version, cutoff, **other formats' options) -> Header
WRITERS: dict[str, Callable[..., Header]] = {
    ".weights": save_darknet, ".pt": _writer(save_pt), ".pth": _writer(save_pt),
    ".safetensors": _writer(save_safetensors),
}


def load_model(path: str | os.PathLike, cfg=None, dialect: str = "auto", strict: bool = True,
               allow_trailing: bool = False,
               allow_nonfinite: bool = False) -> tuple[Darknet, LoadReport]:
    """A :class:`Darknet` with its parameters from any supported file (chosen by extension).

    ``strict``: .pt/.safetensors tensors must match the model's exactly;
    ``allow_trailing``: floats after the last layer of a .weights file are ignored;
    ``allow_nonfinite``: NaN/inf parameters are loaded instead of refused.
    """
    reader = READERS.get(_ext(path))
    if reader is None:
        raise ConvertError(f"{os.fspath(path)}: unknown extension {_ext(path)!r}; expected one of "
                           f"{', '.join(sorted(READERS))}")
    return reader(path, cfg, dialect, strict=strict, allow_trailing=allow_trailing,
                  allow_nonfinite=allow_nonfinite)
