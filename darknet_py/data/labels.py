"""YOLO txt labels: where darknet looks for them, and reading them strictly.

A label file has one object per line, ``class cx cy w h`` with the box centre
and size relative to the image.  Darknet reads it with ``fscanf`` and silently
stops at the first malformed field; here every line is checked and a bad one is
a :class:`~darknet_py.errors.DataError` naming the file and the line.

The label path comes from the image path by each darknet's own rule
(:data:`LABEL_RULES`):

* pjreddie (``fill_truth_detection``): the first ``images``, then ``JPEGImages``,
  then ``raw`` anywhere in the path becomes ``labels``; then the first ``.jpg``,
  ``.png``, ``.JPG``, ``.JPEG`` becomes ``.txt``.
* AlexeyAB (``replace_image_to_label``): only the folders ``/images/train2017/``,
  ``/images/val2017/``, ``/images/train2014/``, ``/images/val2014/`` (also with
  backslashes) become ``/labels/...`` and ``/JPEGImages/`` becomes ``/labels/``;
  surrounding blanks are trimmed; the extension (``.jpg .JPG .jpeg .JPEG .png
  .PNG .bmp .BMP .ppm .PPM .tiff .TIFF``) is replaced by ``.txt`` only at the
  end of the path.  So ``data/obj/1.jpg`` has its label beside it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError


def _replace_first(text: str, old: str, new: str) -> str:
    """darknet's ``find_replace``: only the first occurrence."""
    return text.replace(old, new, 1)


def pjreddie_label_path(image_path: str) -> str:
    p = image_path
    for old in ("images", "JPEGImages", "raw"):
        p = _replace_first(p, old, "labels")
    for ext in (".jpg", ".png", ".JPG", ".JPEG"):
        p = _replace_first(p, ext, ".txt")
    return p


_AB_FOLDERS = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)
_AB_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".bmp", ".BMP",
                  ".ppm", ".PPM", ".tiff", ".TIFF")


def alexeyab_label_path(image_path: str) -> str:
    p = image_path
    for old, new in _AB_FOLDERS:
        p = _replace_first(p, old, new)
    p = p.strip(" \t")
    for ext in _AB_EXTENSIONS:
        if p.endswith(ext):
            p = p[: -len(ext)] + ".txt"
    return p


#: dialect -> image path -> label path (darknet's own string rules)
LABEL_RULES: dict[str, Callable[[str], str]] = {
    "pjreddie": pjreddie_label_path,
    "alexeyab": alexeyab_label_path,
}


def label_path(image_path: str, dialect: str = "alexeyab") -> str:
    """The label file darknet ``dialect`` reads for ``image_path`` (a string rule
    applied to the path as written in the list file).  A DataError when the
    rule cannot produce a ``.txt`` path (unsupported image extension)."""
    try:
        rule = LABEL_RULES[dialect]
    except KeyError:
        raise DataError(f"unknown dialect {dialect!r}; expected one of "
                        f"{', '.join(LABEL_RULES)}") from None
    out = rule(image_path)
    if not out.endswith(".txt") or out == image_path:
        raise DataError(f"cannot infer the label file of {image_path!r} with {dialect}'s rule "
                        f"(unsupported image extension?)")
    return out


# ------------------------------------------------------------------ reading
#: label array columns
CLASS, CX, CY, W, H = range(5)


def parse_labels(text: str, classes: int | None, file: str = "<labels>") -> np.ndarray:
    """``Array[N, 5]`` float32 rows (class, cx, cy, w, h) from label text.

    Every non-blank line must have exactly five numeric fields; the class an
    integer in ``[0, classes)`` (when ``classes`` is given), ``cx cy w h``
    finite and within ``[0, 1]``.  Anything else is a DataError naming
    ``file`` and the line.
    """
    rows: list[tuple[float, float, float, float, float]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"expected 5 fields 'class cx cy w h', got {len(fields)}: "
                            f"{raw.strip()!r}", file, lineno)
        try:
            cls = int(fields[0])
        except ValueError:
            raise DataError(f"class {fields[0]!r} is not an integer", file, lineno) from None
        if cls < 0 or (classes is not None and cls >= classes):
            upto = f"0..{classes - 1} (classes={classes})" if classes is not None else ">= 0"
            raise DataError(f"class {cls} is out of range {upto}", file, lineno)
        values = []
        for name, text_value in zip(("cx", "cy", "w", "h"), fields[1:]):
            try:
                v = float(text_value)
            except ValueError:
                raise DataError(f"{name} {text_value!r} is not a number", file, lineno) from None
            if not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise DataError(f"{name}={text_value} is outside [0, 1] (labels are relative to "
                                f"the image size)", file, lineno)
            values.append(v)
        rows.append((float(cls), *values))
    if not rows:
        return np.zeros((0, 5), np.float32)
    return np.asarray(rows, dtype=np.float32)


def read_labels(path: str | os.PathLike, classes: int | None) -> np.ndarray:
    """Read and validate a label file (see :func:`parse_labels`)."""
    file = str(path)
    try:
        with open(file, "r", encoding="utf-8", errors="strict") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise DataError("not a text label file", file) from None
    except OSError as exc:
        raise DataError(f"cannot read label file: {exc.strerror}", file) from None
    return parse_labels(text, classes, file)


def format_labels(labels: np.ndarray) -> str:
    """Label text for ``Array[N, 5]`` (class, cx, cy, w, h), darknet's ``%d %f %f %f %f``."""
    return "".join(f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n" for r in labels)


# ------------------------------------------------------------------ items
@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset: the path as listed, the files to open."""

    entry: str          # as written in the list file (the label rule works on this)
    image: Path
    label: Path | None  # None for sources without label files (COCO json)


def resolve_entry(entry: str, bases: list[Path]) -> tuple[Path, Path | None]:
    """Open ``entry`` as darknet would (relative to the current directory), else
    relative to the first of ``bases`` where it exists; returns (path, base used)."""
    p = Path(entry)
    if p.is_absolute() or p.exists():
        return p, None
    for base in bases:
        if (base / p).exists():
            return base / p, base
    return p, None


def list_items(entries: list[str], dialect: str, bases: list[Path]) -> list[ImageItem]:
    """ImageItems for list-file entries: the label found by the dialect's rule on
    the entry as written, resolved against the same base as its image."""
    items = []
    for e in entries:
        image, base = resolve_entry(e, bases)
        lab = Path(label_path(e, dialect))
        items.append(ImageItem(e, image, lab if base is None else base / lab))
    return items
