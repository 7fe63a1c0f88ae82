"""A small deterministic detection dataset in darknet format, for the built-in
training demo and for tests.

Four classes of filled shapes (circle, square, triangle, cross) in random
colours, 1 to 4 per image, on textured backgrounds (smooth colour noise,
stripes, grain).  Everything is drawn from ``numpy.random.default_rng((seed,
split, i))`` and written as PNG, so the same seed gives the same bytes.

Layout (paths in the lists are relative to the folder, so darknet itself can
train on it when run from there; both darknets find the labels beside the
images, and darknet_py also resolves them relative to the ``.data`` file)::

    root/synthetic.data   classes, train, valid, names, backup
    root/synthetic.names
    root/train.txt, root/valid.txt
    root/train/000000.png + 000000.txt, ...
    root/valid/...
    root/.synthetic.json  the parameters (the cache key)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from ..files import atomic_write
from ..progress import progress_bar
from .datafile import write_data_file
from .labels import format_labels

CLASSES = ("circle", "square", "triangle", "cross")
DATA_NAME = "synthetic.data"
_STAMP = ".synthetic.json"
_VERSION = 1


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 ``Array[size, size, 3]`` in [0, 255]: smooth noise, stripes, grain."""
    coarse = rng.uniform(0, 255, (4 + int(rng.integers(5)),) * 2 + (3,)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    period = float(rng.uniform(6, 24))
    angle = float(rng.uniform(0, np.pi))
    axis = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    phase = np.float32(np.cos(angle)) * axis[None, :] + np.float32(np.sin(angle)) * axis[:, None]
    img += (np.sin(phase) * np.float32(rng.uniform(10, 40)))[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(8)
    return np.clip(img, 0, 255)


def _shape_points(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Polygon vertices (``Array[K, 2]``) of a square, triangle or cross."""
    if kind == 1:
        base = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * 0.8
    elif kind == 2:
        base = np.array([[0, -1], [0.95, 0.75], [-0.95, 0.75]], np.float64)
    else:
        t = 0.33
        base = np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1],
                         [-t, t], [-1, t], [-1, -t], [-t, -t]], np.float64)
    c, s = np.cos(angle), np.sin(angle)
    rot = base @ np.array([[c, s], [-s, c]])
    return rot * r + np.array([cx, cy])


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image: (uint8 RGB ``Array[size, size, 3]``, labels ``Array[N, 5]``)."""
    img = _background(rng, size)
    boxes: list[tuple[float, float, float, float]] = []
    rows = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(10):
            kind = int(rng.integers(len(CLASSES)))
            r = float(rng.uniform(0.08, 0.22)) * size
            cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
            angle = float(rng.uniform(-0.35, 0.35))
            if kind == 0:
                box = (cx - r, cy - r, cx + r, cy + r)
                pts = None
            else:
                pts = _shape_points(kind, cx, cy, r, angle)
                box = (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
            if all(_iou(box, b) < 0.05 for b in boxes):
                break
        else:
            continue
        colour = rng.uniform(0, 255, 3)
        colour[int(rng.integers(3))] = float(rng.choice([20.0, 235.0]))  # keep it distinct
        colour_t = tuple(float(c) for c in colour)
        if pts is None:
            cv2.circle(img, (int(round(cx * 16)), int(round(cy * 16))), int(round(r * 16)),
                       colour_t, -1, cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour_t, cv2.LINE_AA, shift=4)
        x0, y0, x1, y1 = (float(np.clip(v, 0, size)) for v in box)
        boxes.append(box)
        rows.append((kind, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size,
                     (y1 - y0) / size))
    labels = np.asarray(rows, np.float32).reshape(-1, 5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


def _write_split(folder: Path, split: str, split_id: int, n: int, size: int, seed: int,
                 bar) -> list[str]:
    (folder / split).mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        img, labels = render_image(np.random.default_rng([seed, split_id, i]), size)
        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok
        name = f"{split}/{i:06d}"
        # plain writes: the whole folder is renamed into place once complete
        (folder / f"{name}.png").write_bytes(png.tobytes())
        (folder / f"{name}.txt").write_text(format_labels(labels))
        entries.append(f"{name}.png")
        bar.update(1)
    return entries


def make_synthetic_dataset(root: str | os.PathLike, n_train: int = 800, n_valid: int = 200,
                           size: int = 160, seed: int = 0, progress: bool | None = None) -> Path:
    """Generate (once) the synthetic dataset in ``root``; returns the ``.data`` path.

    A folder already holding this dataset with the same parameters is reused
    as is; one holding anything else is refused (DataError) rather than
    overwritten.  The dataset is built beside ``root`` and renamed into place,
    so concurrent callers (DDP ranks) end up sharing one complete copy.
    ``progress``: a bar on stderr (None: when stderr is a terminal).
    """
    root = Path(root)
    params = {"version": _VERSION, "n_train": n_train, "n_valid": n_valid, "size": size,
              "seed": seed, "classes": list(CLASSES)}
    data_file = root / DATA_NAME
    if _matches(root, params):
        return data_file
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} is not empty and does not hold this synthetic dataset "
                        f"({_STAMP} differs); remove it or choose another folder", str(root))
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with progress_bar(n_train + n_valid, "synthetic dataset", enabled=progress) as bar:
            train = _write_split(tmp, "train", 0, n_train, size, seed, bar)
            valid = _write_split(tmp, "valid", 1, n_valid, size, seed, bar)
        atomic_write(tmp / "train.txt", ("\n".join(train) + "\n").encode())
        atomic_write(tmp / "valid.txt", ("\n".join(valid) + "\n").encode())
        atomic_write(tmp / "synthetic.names", ("\n".join(CLASSES) + "\n").encode())
        write_data_file(tmp / DATA_NAME, len(CLASSES), "train.txt", "valid.txt",
                        "synthetic.names", "backup/")
        atomic_write(tmp / _STAMP, json.dumps(params, sort_keys=True).encode())
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except OSError:
        if _matches(root, params):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return data_file
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return data_file


def _matches(root: Path, params: dict) -> bool:
    try:
        stamp = json.loads((root / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp == params and (root / DATA_NAME).is_file()
