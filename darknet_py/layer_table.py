"""darknet's layer table, plus what darknet does not show.

For every layer: index, type, filters, size/stride, input -> output shape and
BFLOPs (as darknet prints them), then the learnable parameter count, and the
byte offset and length of the layer's data in a weights file.  Totals, the
header fields, and whether a given weights file's size fits the cfg exactly
(if not: which layer it runs out at, or how much is left over).

BFLOPs follow darknet's ``l.bflops``: ``[convolutional]`` 2*n*size^2*(c/groups)
*out_h*out_w / 1e9 in both darknets (plus connected/local/deconvolutional as
the layers compute them).  AlexeyAB's darknet also counts pooling
(size^2*c*out_h*out_w / 1e9) and ``[shortcut]`` (out_c*out_h*out_w per added
layer / 1e9) in its ``Total BFLOPS``; pjreddie prints them for no other layer.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from .cfg import Section
from .layers.heads import is_head
from .model import Darknet
from .weights import FileCheck, Header, check_weights, layout

Shape = tuple[int, int, int]


# ---------------------------------------------------------------- BFLOPs

def _pool_bflops(layer) -> float:
    c = layer.in_shape[0]
    _, oh, ow = layer.out_shape
    size = layer.section["size"]
    return size * size * c * oh * ow / 1e9


def _shortcut_bflops(layer) -> float:
    c, h, w = layer.out_shape
    return c * h * w * max(1, len(layer.sources) - 1) / 1e9


#: (dialect, layer type) -> darknet's bflops where it differs from ``layer.flops()``
EXTRA_BFLOPS: dict[tuple[str, str], Callable[..., float]] = {
    ("alexeyab", "maxpool"): _pool_bflops,
    ("alexeyab", "local_avgpool"): _pool_bflops,
    ("alexeyab", "shortcut"): _shortcut_bflops,
}


def bflops(layer, dialect: str) -> float:
    fn = EXTRA_BFLOPS.get((dialect, layer.type))
    return float(fn(layer)) if fn else float(layer.flops())


# ---------------------------------------------------------------- table columns

def _stride(sec: Section) -> str:
    s = sec["stride"]
    sx = sec.get("stride_x", -1)
    sy = sec.get("stride_y", -1)
    sx, sy = (sx if sx > 0 else s), (sy if sy > 0 else s)
    return str(sx) if sx == sy else f"{sx},{sy}"


def _conv(sec: Section, layer) -> tuple[int | None, str, str]:
    k = sec["size"]
    size = f"{k}x{k}/{_stride(sec)}"
    notes = []
    if sec.get("dilation", 1) > 1 and k > 1:
        notes.append(f"dilation {sec['dilation']}")
    if sec.get("groups", 1) > 1:
        notes.append(f"groups {sec['groups']}")
    if sec.get("batch_normalize", 0):
        notes.append("bn")
    if "activation" in sec.options:
        notes.append(sec["activation"])
    return sec["filters"], size, " ".join(notes)


def _pool(sec: Section, layer) -> tuple[int | None, str, str]:
    k = sec["size"]
    return None, f"{k}x{k}/{_stride(sec)}", ""


def _connected(sec: Section, layer) -> tuple[int | None, str, str]:
    return sec["output"], "", sec["activation"]


def _route(sec: Section, layer) -> tuple[int | None, str, str]:
    note = "layers " + ",".join(map(str, layer.sources))
    if sec.get("groups", 1) > 1:
        note += f" group {sec['group_id']}/{sec['groups']}"
    return None, "", note


def _from(sec: Section, layer) -> tuple[int | None, str, str]:
    note = "from " + ",".join(map(str, layer.sources[1:]))
    if sec.get("weights_type", "none") not in ("none", None):
        note += f" weights {sec['weights_type']}"
    return None, "", note


def _upsample(sec: Section, layer) -> tuple[int | None, str, str]:
    s = sec["stride"]
    return None, f"{abs(s)}x" if s > 0 else f"/{abs(s)}", ""


def _reorg(sec: Section, layer) -> tuple[int | None, str, str]:
    return None, f"/{sec['stride']}", "reverse" if sec.get("reverse", 0) else ""


#: section type -> (filters, size/stride text, note) for the table (heads: ``summary_columns()``)
COLUMNS: dict[str, Callable[[Section, object], tuple[int | None, str, str]]] = {
    "convolutional": _conv, "deconvolutional": _conv, "local": _conv,
    "maxpool": _pool, "local_avgpool": _pool, "connected": _connected,
    "route": _route, "shortcut": _from, "scale_channels": _from, "sam": _from,
    "upsample": _upsample, "reorg": _reorg, "reorg3d": _reorg,
}


# ---------------------------------------------------------------- the inspection

@dataclass
class LayerRow:
    index: int
    type: str
    line: int
    filters: int | None
    size: str
    note: str
    input: Shape           # (c, h, w)
    output: Shape
    bflops: float
    params: int            # learnable parameters (tensors with gradients)
    floats: int            # float32 values in the weights file
    offset: int            # byte offset of the layer's data in the weights file
    nbytes: int


@dataclass
class Inspection:
    cfg: str
    dialect: str
    input: Shape
    rows: list[LayerRow]
    header: Header                      # the weights file's, or the one darknet would write
    weights: str | None = None
    check: FileCheck | None = None
    totals: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``exact``, ``partial``, ``truncated``, ``trailing`` or ``no weights``."""
        c = self.check
        if c is None:
            return "no weights"
        if c.ends_inside is not None:
            return "truncated"
        if c.partial:
            return "partial"
        if c.trailing_floats or c.odd_bytes:
            return "trailing"
        return "exact"


def inspect(model: Darknet | str | os.PathLike, weights: str | os.PathLike | None = None, *,
            dialect: str = "auto", width: int | None = None, height: int | None = None) -> Inspection:
    """The layer table of a model (or cfg path), checked against ``weights`` if given."""
    if not isinstance(model, Darknet):
        model = Darknet(model, width=width, height=height, dialect=dialect)
    chk = check_weights(model, weights) if weights is not None else None
    header = chk.header if chk is not None else model.header
    records = chk.records if chk is not None else layout(model, header.size, transposed=header.transposed)
    rows = []
    for layer, rec in zip(model.module_list, records):
        sec = layer.section
        fn = COLUMNS.get(sec.type)
        if is_head(layer):
            filters, size, note = layer.summary_columns()
        else:
            filters, size, note = fn(sec, layer) if fn else (None, "", "")
        params = sum(p.numel() for p in layer.parameters(recurse=True))
        rows.append(LayerRow(layer.index, sec.name or sec.type, sec.line, filters, size, note,
                             tuple(layer.in_shape), tuple(layer.out_shape),
                             bflops(layer, model.dialect), params, rec.floats, rec.offset, rec.nbytes))
    floats = sum(r.floats for r in rows)
    totals = {"layers": len(rows), "params": sum(r.params for r in rows), "floats": floats,
              "bytes": header.size + 4 * floats, "header_bytes": header.size,
              "bflops": sum(r.bflops for r in rows)}
    return Inspection(str(model.cfg.file), model.dialect, tuple(model.input_shape), rows, header,
                      os.fspath(weights) if weights is not None else None, chk, totals)


# ---------------------------------------------------------------- output

def _shape(s: Shape) -> str:
    c, h, w = s
    return f"{w:4d} x{h:4d} x{c:5d}"


def format_table(insp: Inspection) -> str:
    """A darknet-style text table."""
    c, h, w = insp.input
    h_ = insp.header
    lines = [f"cfg: {insp.cfg} ({insp.dialect}), input {w}x{h}x{c}"]
    if insp.weights is not None:
        lines.append(f"weights: {insp.weights}")
    lines.append(f"header: version {h_.major}.{h_.minor}.{h_.revision}, seen {h_.seen} "
                 f"({8 * h_.seen_width}-bit), {h_.size} bytes"
                 + (", [connected] stored transposed" if h_.transposed else "")
                 + ("" if insp.weights is not None else " (the header darknet would write)"))
    lines.append(f"{'layer':>5}  {'type':<15}{'filters':>7}  {'size/strd':<10}"
                 f"{'input':>19}    {'output':<19}{'BFLOPs':>9}{'params':>11}{'offset':>12}"
                 f"{'bytes':>11}  note")
    for r in insp.rows:
        lines.append(f"{r.index:5d}  {r.type:<15}{'' if r.filters is None else r.filters:>7}  "
                     f"{r.size:<10}{_shape(r.input)} -> {_shape(r.output)}"
                     f"{(f'{r.bflops:.3f}' if r.bflops else ''):>9}{r.params:>11}{r.offset:>12}"
                     f"{r.nbytes:>11}  {r.note}".rstrip())
    t = insp.totals
    lines.append(f"total: {t['layers']} layers, {t['params']} parameters, {t['floats']} floats in the "
                 f"file = {t['bytes']} bytes with the {t['header_bytes']}-byte header, "
                 f"{t['bflops']:.3f} BFLOPs")
    if insp.check is not None:
        lines.append(f"file: {insp.check.file_bytes} bytes: {insp.check.summary()}")
    return "\n".join(lines)


def to_json(insp: Inspection) -> dict:
    """Everything the table shows, for machines."""
    out = {"cfg": insp.cfg, "dialect": insp.dialect,
           "input": dict(zip(("c", "h", "w"), insp.input)),
           "header": {**insp.header.as_dict(), "bytes": insp.header.size,
                      "transposed": insp.header.transposed, "from_file": insp.weights is not None},
           "layers": [], "totals": dict(insp.totals), "weights": insp.weights, "file": None}
    for r in insp.rows:
        d = asdict(r)
        d["input"] = dict(zip(("c", "h", "w"), r.input))
        d["output"] = dict(zip(("c", "h", "w"), r.output))
        out["layers"].append(d)
    c = insp.check
    if c is not None:
        inside = None
        if c.ends_inside is not None:
            r = c.ends_inside
            inside = {"layer": r.index, "type": r.type, "offset": r.offset, "floats_needed": r.floats,
                      "floats_left": c.floats_left}
        out["file"] = {"bytes": c.file_bytes, "expected_bytes": c.header.size + 4 * c.floats_needed,
                       "status": insp.status, "layers_in_file": c.layers_in_file,
                       "ends_inside": inside, "trailing_floats": c.trailing_floats,
                       "odd_bytes": c.odd_bytes, "message": c.summary()}
    return out
