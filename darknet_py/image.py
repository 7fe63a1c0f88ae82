"""Images the way darknet sees them: loading, its bilinear resize, letterboxing.

* :func:`load_image` reads a file with OpenCV as ``uint8`` RGB ``[H, W, 3]``
  (darknet uses stb_image; both decode PNG identically, JPEG decoders may
  differ by a few levels).
* :func:`to_float` is darknet's ``float(v) / 255.`` (a true division).
* :func:`resize_image` is darknet's own separable bilinear ``resize_image``
  (first along x for every source row, then along y), which is not
  ``cv2.INTER_LINEAR``: sample positions are ``c * (src - 1) / (dst - 1)`` and
  the last column / row copies the last source pixel.
* :func:`letterbox_image` is ``letterbox_image`` of both darknets: the integer
  new-size rule, :func:`resize_image`, a 0.5 canvas.
* :func:`prepare` picks letterbox or plain resize (``RESIZE_MODES``).

Tensors are ``[C, H, W]`` float32 on any device.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

# float32 of darknet's ``(float)v / 255.`` (division in double, then rounded)
_TO_FLOAT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of an image file (EXIF orientation ignored, as
    stb_image does; grey images are replicated, alpha is dropped).

    Raises :class:`DataError` naming the file when it is missing or unreadable.
    """
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such image file")
    data = np.fromfile(path, dtype=np.uint8)  # cv2.imread cannot report why it failed
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size else None
    if img is None:
        raise DataError(f"{path}: not a readable image (unknown format or corrupt data)")
    return np.ascontiguousarray(img[:, :, ::-1])


def to_float(image: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """``uint8 [H, W, 3]`` -> ``Tensor[3, H, W]`` float32 equal to darknet's
    ``(float)v / 255.``."""
    if isinstance(image, Tensor):
        image = image.cpu().numpy()
    if image.dtype != np.uint8 or image.ndim != 3:
        raise DataError(f"expected a uint8 [H, W, C] image, got {image.dtype} {image.shape}")
    t = torch.from_numpy(_TO_FLOAT[np.ascontiguousarray(image.transpose(2, 0, 1))])
    return t.to(device) if device is not None else t


def _axis_weights(src: int, dst: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Darknet's sample index (``int``) and fraction (float32) for each output
    position along one axis: ``s = i * ((float)(src-1) / (dst-1))``."""
    if dst == 1:  # darknet divides by zero here; position 0 is what it means
        return torch.zeros(1, dtype=torch.long, device=device), torch.zeros(1, device=device)
    scale = np.float32(src - 1) / np.float32(dst - 1)
    pos = np.arange(dst, dtype=np.float32) * scale
    idx = pos.astype(np.int64)  # C's (int) truncation
    frac = pos - idx.astype(np.float32)
    return torch.from_numpy(idx).to(device), torch.from_numpy(frac).to(device)


def resize_image(im: Tensor, w: int, h: int) -> Tensor:
    """Darknet's ``resize_image``: ``Tensor[C, H, W]`` -> ``Tensor[C, h, w]``
    (float32 arithmetic in darknet's order, so the result is bit-identical)."""
    if w <= 0 or h <= 0:
        raise DataError(f"cannot resize to {w}x{h}")
    im = im.float()
    c, src_h, src_w = im.shape
    dev = im.device
    # pass 1: along x, for every source row
    if src_w == 1:
        part = im[:, :, :1].expand(c, src_h, w).clone()
    else:
        ix, dx = _axis_weights(src_w, w, dev)
        ix1 = torch.clamp(ix + 1, max=src_w - 1)
        part = (1 - dx) * im[:, :, ix] + dx * im[:, :, ix1]
        part[:, :, w - 1] = im[:, :, src_w - 1]
    # pass 2: along y; the last row (and a 1-row source) gets no second term
    iy, dy = _axis_weights(src_h, h, dev)
    out = (1 - dy)[None, :, None] * part[:, iy, :]
    if src_h > 1 and h > 1:
        rows = slice(0, h - 1)
        iy1 = torch.clamp(iy[rows] + 1, max=src_h - 1)
        out[:, rows, :] = out[:, rows, :] + dy[rows][None, :, None] * part[:, iy1, :]
    return out


def letterbox_size(im_w: int, im_h: int, net_w: int, net_h: int) -> tuple[int, int]:
    """Darknet's integer ``(new_w, new_h)`` of the image inside the letterbox."""
    if np.float32(net_w) / np.float32(im_w) < np.float32(net_h) / np.float32(im_h):
        return net_w, (im_h * net_w) // im_w
    return (im_w * net_h) // im_h, net_h


def letterbox_image(im: Tensor, w: int, h: int) -> Tensor:
    """Darknet's ``letterbox_image``: ``Tensor[C, H, W]`` -> ``Tensor[C, h, w]``,
    the resized image centred on a canvas of 0.5."""
    c, src_h, src_w = im.shape
    new_w, new_h = letterbox_size(src_w, src_h, w, h)
    resized = resize_image(im, new_w, new_h)
    boxed = torch.full((c, h, w), 0.5, dtype=torch.float32, device=im.device)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    # embed_image ignores pixels that fall outside the canvas
    x0, y0 = max(dx, 0), max(dy, 0)
    x1, y1 = min(dx + new_w, w), min(dy + new_h, h)
    boxed[:, y0:y1, x0:x1] = resized[:, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return boxed


def plain_resize(im: Tensor, w: int, h: int) -> Tensor:
    """AlexeyAB's ``letter_box=0`` path: the whole image stretched to ``w x h``."""
    return resize_image(im, w, h)


#: preprocessing name -> function(image [C, H, W], net_w, net_h) -> [C, net_h, net_w]
RESIZE_MODES: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "letterbox": letterbox_image,
    "resize": plain_resize,
}


def default_resize_mode(dialect: str, letter_box: int = 0) -> str:
    """What darknet's detector does: pjreddie always letterboxes; AlexeyAB
    letterboxes only with ``[net] letter_box=1``."""
    if dialect == "pjreddie" or letter_box:
        return "letterbox"
    return "resize"


def prepare(im: Tensor, net_w: int, net_h: int, mode: str = "letterbox") -> Tensor:
    """``Tensor[C, H, W]`` float -> the network input ``Tensor[C, net_h, net_w]``."""
    try:
        fn = RESIZE_MODES[mode]
    except KeyError:
        raise DataError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}") from None
    return fn(im, net_w, net_h)
