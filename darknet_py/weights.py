"""Darknet ``.weights`` files: header, per-layer layout, check / read / load / save.

A file is a header -- int32 ``major``, ``minor``, ``revision``, then ``seen``
as uint64 or uint32 (:func:`seen_bytes`) -- followed by the float32 parameters
of every layer, in layer order.  Which tensors a layer stores, and in which
order, is each layer's ``darknet_tensors()``; :func:`file_entries` adds the
per-file rules of darknet's ``load_weights_upto`` / ``save_weights_upto``
(``dontload``, ``dontsave``, ``dontloadscales``, ``numload``, ``flipped``,
shared AlexeyAB convolutions, ``[connected]`` matrices -- also those of the
[connected] sub-layers of [rnn]/[gru]/[lstm] -- stored transposed when major or
minor > 1000).  Reader and writer both walk the same
:func:`layout`.

Loading checks the file size against the layout *before* touching the model,
then reads each tensor straight into its storage (one pass over the file, no
intermediate copy for CPU float32 parameters).  NaN or infinite values read
are an error naming layer, tensor and byte offset unless ``allow_nonfinite``.
:class:`LoadReport` says what a load did, for this and every other format.
"""
from __future__ import annotations

import os
import struct
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from torch import Tensor

from .errors import WeightsError
from .files import atomic_open, paused_gc, write_buffers

if TYPE_CHECKING:
    from .model import Darknet

#: the header each darknet writes
DEFAULT_VERSION: dict[str, tuple[int, int, int]] = {"pjreddie": (0, 2, 0), "alexeyab": (0, 2, 5)}
#: header versions a user may ask for by name (``0.1``: 32-bit seen, for old tools)
NAMED_VERSIONS: dict[str, tuple[int, int, int]] = {"0.1": (0, 1, 0), "0.2": (0, 2, 0),
                                                   "0.2.5": (0, 2, 5)}

_LITTLE = sys.byteorder == "little"
_BN_NAMES = frozenset({"scales", "rolling_mean", "rolling_variance"})
_HEADER_LIMIT = 1 << 20  # no darknet ever wrote a version field this large


class PartialWeightsWarning(UserWarning):
    """A weights file held only the first layers of the model (e.g. darknet53.conv.74)."""


def seen_bytes(major: int, minor: int, dialect: str = "pjreddie") -> int:
    """Width of ``seen``: 8 when (major*10+minor) >= 2; pjreddie also needs major, minor < 1000."""
    wide = major * 10 + minor >= 2
    if dialect == "pjreddie":
        wide = wide and major < 1000 and minor < 1000
    return 8 if wide else 4


def parse_version(text: str) -> tuple[int, int, int]:
    """``"0.1"``, ``"0.2"``, ``"0.2.5"`` or any ``major.minor[.revision]`` -> a version triple."""
    if text in NAMED_VERSIONS:
        return NAMED_VERSIONS[text]
    parts = text.split(".")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or any(not 0 <= v < _HEADER_LIMIT for v in nums):
        raise WeightsError(f"header version {text!r}: expected MAJOR.MINOR[.REVISION], e.g. 0.1 "
                           f"(32-bit seen) or 0.2 (64-bit seen)")
    return (nums[0], nums[1], nums[2] if len(nums) == 3 else 0)


@dataclass(frozen=True)
class Header:
    """The header of a weights file; ``seen_width`` is 4 or 8 bytes."""

    major: int
    minor: int
    revision: int
    seen: int = 0
    seen_width: int = 8

    @classmethod
    def new(cls, version: tuple[int, int, int], seen: int = 0, dialect: str = "pjreddie") -> "Header":
        major, minor, revision = version
        return cls(major, minor, revision, int(seen), seen_bytes(major, minor, dialect))

    @property
    def size(self) -> int:
        return 12 + self.seen_width

    @property
    def transposed(self) -> bool:
        """``[connected]`` weight matrices are stored [inputs][outputs]."""
        return self.major > 1000 or self.minor > 1000

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.revision)

    def as_dict(self) -> dict[str, int]:
        return {"major": self.major, "minor": self.minor, "revision": self.revision,
                "seen": self.seen, "seen_width": self.seen_width}

    @classmethod
    def from_dict(cls, d: dict, file: str | None = None) -> "Header":
        try:
            h = cls(int(d["major"]), int(d["minor"]), int(d["revision"]), int(d["seen"]),
                    int(d["seen_width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"darknet header record {d!r} is incomplete ({exc})", file) from None
        if h.seen_width not in (4, 8):
            raise WeightsError(f"darknet header record has seen_width={h.seen_width}; expected 4 or 8",
                               file)
        if not all(0 <= v < _HEADER_LIMIT for v in h.version):
            raise WeightsError(f"darknet header record has version {h.major}.{h.minor}.{h.revision}, "
                               f"which no darknet writes", file)
        if not 0 <= h.seen < 1 << (8 * h.seen_width):
            raise WeightsError(f"darknet header record has seen={h.seen}, which does not fit its "
                               f"{8 * h.seen_width}-bit field", file)
        return h

    def pack(self) -> bytes:
        limit = 1 << (8 * self.seen_width)
        if not 0 <= self.seen < limit:
            raise WeightsError(f"seen={self.seen} does not fit the {8 * self.seen_width}-bit field of "
                               f"header version {self.major}.{self.minor}.{self.revision}")
        fmt = "<iiiQ" if self.seen_width == 8 else "<iiiI"
        return struct.pack(fmt, self.major, self.minor, self.revision, self.seen)

    @classmethod
    def unpack(cls, data: bytes, file: str, dialect: str = "pjreddie") -> "Header":
        """Parse the first bytes of a file (at least 12; 20 to be sure of ``seen``)."""
        _reject_other_formats(data, file)
        if len(data) < 12:
            raise WeightsError(f"file has {len(data)} bytes, too short for a darknet header "
                               f"(12 bytes of version, then seen)", file)
        major, minor, revision = struct.unpack_from("<iii", data)
        if not all(0 <= v < _HEADER_LIMIT for v in (major, minor, revision)):
            raise WeightsError(f"header version {major}.{minor}.{revision} is not a darknet weights "
                               f"header (wrong file format?)", file)
        width = seen_bytes(major, minor, dialect)
        if len(data) < 12 + width:
            raise WeightsError(f"file ends inside the header: {len(data)} bytes, but version "
                               f"{major}.{minor}.{revision} needs {12 + width} ({width}-byte seen)",
                               file)
        (seen,) = struct.unpack_from("<Q" if width == 8 else "<I", data, 12)
        return cls(major, minor, revision, seen, width)


def _reject_other_formats(data: bytes, file: str) -> None:
    """Clear messages for the files users most often pass by mistake."""
    if data[:4] == b"PK\x03\x04":
        raise WeightsError("this is a zip archive (a torch .pt checkpoint?), not a darknet .weights "
                           "file; use darknet_py.convert / 'darknet-py convert' to read it", file)
    if len(data) >= 10 and data[8:10] == b'{"' and struct.unpack_from("<Q", data)[0] < 1 << 30:
        raise WeightsError("this looks like a .safetensors file, not a darknet .weights file; use "
                           "darknet_py.convert / 'darknet-py convert' to read it", file)
    if data[:1] == b"[" or data[:5].lower() == b"[net]":
        raise WeightsError("this is a text file (a cfg?), not a darknet .weights file", file)


# ---------------------------------------------------------------- layout

@dataclass(frozen=True)
class Entry:
    """One tensor's run of floats in the file.

    ``count`` floats go to the first ``count`` elements of ``tensor`` (fewer than
    its size only with pjreddie's ``numload``).  ``matrix=(rows, cols)``: the file
    holds a rows x cols matrix that is the transpose of the tensor's layout.
    """

    name: str
    tensor: Tensor
    count: int
    matrix: tuple[int, int] | None = None


@dataclass
class LayerRecord:
    """Where one layer's parameters lie in a weights file."""

    index: int
    type: str
    offset: int                                        # byte offset in the file
    floats: int
    tensors: list[tuple[str, int]] = field(default_factory=list)   # (name, floats)
    entries: list[Entry] = field(default_factory=list, repr=False)

    @property
    def nbytes(self) -> int:
        return 4 * self.floats

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


# Which layer types darknet's load/save functions touch, per dialect (src/parser.c,
# load_weights_upto / save_weights_upto of each darknet).
#: (dialect, type) of layers whose tensors darknet never reads or writes
NOT_STORED: dict[tuple[str, str], str] = {
    ("alexeyab", "deconvolutional"): "AlexeyAB's darknet neither builds nor stores [deconvolutional]",
    ("pjreddie", "shortcut"): "pjreddie's [shortcut] has no weights",
}
#: types whose BN tensors ``dontloadscales=1`` keeps out of the file on load
DONTLOADSCALES_TYPES = frozenset({"convolutional", "deconvolutional", "connected"})
#: types made of [connected] sub-layers (tensors named ``<sub-layer>.<tensor>``), each read with
#: ``load_connected_weights`` -- transposed matrices included -- and never ``dontloadscales``
CONNECTED_SUBLAYER_TYPES = frozenset({"rnn", "gru", "lstm"})
#: types whose leading filters ``numload=K`` reads (pjreddie only)
NUMLOAD_TYPES = frozenset({"convolutional", "deconvolutional"})


def _matrix(layer, name: str, t: Tensor, transposed: bool, for_load: bool) -> tuple[int, int] | None:
    """(rows, cols) when the file holds the transpose of ``t``'s matrix layout."""
    if transposed and layer.type in CONNECTED_SUBLAYER_TYPES and name.endswith(".weights"):
        return (t.shape[1], t.shape[0])                      # load_connected_weights of a sub-layer
    if name != "weights":
        return None
    if layer.type == "connected" and transposed:
        return (t.shape[1], t.shape[0])                      # file: [inputs][outputs]
    if layer.type == "convolutional" and for_load and layer.section.get("flipped", 0):
        return (t.numel() // t.shape[0], t.shape[0])         # file: [c/groups*size*size][n]
    return None


def file_entries(layer, dialect: str, transposed: bool = False, for_load: bool = True) -> list[Entry]:
    """The tensors ``layer`` has in a weights file, in file order, by darknet's rules."""
    sec = layer.section
    if (dialect, layer.type) in NOT_STORED:
        return []
    if for_load and sec.get("dontload", 0):
        return []
    if not for_load and dialect == "pjreddie" and sec.get("dontsave", 0):
        return []  # only pjreddie's save_weights_upto honours dontsave
    if dialect == "alexeyab" and layer.type == "convolutional" and "share_index" in sec:
        return []  # a convolution sharing another layer's weights stores nothing
    tensors = layer.darknet_tensors()
    if for_load and sec.get("dontloadscales", 0) and layer.type in DONTLOADSCALES_TYPES:
        tensors = [(n, t) for n, t in tensors if n not in _BN_NAMES]
    numload = 0
    if for_load and dialect == "pjreddie" and layer.type in NUMLOAD_TYPES:
        numload = sec.get("numload", 0)
        if numload and not 0 < numload <= layer.n:
            raise WeightsError(f"layer {layer.index} [{sec.name}] (line {sec.line}): numload={numload} "
                               f"must lie in 1..filters={layer.n}")
    out = []
    for name, t in tensors:
        if numload:   # the first numload filters: a prefix of every tensor
            out.append(Entry(name, t, t.numel() // layer.n * numload))
        else:
            out.append(Entry(name, t, t.numel(), _matrix(layer, name, t, transposed, for_load)))
    return out


def layout(model: "Darknet", header_size: int, cutoff: int | None = None,
           for_load: bool = True, transposed: bool = False) -> list[LayerRecord]:
    """The byte layout of the model's weights file, layer by layer, for layers [0, cutoff)."""
    n = len(model.module_list)
    end = n if cutoff is None else max(0, min(cutoff, n))
    records, offset = [], header_size
    for layer in list(model.module_list)[:end]:
        entries = file_entries(layer, model.dialect, transposed, for_load)
        floats = sum(e.count for e in entries)
        records.append(LayerRecord(layer.index, layer.type, offset, floats,
                                   [(e.name, e.count) for e in entries], entries))
        offset += 4 * floats
    return records


# ---------------------------------------------------------------- checking a file

def read_header(path: str | os.PathLike, dialect: str = "pjreddie") -> Header:
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            return Header.unpack(fh.read(20), path, dialect)
    except OSError as exc:
        raise WeightsError(f"cannot read: {exc.strerror}", path) from None


def read_weights(path: str | os.PathLike, dialect: str = "pjreddie") -> tuple[Header, np.ndarray]:
    """The header and the whole body as one float32 array (one read; an odd tail is dropped)."""
    path = os.fspath(path)
    header = read_header(path, dialect)
    size = os.path.getsize(path)
    body = np.fromfile(path, dtype="<f4", offset=header.size, count=(size - header.size) // 4)
    return header, body


@dataclass
class FileCheck:
    """How a weights file fits a model, found from the header and the file size alone."""

    file: str
    header: Header
    file_bytes: int
    records: list[LayerRecord]           # the layout of the layers asked for
    floats_in_file: int                  # whole float32 values after the header
    odd_bytes: int                       # bytes after the last whole float
    layers_in_file: int                  # leading records wholly present in the file
    ends_inside: LayerRecord | None      # the record the file ends inside, if any
    floats_left: int                     # floats left for ``ends_inside``
    trailing_floats: int                 # floats after every layer of the model
    floats_needed: int                   # floats of the layers asked for
    floats_full: int                     # floats of the whole model

    @property
    def partial(self) -> bool:
        """The file ends exactly after a layer, before later layers that have weights."""
        if self.ends_inside is not None:
            return False
        return any(r.floats for r in self.records[self.layers_in_file:])

    @property
    def exact(self) -> bool:
        return (self.ends_inside is None and not self.partial and not self.trailing_floats
                and not self.odd_bytes)

    @property
    def floats_used(self) -> int:
        return sum(r.floats for r in self.records[:self.layers_in_file])

    def truncation_message(self) -> str:
        r = self.ends_inside
        assert r is not None
        where, before = "", 0
        for e in r.entries:
            if before + e.count > self.floats_left:
                where = f" (in its {e.name!r}, float {self.floats_left - before} of {e.count})"
                break
            before += e.count
        return (f"file ends inside layer {r.index} [{r.type}] at byte offset {r.offset}: the layer "
                f"needs {r.floats} floats, {self.floats_left} are left{where}; the cfg does not "
                f"match this weights file")

    def summary(self) -> str:
        """One line: does the file size match the cfg exactly, and if not, where not."""
        if self.ends_inside is not None:
            return self.truncation_message()
        parts = []
        if self.partial:
            last = self.layers_in_file - 1
            parts.append(f"partial file: holds layers 0..{last} ({self.floats_used} of "
                         f"{self.floats_needed} floats), later layers are not in it")
        if self.trailing_floats:
            parts.append(f"{self.trailing_floats} floats ({4 * self.trailing_floats} bytes) are left "
                         f"after the last layer")
        if self.odd_bytes:
            parts.append(f"{self.odd_bytes} stray bytes after the last whole float")
        if not parts:
            return (f"size matches the cfg exactly: {self.file_bytes} bytes = {self.header.size} "
                    f"header + {4 * self.floats_needed} body")
        return "; ".join(parts)


def check_weights(model: "Darknet", path: str | os.PathLike, cutoff: int | None = None) -> FileCheck:
    """Compare a weights file with the model's layout without reading its body."""
    path = os.fspath(path)
    header = read_header(path, model.dialect)
    size = os.path.getsize(path)
    body = size - header.size
    floats_in_file, odd = divmod(body, 4)
    records = layout(model, header.size, cutoff, True, header.transposed)
    full = records if cutoff is None else layout(model, header.size, None, True, header.transposed)
    floats_full = sum(r.floats for r in full)
    pos, inside, left, loaded = 0, None, 0, 0
    for rec in records:
        if pos + rec.floats > floats_in_file:
            if pos < floats_in_file:
                inside, left = rec, floats_in_file - pos
            break
        pos += rec.floats
        loaded += 1
    trailing = max(0, floats_in_file - floats_full)
    return FileCheck(path, header, size, records, floats_in_file, odd, loaded, inside, left,
                     trailing, sum(r.floats for r in records), floats_full)


# ---------------------------------------------------------------- loading

@dataclass
class LoadReport:
    """What a load did, for every format: :func:`load_weights` (``.weights``) and
    the ``.pt`` / ``.safetensors`` readers of :mod:`darknet_py.formats`.

    ``layers_loaded`` < ``layers_total`` with ``partial``: the source held only
    layers [0, layers_loaded) (darknet53.conv.74, or a checkpoint converted from
    such a file); the others keep their initial values.
    """

    file: str
    header: Header
    layers_loaded: int
    layers_total: int
    floats_read: int
    floats_in_file: int
    partial: bool
    trailing_floats: int = 0
    format: str = ".weights"
    missing: list[str] = field(default_factory=list)      # non-strict .pt/.safetensors loads
    unexpected: list[str] = field(default_factory=list)
    checksum_verified: bool = False                       # the tensors matched the file's checksums

    @property
    def cutoff(self) -> int | None:
        """Layers [0, cutoff) came from the file when it was partial, else None."""
        return self.layers_loaded if self.partial else None

    def __str__(self) -> str:
        s = (f"{self.file}: loaded {self.layers_loaded}/{self.layers_total} layers, "
             f"{self.floats_read} floats, seen={self.header.seen}")
        if self.partial:
            s += (f" (partial file: layers {self.layers_loaded}..{self.layers_total - 1} keep "
                  f"their initial values)")
        if self.trailing_floats:
            s += f" ({self.trailing_floats} trailing floats ignored)"
        if self.missing or self.unexpected:
            s += f" ({len(self.missing)} tensors missing, {len(self.unexpected)} unexpected)"
        return s


# ---------------------------------------------------------------- non-finite values

#: how a user asks to load non-finite parameters anyway
NONFINITE_HINT = "pass allow_nonfinite=True (--allow-nonfinite) to load it anyway"


def nonfinite(t: Tensor) -> tuple[int, int, float] | None:
    """(count, first flat index, its value) of ``t``'s NaN/inf values, or None if all are finite."""
    if not (t.is_floating_point() or t.is_complex()):
        return None
    flat = t.detach().reshape(-1)
    # A NaN or an infinity anywhere makes the sum NaN or infinite, so a finite sum proves
    # every value finite in one fast pass; only a non-finite sum (which large finite values
    # can also give, by overflow) needs the value-by-value look.
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        arr = flat.numpy()
        with np.errstate(all="ignore"):   # the overflow and NaN are what is looked for
            if np.isfinite(arr.sum()):
                return None
        bad = ~np.isfinite(arr)
    else:
        if bool(torch.isfinite(flat.sum())):
            return None
        bad = (~torch.isfinite(flat)).cpu().numpy()
        arr = flat.cpu().numpy() if flat.dtype != torch.bfloat16 else flat.float().cpu().numpy()
    if not bad.any():
        return None
    first = int(bad.argmax())
    return int(bad.sum()), first, float(arr[first])


def nonfinite_text(where: str, t: Tensor) -> str | None:
    """``where``: N of M values are not finite ..., or None when ``t`` is all finite."""
    found = nonfinite(t)
    if found is None:
        return None
    count, first, value = found
    return (f"{where}: {count} of {t.numel()} values are not finite (the first, at index {first}, "
            f"is {value}); {NONFINITE_HINT}")


def layer_label(model: "Darknet", index: int) -> str:
    """``layer 3 [convolutional] (yolov3.cfg:25)``: a layer as errors name it."""
    s = model.module_list[index].section
    return f"layer {index} [{s.name}] ({s.file}:{s.line})"


def _check_finite(model: "Darknet", records: list[LayerRecord], path: str) -> None:
    for rec in records:
        offset = rec.offset
        for e in rec.entries:
            text = nonfinite_text(f"{layer_label(model, rec.index)}, tensor {e.name!r} at byte "
                                  f"offset {offset}",
                                  e.tensor.detach().reshape(-1)[:e.count])
            if text is not None:
                raise WeightsError(text, path)
            offset += 4 * e.count


def _readinto(fh: BinaryIO, buf: memoryview, path: str) -> None:
    done = 0
    while done < len(buf):
        n = fh.readinto(buf[done:])
        if not n:
            raise WeightsError(f"file shrank while being read ({len(buf) - done} bytes missing)",
                               path)
        done += n


def _read_entry(fh: BinaryIO, e: Entry, path: str) -> None:
    t = e.tensor
    if (_LITTLE and e.matrix is None and t.device.type == "cpu" and t.dtype == torch.float32
            and t.is_contiguous()):
        # straight into the parameter's storage
        dst = t.detach().view(-1)[:e.count].numpy()
        _readinto(fh, memoryview(dst).cast("B"), path)
        return
    buf = np.empty(e.count, dtype="<f4")
    _readinto(fh, memoryview(buf).cast("B"), path)
    src = torch.from_numpy(buf.astype(np.float32, copy=False))
    if e.matrix is not None:
        rows, cols = e.matrix
        src = src.view(rows, cols).t()
    with torch.no_grad():
        if e.count == t.numel():
            t.copy_(src.reshape(t.shape))
        else:
            flat = t.detach().reshape(-1).clone()
            flat[:e.count] = src.to(flat)
            t.copy_(flat.view(t.shape))


def load_weights(model: "Darknet", path: str | os.PathLike, cutoff: int | None = None,
                 allow_trailing: bool = False, allow_partial: bool = True,
                 allow_nonfinite: bool = False) -> LoadReport:
    """Load a darknet weights file into ``model`` (layers [0, cutoff)).

    The file size is checked against the layout first, so a file that does not
    fit raises :class:`WeightsError` without changing the model:

    * ends inside a layer: the error names the layer index and type, the floats
      it needs and the floats left;
    * ends exactly after some layer (a partial file like darknet53.conv.74): the
      layers it holds are loaded, the others keep their values, the report says
      so and a :class:`PartialWeightsWarning` is issued (error if
      ``allow_partial=False``);
    * floats after the last layer of the model: an error unless
      ``allow_trailing`` (darknet itself ignores them).  With a ``cutoff`` the
      floats of layers >= cutoff are expected and skipped.

    A NaN or infinite value among the floats read is an error naming the layer,
    the tensor and its byte offset (a damaged file; the model then holds the
    file's values) unless ``allow_nonfinite``.
    """
    chk = check_weights(model, path, cutoff)
    path = chk.file
    if chk.ends_inside is not None:
        raise WeightsError(chk.truncation_message(), path)
    if chk.odd_bytes and not allow_trailing:
        raise WeightsError(f"the body is not a whole number of float32 values: {chk.odd_bytes} "
                           f"stray bytes at the end (pass allow_trailing=True to ignore them)", path)
    if chk.partial and not allow_partial:
        raise WeightsError(f"partial file: it holds only layers 0..{chk.layers_in_file - 1} of "
                           f"{len(chk.records)} ({chk.floats_used} of {chk.floats_needed} floats)",
                           path)
    if chk.trailing_floats and not allow_trailing:
        raise WeightsError(
            f"{chk.trailing_floats} floats ({4 * chk.trailing_floats} bytes) are left after the "
            f"last layer ({len(model.module_list) - 1}); the cfg does not match this file (pass "
            f"allow_trailing=True to ignore them, as darknet does)", path)
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(chk.header.size)
            for rec in chk.records[:chk.layers_in_file]:
                for e in rec.entries:
                    _read_entry(fh, e, path)
    except OSError as exc:
        raise WeightsError(f"cannot read: {exc.strerror}", path) from None
    if not allow_nonfinite:
        _check_finite(model, chk.records[:chk.layers_in_file], path)
    model.header = chk.header
    report = LoadReport(path, chk.header, chk.layers_in_file, len(model.module_list),
                        chk.floats_used, chk.floats_in_file, chk.partial, chk.trailing_floats)
    if report.partial:
        warnings.warn(str(report), PartialWeightsWarning, stacklevel=2)
    return report


# ---------------------------------------------------------------- saving

def _entry_bytes(e: Entry) -> memoryview:
    """The little-endian float32 bytes darknet stores for one entry."""
    t = e.tensor.detach()
    if (_LITTLE and e.matrix is None and t.device.type == "cpu" and t.dtype == torch.float32
            and t.is_contiguous()):
        return memoryview(t.view(-1)[:e.count].numpy()).cast("B")   # no copy
    t = t.to("cpu", torch.float32)
    if e.matrix is not None:
        rows, cols = e.matrix
        t = t.reshape(cols, rows).t()
    arr = np.ascontiguousarray(t.reshape(-1)[:e.count].numpy(), dtype="<f4")
    return memoryview(arr).cast("B")


def save_weights(model: "Darknet", path: str | os.PathLike, cutoff: int | None = None,
                 version: tuple[int, int, int] | None = None, seen: int | None = None,
                 durable: bool = False) -> Header:
    """Write ``model`` as a darknet weights file, atomically; returns the header written.

    By default the header is the one the weights were loaded with (so a file
    loads and saves byte for byte); ``version`` picks another, e.g. (0, 1, 0)
    for a 32-bit ``seen`` or (0, 2, 0) for a 64-bit one.  ``cutoff`` writes
    layers [0, cutoff) like ``darknet partial``.  ``seen`` defaults to
    ``model.seen``.  The file is written under a temporary name (its size
    reserved up front) and renamed, so an interrupted save never leaves a half
    file; ``durable=True`` also fsyncs it first, so that even a power loss
    cannot.
    """
    h = model.header
    seen = model.seen if seen is None else int(seen)
    if version is None:
        header = Header(h.major, h.minor, h.revision, seen, h.seen_width)
    else:
        header = Header.new(tuple(version), seen, model.dialect)  # type: ignore[arg-type]
    head = header.pack()
    with paused_gc():   # a few thousand small objects could set off a full collection (~0.1 s)
        records = layout(model, header.size, cutoff, for_load=False, transposed=header.transposed)
        buffers = [memoryview(head), *(_entry_bytes(e) for rec in records for e in rec.entries)]
    try:
        size = sum(b.nbytes for b in buffers)
        with atomic_open(path, durable=durable, size=size) as fh:
            write_buffers(fh, buffers)
    except OSError as exc:
        raise WeightsError(f"cannot write: {exc.strerror}", os.fspath(path)) from None
    return header
