"""``convert`` and ``partial``: a darknet model from one file format into another, bit for bit.

The formats are by extension: ``.weights``, ``.pt``, ``.safetensors`` (their
readers and writers are :mod:`darknet_py.formats`) and ``.onnx``, export only
(:func:`export_onnx`: dynamic batch, the head outputs as the model returns
them in eval mode, or decoded boxes, :class:`BoxDecoder`).

The header (``seen`` included) and the cutoff travel with the tensors, so
``.weights -> .pt/.safetensors -> .weights`` gives back the same bytes.
:func:`partial` is darknet's ``partial`` command.  Every file is written
atomically.  The names of :mod:`darknet_py.formats` stay importable from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from . import formats
from .errors import ConvertError, WeightsError
from .formats import (FORMAT, FORMAT_VERSION, READERS, LoadInfo,  # noqa: F401 (the old names)
                      _ext, _write_error, load_darknet, load_model, load_pt, load_safetensors,
                      load_state, save_pt, save_safetensors)
from .model import Darknet
from .optional import require
from .weights import DEFAULT_VERSION, Header, LoadReport


from .onnx_export import (  # noqa: F401  (re-exported: the ONNX code lives there)
    BoxDecoder, _Outputs,
    TeacherForced, _onnx_bytes, _ort_run, _rel, _layer_name, _all_outputs,
    _probe_layers, _first_line, OnnxReport, export_onnx, _check_onnx, exact_arithmetic_gaps, _save_onnx)

WRITERS: dict[str, Callable[..., object]] = {**formats.WRITERS, ".onnx": _save_onnx}
#: output extension -> (optional module, what needs it): checked before any work is done
NEEDS: dict[str, tuple[str, str]] = {".onnx": ("onnx", "ONNX export")}


@dataclass
class ConvertReport:
    source: LoadReport
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
            allow_trailing: bool = False, allow_nonfinite: bool = False, opset: int = 17,
            check: bool = True, **export) -> ConvertReport:
    """Convert between .weights, .pt, .safetensors (and export .onnx), by extension.

    The header (``seen`` included) is kept unless ``version`` asks for another;
    a partial source stays partial.  NaN/inf parameters are refused unless
    ``allow_nonfinite``.  ``export``: the ONNX options of :func:`export_onnx`
    (``nms``, ``thresh``, ``fp16``, ``dynamic_size``).
    """
    writer = WRITERS.get(_ext(dst))
    if writer is None:
        raise ConvertError(f"{os.fspath(dst)}: unknown output extension {_ext(dst)!r}; expected one "
                           f"of {', '.join(sorted(WRITERS))}")
    if _ext(dst) in NEEDS:
        require(*NEEDS[_ext(dst)])
    model, info = load_model(src, cfg=cfg, dialect=dialect, strict=strict,
                             allow_trailing=allow_trailing, allow_nonfinite=allow_nonfinite)
    result = writer(model, dst, version=version, cutoff=info.cutoff, decode=decode, opset=opset,
                    check=check, **export)
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
