"""``darknet-py convert [--cfg CFG] IN OUT``: formats chosen by extension.

``.weights`` (darknet; needs ``--cfg``), ``.pt`` (torch checkpoint with the
state_dict, cfg text and header; read with ``weights_only=True``),
``.safetensors`` (tensors, cfg and header in the metadata), ``.onnx`` (export
only: dynamic batch, the heads' eval outputs, or ``--decode`` for boxes).
``.pt``/``.safetensors`` files written by darknet_py embed their cfg and
checksums of their tensors, verified on reading; NaN/inf parameters are
refused unless ``--allow-nonfinite``.
The darknet header (``seen`` included) is kept unless ``--header-version``
asks for another (``0.1``: 32-bit seen, ``0.2``: 64-bit seen).
"""
from __future__ import annotations

import argparse

HELP = "convert weights between .weights, .pt, .safetensors and export .onnx"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknet-py convert", description=HELP)
    p.add_argument("src", metavar="IN", help="input file (.weights, .pt, .safetensors)")
    p.add_argument("dst", metavar="OUT", help="output file (.weights, .pt, .safetensors, .onnx)")
    p.add_argument("--cfg", help="the cfg (needed for .weights; overrides an embedded cfg)")
    p.add_argument("--dialect", default="auto", choices=["auto", "pjreddie", "alexeyab"],
                   help="darknet dialect of the cfg (default: auto-detect / as embedded)")
    p.add_argument("--header-version", metavar="V",
                   help="write this darknet header version: 0.1 (32-bit seen), 0.2 (64-bit seen), "
                        "or MAJOR.MINOR.REVISION (default: keep the source's)")
    p.add_argument("--decode", action="store_true",
                   help="ONNX: output decoded boxes, scores, objectness instead of the head outputs")
    p.add_argument("--nms", nargs="?", type=float, const=0.45, metavar="IOU",
                   help="ONNX: decoded boxes through NonMaxSuppression in the graph, output "
                        "detections [M, 7] (IoU threshold, default darknet's 0.45)")
    p.add_argument("--thresh", type=float, default=0.25,
                   help="ONNX --nms: keep (box, class) pairs scoring above this (default 0.25)")
    p.add_argument("--fp16", action="store_true", help="ONNX: float16 weights and arithmetic")
    p.add_argument("--dynamic-size", action="store_true",
                   help="ONNX: dynamic input height and width (where the cfg allows)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true",
                   help="ONNX: skip the onnxruntime comparison with torch")
    p.add_argument("--non-strict", action="store_true",
                   help="load .pt/.safetensors even when tensors are missing or unexpected")
    p.add_argument("--allow-trailing", action="store_true",
                   help="ignore floats after the last layer of a .weights file (as darknet does)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load NaN/inf parameters instead of refusing them (a damaged or diverged "
                        "model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..convert import convert
    from ..weights import parse_version

    version = parse_version(args.header_version) if args.header_version else None
    onnx = {"nms": args.nms, "thresh": args.thresh, "fp16": args.fp16,
            "dynamic_size": args.dynamic_size} if args.dst.lower().endswith(".onnx") else {}
    report = convert(args.src, args.dst, cfg=args.cfg, dialect=args.dialect, version=version,
                     decode=args.decode, strict=not args.non_strict,
                     allow_trailing=args.allow_trailing, allow_nonfinite=args.allow_nonfinite,
                     opset=args.opset, check=not args.no_check, **onnx)
    if report.source.missing or report.source.unexpected:
        print(f"warning: {len(report.source.missing)} tensors missing (kept as initialised), "
              f"{len(report.source.unexpected)} unexpected (ignored)")
    print(report)
    return 0
