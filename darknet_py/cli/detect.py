"""``darknet-py detect CFG WEIGHTS IMAGES...`` or ``darknet-py detect MODEL IMAGES...``
``[--names FILE] [--thresh 0.25] [--nms 0.45] [--json OUT] [--save-dir DIR]``

The model is a cfg with its ``.weights`` (or a ``.pt``/``.safetensors`` of the
same network), or one ``.pt``/``.safetensors`` file that ``convert`` wrote (it
holds the cfg): a first argument ending in ``.pt``, ``.pth`` or
``.safetensors`` is such a file.  IMAGES are files, folders (their image
files, sorted) or glob patterns.

Without ``--json`` it prints darknet's lines (``<image>: Predicted in ...``
then ``name: NN%`` per detection, in the order of the cfg's darknet); ``--json OUT`` writes
``[{"image": path, "width", "height", "detections": [{"class_id", "name", "prob",
"box": [x1, y1, x2, y2]}]}]`` (``-`` for stdout); ``--save-dir`` writes annotated
copies.  An image that is missing or unreadable is reported on stderr by name,
once, the others are still processed, and the exit code is 1 if any failed.
Several images show a progress bar on stderr when it is a terminal
(``--quiet``: never).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from ..errors import DarknetError

HELP = "detect objects in images exactly as darknet does"

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm",
              ".jp2", ".gif")


def expand_images(specs: list[str]) -> list[str]:
    """Files as given; a folder -> its image files (sorted); a pattern -> its
    matches (sorted).  A name matching nothing is kept so it is reported."""
    out: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            out.extend(sorted(os.path.join(spec, f) for f in os.listdir(spec)
                              if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(spec, f))))
        elif not os.path.exists(spec) and glob.has_magic(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            out.extend(matches if matches else [spec])
        else:
            out.append(spec)
    return out


def split_inputs(files: list[str]) -> tuple[str, str | None, list[str]]:
    """(model or cfg, weights or None, images) of the positional arguments:
    ``MODEL IMAGES...`` when the first is a ``.pt``/``.safetensors`` file,
    else ``CFG WEIGHTS IMAGES...``.  ValueError when images are missing."""
    from ..detect import is_model_file

    if files[0].lower().endswith(".weights"):
        raise ValueError(f"{files[0]}: a darknet .weights file needs its cfg before it: "
                         f"CFG WEIGHTS IMAGES...")
    if is_model_file(files[0]):
        model, weights, images = files[0], None, files[1:]
    else:
        model, weights, images = files[0], (files[1] if len(files) > 1 else None), files[2:]
    if not images:
        raise ValueError("no IMAGES given: expected CFG WEIGHTS IMAGES... or MODEL IMAGES... "
                         "(MODEL a .pt/.safetensors that holds its cfg)")
    return model, weights, images


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="darknet-py detect", description=HELP,
        usage="darknet-py detect [options] (CFG WEIGHTS | MODEL) IMAGES...\n"
              "       darknet-py detect --engine ENGINE MODEL.onnx IMAGES...")
    p.add_argument("files", nargs="+", metavar="FILES",
                   help="CFG and WEIGHTS (.weights, .pt or .safetensors), or one MODEL "
                        "(.pt/.safetensors written by convert, cfg inside); then image files, "
                        "folders or glob patterns")
    p.add_argument("--engine", default="torch", choices=["torch", "onnxruntime", "opencv", "openvino"],
                   help="run an exported graph instead: detect --engine E MODEL.onnx IMAGES...")
    p.add_argument("--names", help="class names file, one per line (e.g. coco.names)")
    p.add_argument("--thresh", type=float, default=0.25, help="probability threshold (default 0.25)")
    p.add_argument("--hier", type=float, default=0.5, help="hierarchical threshold (default 0.5)")
    p.add_argument("--nms", type=float, default=0.45, help="NMS threshold, 0 disables (default 0.45)")
    p.add_argument("--nms-kind", choices=["default", "greedynms", "diounms", "cornersnms"],
                   help="override the cfg's (AlexeyAB) nms_kind")
    p.add_argument("--resize", choices=["letterbox", "resize"],
                   help="input resizing (default: darknet's choice for the cfg)")
    p.add_argument("--json", metavar="OUT", help="write the detections as JSON ('-' for stdout)")
    p.add_argument("--save-dir", metavar="DIR", help="write annotated images into DIR")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--dialect", default="auto", choices=["auto", "pjreddie", "alexeyab"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="network precision: fp32 (darknet's numbers, default), bf16 (CPU with "
                        "AVX512_BF16/AMX, or CUDA), fp16 (CUDA); refused where the hardware lacks it")
    return p


def _draw(path: str, res, save_dir: str) -> None:
    """An annotated copy (boxes, names, probabilities) under ``save_dir``."""
    import cv2

    from ..image import load_image
    from ..files import atomic_write

    img = load_image(path)[:, :, ::-1].copy()
    thick = max(1, int(img.shape[0] * 0.006))
    groups: dict[tuple, list] = {}  # one box per darknet detection, its classes in one label
    for d in res.detections:
        groups.setdefault(tuple(d.box), []).append(d)
    for box, ds in groups.items():
        hue = (ds[0].class_id * 123457) % 180
        color = cv2.cvtColor(np.uint8([[[hue, 200, 255]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
        label = ", ".join(f"{d.name} {d.prob:.2f}" for d in ds)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = max(y1, th + base)
        cv2.rectangle(img, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(img, label, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    base_name = os.path.basename(path)
    stem, ext = os.path.splitext(base_name)
    if ext.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
        ext = ".png"
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise OSError(f"cannot encode {base_name}")
    atomic_write(os.path.join(save_dir, stem + ext), buf.tobytes())


def _report(res, dialect: str, args: argparse.Namespace) -> bool:
    """darknet's lines for one image (unless ``--json``), its annotated copy
    (``--save-dir``); an image that failed is one line on stderr.  False on failure."""
    from ..progress import echo

    if not res.ok:
        echo(f"darknet-py detect: {res.error}", err=True)
        return False
    if args.json is None:
        if dialect == "alexeyab":
            echo(f"{res.image}: Predicted in {res.seconds * 1000:.6f} milli-seconds.")
        else:
            echo(f"{res.image}: Predicted in {res.seconds:.6f} seconds.")
        for d in res.detections:
            echo(f"{d.name}: {d.prob * 100:.0f}%")
    if args.save_dir:
        try:
            _draw(res.image, res, args.save_dir)
        except (OSError, DarknetError) as exc:
            echo(f"darknet-py detect: {res.image}: cannot save annotated image: {exc}", err=True)
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.engine != "torch":
            if len(args.files) < 2:
                raise ValueError("no IMAGES given: expected --engine E MODEL.onnx IMAGES...")
            model_file, weights, specs = args.files[0], None, args.files[1:]
        else:
            model_file, weights, specs = split_inputs(args.files)
    except ValueError as exc:
        parser.error(str(exc))
    import warnings

    from ..cfg import UnusedOptionWarning
    from ..detect import Detector, load_detector_model, read_names
    from ..files import atomic_write
    from ..progress import progress_bar

    names = read_names(args.names) if args.names else None
    if args.engine != "torch":   # MODEL.onnx IMAGES...: see darknet_py/engines.py
        from ..engines import detector
        det = detector(args.engine, model_file, names=names, thresh=args.thresh, hier_thresh=args.hier,
                       nms=args.nms, resize=args.resize, nms_kind=args.nms_kind, batch_size=args.batch)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedOptionWarning)
            model = load_detector_model(model_file, weights, dialect=args.dialect)
        det = Detector(model, names=names, thresh=args.thresh, hier_thresh=args.hier, nms=args.nms,
                       resize=args.resize, nms_kind=args.nms_kind, device=args.device,
                       batch_size=args.batch, precision=args.precision)
    paths = expand_images(specs)
    if not paths:
        print("darknet-py detect: no images found", file=sys.stderr)
        return 1
    bar = progress_bar(len(paths), "detect", enabled=False if args.quiet or len(paths) < 2 else None)
    results, failed = [], 0
    for start in range(0, len(paths), det.batch_size):  # lines come out as images are done
        chunk = det(paths[start:start + det.batch_size])
        results.extend(chunk)
        failed += sum(not _report(res, det.post.dialect, args) for res in chunk)
        bar.update(len(chunk))
    bar.close()
    if args.json is not None:
        text = json.dumps([r.to_json() for r in results if r.ok], indent=1)
        if args.json == "-":
            print(text)
        else:
            atomic_write(args.json, (text + "\n").encode())
    if failed:
        print(f"darknet-py detect: {failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0
