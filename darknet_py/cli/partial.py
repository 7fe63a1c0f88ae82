"""``darknet-py partial CFG WEIGHTS OUT N``: darknet's ``partial`` command.

Writes layers [0, N) of WEIGHTS to OUT (e.g. darknet53.conv.74) with ``seen``
reset to 0 and the header the dialect's darknet writes (pjreddie 0.2.0,
AlexeyAB 0.2.5), so the file equals darknet's own byte for byte.
"""
from __future__ import annotations

import argparse

HELP = "keep the first N layers of a weights file (darknet's partial)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknet-py partial", description=HELP)
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("n", type=int, metavar="N", help="number of leading layers to keep")
    p.add_argument("--dialect", default="auto", choices=["auto", "pjreddie", "alexeyab"],
                   help="which darknet's partial to reproduce (default: auto-detect from the cfg)")
    p.add_argument("--header-version", metavar="V",
                   help="header version to write instead of the dialect's (0.1, 0.2, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..convert import partial
    from ..weights import parse_version

    version = parse_version(args.header_version) if args.header_version else None
    h = partial(args.cfg, args.weights, args.out, args.n, dialect=args.dialect, version=version)
    print(f"{args.out}: layers 0..{args.n - 1} of {args.weights} "
          f"(header {h.major}.{h.minor}.{h.revision}, seen={h.seen})")
    return 0
