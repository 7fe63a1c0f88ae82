"""Where the images and their boxes come from: darknet list files with YOLO txt
labels, or a COCO json (through pycocotools).

Either way the result is a :class:`LabeledImages`: image paths and, per image,
``Array[N, 5]`` float32 rows (class, cx, cy, w, h) relative to the image, read
and validated once, up front, so a bad label stops the run before training
with its file and line (DataError).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datafile import DataConfig, read_list_lines
from .labels import list_items, read_labels


@dataclass
class LabeledImages:
    """Images with their boxes.  ``sizes`` ((w, h) per image) when the source
    knows them without decoding the image (COCO)."""

    images: list[Path]
    labels: list[np.ndarray]
    entries: list[str] = field(default_factory=list)
    missing_labels: list[Path] = field(default_factory=list)
    sizes: list[tuple[int, int]] | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)


def from_list(list_file: str | os.PathLike, classes: int, *, dialect: str = "alexeyab",
              bases: list[Path] | None = None) -> LabeledImages:
    """A darknet image list: each image's label file by ``dialect``'s path rule.

    Relative entries are opened relative to the current directory, else the
    folders in ``bases`` (default: the list file's folder).  A missing label
    file means "no objects" (AlexeyAB's behaviour, used for negative images)
    and is recorded in ``missing_labels``; a malformed one is a DataError.
    """
    list_file = Path(list_file)
    if bases is None:
        bases = [list_file.resolve().parent]
    numbered = read_list_lines(list_file)
    if not numbered:
        raise DataError("the image list is empty", str(list_file))
    entries = [e for _, e in numbered]
    try:
        items = list_items(entries, dialect, bases)
    except DataError as exc:  # name the list line of the entry
        bad = next(n for n, e in numbered if e in str(exc))
        raise DataError(str(exc), str(list_file), bad) from None
    labels, missing = [], []
    for item in items:
        assert item.label is not None
        if item.label.is_file():
            labels.append(read_labels(item.label, classes))
        else:
            missing.append(item.label)
            labels.append(np.zeros((0, 5), np.float32))
    return LabeledImages([it.image for it in items], labels, entries, missing)


def from_data_config(data: DataConfig, split: str = "train", *,
                     dialect: str = "alexeyab") -> LabeledImages:
    """The ``train`` or ``valid`` list of a ``.data`` file (entries resolved
    against the current directory, the list's folder, then the .data folder)."""
    list_file = data.list_file(split)
    return from_list(list_file, data.classes, dialect=dialect,
                     bases=[list_file.resolve().parent, data.folder])


def from_coco(annotations: str | os.PathLike, image_dir: str | os.PathLike, *,
              include_crowd: bool = False) -> LabeledImages:
    """A COCO detection json.  Classes are the json's categories in increasing
    id order (class k = k-th smallest category id, ``names`` their names);
    boxes are clipped to the image and converted to relative centre format;
    crowd regions are skipped unless ``include_crowd``."""
    from pycocotools.coco import COCO
    file = str(annotations)
    if not os.path.isfile(file):
        raise DataError("COCO annotation file not found", file)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(file)
    except Exception as exc:  # pycocotools raises bare exceptions on bad json
        raise DataError(f"cannot read COCO annotations: {exc}", file) from None
    cat_ids = sorted(coco.getCatIds())
    cls_of = {cid: k for k, cid in enumerate(cat_ids)}
    names = [coco.loadCats(cid)[0]["name"] for cid in cat_ids]
    images, labels, sizes = [], [], []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        iw, ih = float(info["width"]), float(info["height"])
        if iw <= 0 or ih <= 0:
            raise DataError(f"image id {img_id} has size {iw}x{ih}", file)
        rows = []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if ann["category_id"] not in cls_of:
                raise DataError(f"annotation {ann.get('id')} has unknown category "
                                f"{ann['category_id']}", file)
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            x0, y0 = min(max(x, 0.0), iw), min(max(y, 0.0), ih)
            x1, y1 = min(max(x + bw, 0.0), iw), min(max(y + bh, 0.0), ih)
            if x1 <= x0 or y1 <= y0:
                continue
            rows.append((cls_of[ann["category_id"]], (x0 + x1) / 2 / iw, (y0 + y1) / 2 / ih,
                         (x1 - x0) / iw, (y1 - y0) / ih))
        images.append(Path(image_dir) / info["file_name"])
        labels.append(np.asarray(rows, np.float32).reshape(-1, 5))
        sizes.append((int(iw), int(ih)))
    return LabeledImages(images, labels, [str(p) for p in images], [], sizes, names)
