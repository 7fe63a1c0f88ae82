"""Darknet ``.weights`` files: header, per-layer layout, read / load / save.

File = header (int32 major, minor, revision; then ``seen`` as uint64 or
uint32), then the float32 parameters of every layer in layer order, in the
order each layer's ``darknet_tensors()`` lists them (written once, used by the
reader and the writer).  ``[connected]`` matrices are stored transposed when
major or minor > 1000.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from .errors import WeightsError
from .io import atomic_open

if TYPE_CHECKING:
    from .model import Darknet

DEFAULT_VERSION = {"pjreddie": (0, 2, 0), "alexeyab": (0, 2, 5)}


def seen_bytes(major: int, minor: int, dialect: str = "pjreddie") -> int:
    """Width of ``seen``: 8 when (major*10+minor) >= 2; pjreddie also needs major, minor < 1000."""
    wide = major * 10 + minor >= 2
    if dialect == "pjreddie":
        wide = wide and major < 1000 and minor < 1000
    return 8 if wide else 4


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    revision: int
    seen: int = 0
    seen_width: int = 8

    @classmethod
    def new(cls, version: tuple[int, int, int], seen: int = 0, dialect: str = "pjreddie") -> "Header":
        major, minor, revision = version
        return cls(major, minor, revision, seen, seen_bytes(major, minor, dialect))

    @property
    def size(self) -> int:
        return 12 + self.seen_width

    @property
    def transposed(self) -> bool:
        return self.major > 1000 or self.minor > 1000

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.revision)

    def pack(self) -> bytes:
        if self.seen_width == 4 and not 0 <= self.seen < 2 ** 32:
            raise WeightsError(f"seen={self.seen} does not fit the 32-bit field of version "
                               f"{self.major}.{self.minor}")
        fmt = "<iiiQ" if self.seen_width == 8 else "<iiiI"
        return struct.pack(fmt, self.major, self.minor, self.revision, self.seen)

    @classmethod
    def unpack(cls, data: bytes, file: str, dialect: str = "pjreddie") -> "Header":
        if len(data) < 12:
            raise WeightsError(f"file has {len(data)} bytes, too short for a darknet header "
                               f"(12 bytes of version + seen)", file)
        major, minor, revision = struct.unpack_from("<iii", data)
        if not (0 <= major < 2 ** 20 and 0 <= minor < 2 ** 20 and 0 <= revision < 2 ** 20):
            raise WeightsError(f"header version {major}.{minor}.{revision} is not a darknet weights "
                               f"header (wrong file format?)", file)
        width = seen_bytes(major, minor, dialect)
        if len(data) < 12 + width:
            raise WeightsError(f"file ends inside the header ({len(data)} bytes, needs {12 + width})",
                               file)
        (seen,) = struct.unpack_from("<Q" if width == 8 else "<I", data, 12)
        return cls(major, minor, revision, seen, width)


@dataclass
class LayerRecord:
    """Where one layer's parameters lie in a weights file."""

    index: int
    type: str
    offset: int          # byte offset in the file
    floats: int
    tensors: list[tuple[str, int]] = field(default_factory=list)  # (name, count)

    @property
    def nbytes(self) -> int:
        return 4 * self.floats


def _layer_tensors(layer, for_load: bool) -> list[tuple[str, torch.Tensor]]:
    sec = layer.section
    if for_load and sec.get("dontload", 0):
        return []
    if not for_load and sec.get("dontsave", 0):
        return []
    return layer.darknet_tensors()


def layout(model: "Darknet", header_size: int, cutoff: int | None = None,
           for_load: bool = True) -> list[LayerRecord]:
    """The byte layout of the model's weights file, layer by layer, up to ``cutoff``."""
    records, offset = [], header_size
    end = len(model.module_list) if cutoff is None else min(cutoff, len(model.module_list))
    for layer in list(model.module_list)[:end]:
        tensors = [(name, t.numel()) for name, t in _layer_tensors(layer, for_load)]
        floats = sum(n for _, n in tensors)
        records.append(LayerRecord(layer.index, layer.type, offset, floats, tensors))
        offset += 4 * floats
    return records


def read_header(path: str | os.PathLike, dialect: str = "pjreddie") -> Header:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return Header.unpack(fh.read(20), path, dialect)
    except OSError as exc:
        raise WeightsError(f"cannot read: {exc.strerror}", path) from None


def read_weights(path: str | os.PathLike, dialect: str = "pjreddie") -> tuple[Header, np.ndarray]:
    """The header and the whole body as one float32 array (one read)."""
    path = os.fspath(path)
    header = read_header(path, dialect)
    body = np.fromfile(path, dtype="<f4", offset=header.size)
    return header, body


@dataclass
class LoadReport:
    """What ``load_weights`` did."""

    file: str
    header: Header
    layers_loaded: int
    layers_total: int
    floats_read: int
    floats_in_file: int
    partial: bool

    def __str__(self) -> str:
        s = (f"{self.file}: loaded {self.layers_loaded}/{self.layers_total} layers, "
             f"{self.floats_read} floats, seen={self.header.seen}")
        if self.partial:
            s += (f" (partial file: layers {self.layers_loaded}..{self.layers_total - 1} keep "
                  f"their initial values)")
        return s


def _place(layer, name: str, dst: torch.Tensor, src: np.ndarray, transposed: bool) -> None:
    t = torch.from_numpy(src)
    if transposed and layer.type == "connected" and name == "weights":
        t = t.view(dst.shape[1], dst.shape[0]).t()
    with torch.no_grad():
        dst.copy_(t.view(dst.shape))


def load_weights(model: "Darknet", path: str | os.PathLike, cutoff: int | None = None,
                 allow_trailing: bool = False, allow_partial: bool = True) -> LoadReport:
    """Load a darknet weights file into ``model`` (layers [0, cutoff)).

    A file that ends exactly after some layer is a partial file (like
    darknet53.conv.74): the layers it holds are loaded, the others keep their
    values, and the report says so (unless ``allow_partial=False``).  A file
    that ends inside a layer, or has floats left over, is an error naming the
    layer.
    """
    path = os.fspath(path)
    header, body = read_weights(path, model.dialect)
    if body.nbytes % 4 and not allow_trailing:
        raise WeightsError("body size is not a whole number of float32 values", path)
    records = layout(model, header.size, cutoff)
    layers = model.module_list
    pos = 0
    loaded = 0
    for rec in records:
        if pos == body.size and rec.floats and allow_partial:
            break
        if pos + rec.floats > body.size:
            raise WeightsError(
                f"file ends inside layer {rec.index} [{rec.type}] at byte offset {rec.offset}: it "
                f"needs {rec.floats} floats, {body.size - pos} are left", path)
        layer = layers[rec.index]
        for (name, tensor) in _layer_tensors(layer, True):
            n = tensor.numel()
            _place(layer, name, tensor, body[pos:pos + n], header.transposed)
            pos += n
        loaded += 1
    expected_layers = len(records)
    partial = loaded < expected_layers and any(r.floats for r in records[loaded:])
    if partial and not allow_partial:
        raise WeightsError(f"file holds only layers 0..{loaded - 1} of {expected_layers}", path)
    if pos < body.size and not allow_trailing:
        raise WeightsError(
            f"{body.size - pos} floats ({4 * (body.size - pos)} bytes) are left after the last "
            f"layer ({expected_layers - 1}); the cfg does not match this file (pass "
            f"allow_trailing=True to ignore them, as darknet does)", path)
    model.header = header
    return LoadReport(path, header, loaded, len(model.module_list), pos, int(body.size), partial)


def iter_body(model: "Darknet", cutoff: int | None, transposed: bool) -> Iterator[np.ndarray]:
    """Each tensor of the body, as a contiguous float32 array, in file order."""
    end = len(model.module_list) if cutoff is None else cutoff
    for layer in list(model.module_list)[:end]:
        for name, tensor in _layer_tensors(layer, False):
            t = tensor.detach()
            if transposed and layer.type == "connected" and name == "weights":
                t = t.t()
            yield np.ascontiguousarray(t.to("cpu", torch.float32).numpy(), dtype="<f4")


def save_weights(model: "Darknet", path: str | os.PathLike, cutoff: int | None = None,
                 version: tuple[int, int, int] | None = None, seen: int | None = None) -> Header:
    """Write ``model`` as a darknet weights file, atomically.

    By default the header is the one the weights were loaded with (so a file
    loads and saves byte for byte); ``version`` picks another, e.g. (0, 1, 0)
    for a 32-bit ``seen``.  ``cutoff`` writes layers [0, cutoff) like
    ``darknet partial``.
    """
    h = model.header
    if version is None:
        version = h.version
        width = h.seen_width
    else:
        width = seen_bytes(version[0], version[1], model.dialect)
    header = Header(*version, seen=model.seen if seen is None else seen, seen_width=width)
    with atomic_open(path) as fh:
        fh.write(header.pack())
        for arr in iter_body(model, cutoff, header.transposed):
            fh.write(memoryview(arr).cast("B"))
    return header
