"""AlexeyAB's mosaic (``[net] mosaic=1``): four augmented images in the
quadrants around a random cut point.

As in AlexeyAB's ``load_data_detection`` (OpenCV path): the cut is
``(rand_int(0.2w, 0.8w), rand_int(0.2h, 0.8h))``; each part is augmented with
its own crop/flip/colour (and blur/noise); with probability 1/2 a part's crop is pushed into the
corner that touches the cut so most of it stays visible; the part's pixels next
to the cut are copied into its quadrant, shifted by the padding of its crop;
its boxes are moved by ``blend_truth_mosaic`` (:mod:`darknet_py.data.truth`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from . import image_ops
from .augment import AlexeyABAugmenter, AugmentConfig, CropJitter, alexeyab_pixels, transform_truth
from .rng import coin, rand_int
from .truth import blend_truth_mosaic

#: fraction of the width/height kept free around the cut
MIN_OFFSET = 0.2


def _to_corner(c: CropJitter, quadrant: int) -> CropJitter:
    """Move the crop's padding so the image sits against the cut corner."""
    l, r, t, b = c.pleft, c.pright, c.ptop, c.pbot
    # all horizontal slack on the side away from the cut (mirrored by a flip)
    slack_right = (quadrant in (0, 2)) != c.flip
    l, r = (0, r + l) if slack_right else (l + r, 0)
    t, b = (0, b + t) if quadrant in (0, 1) else (t + b, 0)
    return replace(c, pleft=l, pright=r, ptop=t, pbot=b)


def _c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def mosaic(load: Callable[[int], tuple[np.ndarray, np.ndarray]], indices: list[int],
           rng: np.random.Generator, w: int, h: int, cfg: AugmentConfig
           ) -> tuple[np.ndarray, np.ndarray]:
    """A mosaic of the images ``indices`` (4 of them, quadrants 0..3 =
    top-left, top-right, bottom-left, bottom-right).  ``load(i)`` returns
    (uint8 RGB image, labels ``Array[N, 5]``).  Returns (float32
    ``Array[h, w, 3]``, truth ``Array[K, 5]``)."""
    cut_x = rand_int(rng, int(w * MIN_OFFSET), int(w * (1 - MIN_OFFSET)))
    cut_y = rand_int(rng, int(h * MIN_OFFSET), int(h * (1 - MIN_OFFSET)))
    canvas = np.zeros((h, w, 3), np.uint8)
    truth = np.zeros((0, 5), np.float32)
    aug = AlexeyABAugmenter()
    for quadrant, index in enumerate(indices):
        img, labels = load(index)
        oh, ow = img.shape[:2]
        crop = aug.sample(rng, ow, oh, w, h, cfg)
        if coin(rng):
            crop = _to_corner(crop, quadrant)
        part_truth = transform_truth(labels, crop, ow, oh, w, h, cfg, rng)
        part = alexeyab_pixels(img, crop, w, h, part_truth)  # incl. blur / noise
        pleft, pright = (crop.pright, crop.pleft) if crop.flip else (crop.pleft, crop.pright)
        left_shift = min(cut_x, max(0, _c_div(-pleft * w, ow)))
        top_shift = min(cut_y, max(0, _c_div(-crop.ptop * h, oh)))
        right_shift = min(w - cut_x, max(0, _c_div(-pright * w, ow)))
        bot_shift = min(h - cut_y, max(0, _c_div(-crop.pbot * h, oh)))
        if quadrant in (0, 2):
            xs, xd = slice(w - cut_x - right_shift, w - right_shift), slice(0, cut_x)
        else:
            xs, xd = slice(left_shift, left_shift + w - cut_x), slice(cut_x, w)
        if quadrant in (0, 1):
            ys, yd = slice(h - cut_y - bot_shift, h - bot_shift), slice(0, cut_y)
        else:
            ys, yd = slice(top_shift, top_shift + h - cut_y), slice(cut_y, h)
        canvas[yd, xd] = part[ys, xs]
        truth = blend_truth_mosaic(truth, part_truth, cfg.max_boxes, w, h, cut_x, cut_y, quadrant,
                                   (left_shift, right_shift, top_shift, bot_shift),
                                   cfg.mosaic_bound)
    return image_ops.to_float(canvas), truth
