"""Pixel operations of darknet's detection data loaders, on numpy HWC RGB images.

Two families, as the two darknets do it:

* pjreddie works in float32 [0, 1]: ``place_image`` (bilinear, no half-pixel
  offset, samples beyond the source read 0) onto a 0.5 canvas, then
  ``distort_hsv_float`` (hue added in [0, 1) turns and wrapped, saturation and
  value scaled, result clipped).
* AlexeyAB works on the uint8 OpenCV image: ``crop_resize_uint8`` (the crop
  outside the image is filled with the image's mean colour, then
  ``cv::resize`` INTER_LINEAR), ``cv::flip``, and ``distort_hsv_uint8`` on
  OpenCV's 8-bit HSV (hue + 179*dhue and the scalings saturate at 0..255).

Interpolation goes through OpenCV (fast, fixed-point weights), so pixel values
can differ from darknet's float code in the last bits; the geometry (which
source pixel lands where) is darknet's.  Files are read by
:func:`darknet_py.image.load_image`, the loader detection and evaluation use.
"""
from __future__ import annotations

import cv2
import numpy as np


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 -> float32 ``v / 255`` (darknet's conversion)."""
    return img.astype(np.float32) / np.float32(255.0)


def place_image(img: np.ndarray, nw: int, nh: int, dx: int, dy: int,
                canvas: np.ndarray) -> np.ndarray:
    """pjreddie's ``place_image``: ``img`` (float32) scaled to ``nw x nh`` and
    drawn at ``(dx, dy)`` on (a copy of) ``canvas``; canvas pixel (X, Y) inside
    the placed rectangle samples the source at ((X-dx)*W/nw, (Y-dy)*H/nh)."""
    out = canvas.copy()
    ch, cw = canvas.shape[:2]
    oh, ow = img.shape[:2]
    if nw <= 0 or nh <= 0:
        return out
    sx, sy = ow / nw, oh / nh
    m = np.array([[sx, 0.0, -dx * sx], [0.0, sy, -dy * sy]], np.float64)
    warped = cv2.warpAffine(img, m, (cw, ch), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0))
    x0, x1 = max(dx, 0), min(dx + nw, cw)
    y0, y1 = max(dy, 0), min(dy + nh, ch)
    if x0 < x1 and y0 < y1:
        out[y0:y1, x0:x1] = warped[y0:y1, x0:x1]
    return out


def distort_hsv_float(img: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """pjreddie's ``distort_image`` on float32 RGB: hue + ``dhue`` (in turns,
    wrapped into [0, 1]), saturation * ``dsat``, value * ``dexp``, clipped."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0] / np.float32(360.0) + np.float32(dhue)
    hue = np.where(hue > 1, hue - 1, hue)
    hue = np.where(hue < 0, hue + 1, hue)
    hsv[..., 0] = hue * np.float32(360.0)
    hsv[..., 1] *= np.float32(dsat)
    hsv[..., 2] *= np.float32(dexp)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def distort_hsv_uint8(img: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """AlexeyAB's colour jitter on uint8 RGB through OpenCV's 8-bit HSV (hue
    0..179): s*dsat, v*dexp, h + 179*dhue, each rounded and saturated to 0..255."""
    if dsat == 1 and dexp == 1 and dhue == 0:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float64)
    hsv[..., 1] *= dsat
    hsv[..., 2] *= dexp
    hsv[..., 0] += 179.0 * dhue
    hsv = np.clip(np.rint(hsv), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def crop_resize_uint8(img: np.ndarray, pleft: int, ptop: int, swidth: int, sheight: int,
                      w: int, h: int) -> np.ndarray:
    """AlexeyAB's crop of ``swidth x sheight`` at (pleft, ptop) (the part outside
    the image filled with the image's mean colour), resized to ``w x h``."""
    oh, ow = img.shape[:2]
    if pleft == 0 and ptop == 0 and swidth == ow and sheight == oh:
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    swidth, sheight = max(swidth, 1), max(sheight, 1)
    mean = np.rint(np.asarray(cv2.mean(img)[:3])).clip(0, 255).astype(np.uint8)
    cropped = np.empty((sheight, swidth, 3), np.uint8)
    cropped[:] = mean
    sx0, sy0 = max(pleft, 0), max(ptop, 0)
    sx1, sy1 = min(pleft + swidth, ow), min(ptop + sheight, oh)
    if sx0 < sx1 and sy0 < sy1:
        dx0, dy0 = sx0 - pleft, sy0 - ptop
        cropped[dy0:dy0 + sy1 - sy0, dx0:dx0 + sx1 - sx0] = img[sy0:sy1, sx0:sx1]
    return cv2.resize(cropped, (w, h), interpolation=cv2.INTER_LINEAR)


def flip_horizontal(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def letterbox_geometry(ow: int, oh: int, w: int, h: int) -> tuple[int, int, int, int]:
    """darknet's letterbox: (new_w, new_h, left, top) with its integer arithmetic."""
    if w / ow < h / oh:
        new_w, new_h = w, (oh * w) // ow
    else:
        new_h, new_w = h, (ow * h) // oh
    return new_w, new_h, (w - new_w) // 2, (h - new_h) // 2


def letterbox_uint8(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``img`` resized into ``w x h`` keeping its aspect, centred on grey 127.5.
    Returns float32 [0, 1] (the border is exactly 0.5, as darknet fills it)."""
    oh, ow = img.shape[:2]
    new_w, new_h, left, top = letterbox_geometry(ow, oh, w, h)
    out = np.full((h, w, 3), 0.5, np.float32)
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out[top:top + new_h, left:left + new_w] = to_float(resized)
    return out


def resize_uint8(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``img`` stretched to ``w x h`` (float32 [0, 1])."""
    return to_float(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))


# ---------------------------------------------------------------- AlexeyAB blur / noise
#: AlexeyAB's kernel for ``blur == 1`` (background blur)
BACKGROUND_BLUR_KSIZE = 17


def blur_ksize(blur: int) -> int:
    """The Gaussian kernel side AlexeyAB uses for a blur value: 17 for 1, else the
    odd ``(blur // 2) * 2 + 1``."""
    return BACKGROUND_BLUR_KSIZE if blur == 1 else (blur // 2) * 2 + 1


def gaussian_blur_uint8(img: np.ndarray, ksize: int) -> np.ndarray:
    """``cv::GaussianBlur`` with a ``ksize x ksize`` kernel and sigma derived from
    it by OpenCV (``0.3 * ((ksize - 1) / 2 - 1) + 0.8``), reflect-101 border.
    uint8 ``Array[H, W, 3]`` -> uint8 ``Array[H, W, 3]``."""
    return cv2.GaussianBlur(img, (ksize, ksize), 0)


def box_rects(truth: np.ndarray, w: int, h: int) -> list[tuple[int, int, int, int]]:
    """The pixel rectangles ``(x0, y0, x1, y1)`` of truth boxes ``Array[K, 5]``
    (class, cx, cy, bw, bh relative) on a ``w x h`` image, as AlexeyAB's blur
    computes them (edges and sizes truncated toward zero, then intersected with
    the image; empty ones left out)."""
    rects = []
    for _, cx, cy, bw, bh in np.asarray(truth, np.float32):
        cx, cy, bw, bh = float(cx), float(cy), float(bw), float(bh)
        left, top = int((cx - bw / 2.0) * w), int((cy - bh / 2.0) * h)
        x1, y1 = left + int(bw * w), top + int(bh * h)
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(x1, w), min(y1, h)
        if x0 < x1 and y0 < y1:
            rects.append((x0, y0, x1, y1))
    return rects


def blur_uint8(img: np.ndarray, blur: int, truth: np.ndarray) -> np.ndarray:
    """AlexeyAB's blur of the augmented image: ``blur == 1`` blurs the background
    only (17x17 Gaussian, the truth boxes' pixels restored from ``img``), ``blur >
    1`` the whole image with a ``blur_ksize(blur)`` kernel, 0 nothing.
    uint8 ``Array[H, W, 3]`` (truth ``Array[K, 5]``) -> uint8 ``Array[H, W, 3]``."""
    if blur <= 0:
        return img
    out = gaussian_blur_uint8(img, blur_ksize(blur))
    if blur == 1:
        h, w = img.shape[:2]
        for x0, y0, x1, y1 in box_rects(truth, w, h):
            out[y0:y1, x0:x1] = img[y0:y1, x0:x1]
    return out


#: AlexeyAB clamps ``gaussian_noise`` to this standard deviation
MAX_NOISE_SIGMA = 127


def gaussian_noise_uint8(img: np.ndarray, sigma: int, rng: np.random.Generator) -> np.ndarray:
    """AlexeyAB's noise: ``cv::randn`` into a uint8 image with mean 0 and standard
    deviation ``sigma`` (clamped to 0..127), then added with saturation.  The noise
    image is uint8, so each draw is rounded and saturated to 0..255: the negative
    half becomes 0 and the noise only brightens.
    uint8 ``Array[H, W, 3]`` -> uint8 ``Array[H, W, 3]``."""
    sigma = min(max(int(sigma), 0), MAX_NOISE_SIGMA)
    if sigma == 0:
        return img
    noise = np.clip(np.rint(rng.normal(0.0, sigma, img.shape)), 0, 255).astype(np.uint8)
    return cv2.add(img, noise)


def blend_float(new: np.ndarray, old: np.ndarray, alpha: float = 0.5,
                beta: float = 0.5) -> np.ndarray:
    """``cv::addWeighted(new, alpha, old, beta, 0)`` on float32 images (AlexeyAB's
    ``blend_images_cv``).  ``Array[H, W, 3]`` x2 -> float32 ``Array[H, W, 3]``."""
    return (new.astype(np.float32) * np.float32(alpha)
            + old.astype(np.float32) * np.float32(beta)).astype(np.float32)
