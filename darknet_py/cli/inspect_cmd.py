"""``darknet-py inspect CFG [WEIGHTS] [--json]``: darknet's layer table, plus
parameter counts, each layer's byte offset and length in the weights file,
totals, the header, and whether the file's size fits the cfg exactly.

Exit code 0, or 1 when WEIGHTS does not fit the cfg (ends inside a layer, or
has data left over); a partial file (first layers only) is reported, exit 0.
"""
from __future__ import annotations

import argparse
import json

HELP = "show the layer table, parameters and weights-file layout of a cfg"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknet-py inspect", description=HELP)
    p.add_argument("cfg")
    p.add_argument("weights", nargs="?", help="a darknet .weights file to check against the cfg")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--dialect", default="auto", choices=["auto", "pjreddie", "alexeyab"])
    p.add_argument("--width", type=int, help="network width instead of the cfg's")
    p.add_argument("--height", type=int, help="network height instead of the cfg's")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..layer_table import format_table, inspect, to_json

    insp = inspect(args.cfg, args.weights, dialect=args.dialect, width=args.width,
                   height=args.height)
    print(json.dumps(to_json(insp), indent=1) if args.json else format_table(insp))
    return 1 if insp.status in ("truncated", "trailing") else 0
