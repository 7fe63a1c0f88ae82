"""``darknet-py map DATA CFG WEIGHTS`` or ``darknet-py map DATA MODEL``
``[--points N] [--iou-thresh 0.5] [--thresh 0.005]``

AlexeyAB's ``darknet detector map``: the model runs over the ``valid`` list of
the ``.data`` file (labels found by the cfg's darknet's label path rule), and
per-class AP and mAP are printed as AlexeyAB prints them, followed by COCO's
AP, AP50, AP75, APs/m/l computed by pycocotools on the same detections.
``--points`` 0 (area under the curve, default), 11 (VOC 2007) or 101 (COCO).
The model is a cfg with its ``.weights``/``.pt``/``.safetensors``, or one
``.pt``/``.safetensors`` that holds its cfg (as ``convert`` writes it).  A
progress bar shows on stderr when it is a terminal (``--quiet``: never).
"""
from __future__ import annotations

import argparse
import json
import sys

HELP = "per-class AP and mAP over the valid list (AlexeyAB's detector map) + COCO AP"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="darknet-py map", description=HELP,
                                usage="darknet-py map [options] DATA (CFG WEIGHTS | MODEL)")
    p.add_argument("data", help="darknet .data file (classes, valid, names)")
    p.add_argument("model", nargs="+", metavar="MODEL",
                   help="CFG and WEIGHTS (.weights, .pt or .safetensors), or one .pt/.safetensors "
                        "written by convert (cfg inside)")
    p.add_argument("--points", type=int, default=0, choices=[0, 11, 101],
                   help="0: area under the PR curve (default), 11: VOC2007, 101: COCO")
    p.add_argument("--iou-thresh", type=float, default=0.5,
                   help="IoU for a detection to match a truth (default 0.5)")
    p.add_argument("--thresh", type=float, default=0.005,
                   help="detection probability threshold (default 0.005, as AlexeyAB's map)")
    p.add_argument("--conf-thresh", type=float, default=0.25,
                   help="probability for the TP/FP/precision/recall lines (AlexeyAB's -thresh, 0.25)")
    p.add_argument("--no-coco", action="store_true", help="skip the pycocotools metrics")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON ('-' for stdout)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=2, help="image decoding threads (default 2)")
    p.add_argument("--dialect", default="auto", choices=["auto", "pjreddie", "alexeyab"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if len(args.model) > 2:
        parser.error(f"expected DATA CFG WEIGHTS or DATA MODEL, got {len(args.model) + 1} files")
    from ..data.datafile import parse_data_file
    from ..data.sources import from_list
    from ..detect import load_detector_model
    from ..errors import DataError
    from ..metrics import evaluate_model, format_coco_report, format_map_report

    data = parse_data_file(args.data)
    names = data.names_list()
    model = load_detector_model(*args.model, dialect=args.dialect)
    heads = [model.module_list[i] for i in model.heads]
    if not heads:
        raise DataError(f"{args.model[0]}: the network has no detection layer")
    if heads[-1].classes != data.classes:
        raise DataError(f"{data.setting('classes')} but the cfg's last detection layer has "
                        f"classes={heads[-1].classes}", args.data)
    valid_list = data.list_file("valid")
    bases = [valid_list.resolve().parent, data.folder]
    source = from_list(valid_list, data.classes, dialect=model.dialect, bases=bases)
    difficult = None
    if data.difficult:
        dif_list = data.resolve(data.difficult)
        difficult = from_list(dif_list, data.classes, dialect=model.dialect,
                              bases=[dif_list.resolve().parent, data.folder])
        if len(difficult) != len(source):
            raise DataError(f"the difficult list has {len(difficult)} images, the valid list "
                            f"{len(source)}", str(dif_list))
    print(f"\n calculation mAP (mean average precision) over {len(source)} images...", flush=True)
    ev = evaluate_model(model, source, thresh=args.thresh, iou_thresh=args.iou_thresh,
                        points=args.points, conf_thresh=args.conf_thresh, difficult=difficult,
                        coco=not args.no_coco, device=args.device, batch_size=args.batch,
                        workers=args.workers, progress=not args.quiet and sys.stderr.isatty())
    if source.missing_labels:
        print(f" {len(source.missing_labels)} images have no label file (counted as no objects), "
              f"e.g. {source.missing_labels[0]}", file=sys.stderr)
    for path in ev.failed:  # one line per image, as detect reports them
        print(f"darknet-py map: {path}: could not be loaded (skipped)", file=sys.stderr)
    if ev.failed:
        print(f" {len(ev.failed)} of {len(source)} images could not be loaded and were skipped",
              file=sys.stderr)
    print(format_map_report(ev.result, names))
    if ev.coco is not None:
        print(format_coco_report(ev.coco))
    print(f"Total Detection Time: {ev.seconds:.1f} Seconds")
    if args.json:
        out = {"map": ev.result.map, "ap": {n: float(a) for n, a in zip(names, ev.result.ap)},
               "points": args.points, "iou_thresh": args.iou_thresh,
               "precision": ev.result.precision, "recall": ev.result.recall, "f1": ev.result.f1,
               "coco": ev.coco, "images": ev.images, "failed": ev.failed}
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            from ..files import atomic_write
            atomic_write(args.json, text.encode())
    return 1 if ev.failed else 0
