"""AlexeyAB's mixup for detectors (``[net] mixup=1``): two augmented images
blended 50/50, with the boxes of both.

As in AlexeyAB's ``load_data_detection`` (OpenCV path, ``use_mixup == 1``):
the loader is run twice, each image getting its own random path and its own
augmentation (crop, flip, colour, blur, noise); the second pass blends its image
with the first through ``blend_images_cv(new, 0.5, old, 0.5)`` and appends its
boxes after the first image's (``blend_truth``: at most ``max`` boxes in all).
Whether mixup is used at all is a coin flip (darknet: per loader call; here per
sample, as mosaic is chosen).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import image_ops
from .augment import AugmentConfig, augment

#: AlexeyAB's weights of the new (second) and the old (first) image
MIXUP_ALPHA = MIXUP_BETA = 0.5


def blend_truth(first: np.ndarray, second: np.ndarray, max_boxes: int) -> np.ndarray:
    """AlexeyAB's ``blend_truth``: the first image's boxes, then the second's, at
    most ``max_boxes`` in all.  ``Array[N, 5]``, ``Array[M, 5]`` -> ``Array[K, 5]``."""
    return np.concatenate([first, second]).astype(np.float32)[:max_boxes].reshape(-1, 5)


def blend(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
          max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mix two augmented samples (float32 ``Array[h, w, 3]``, truth ``Array[K, 5]``):
    pixels ``0.5 * second + 0.5 * first``, boxes of both."""
    (img1, truth1), (img2, truth2) = first, second
    out = image_ops.blend_float(img2, img1, MIXUP_ALPHA, MIXUP_BETA)
    return out, blend_truth(truth1, truth2, max_boxes)


def mixup(load: Callable[[int], tuple[np.ndarray, np.ndarray]], indices: list[int],
          rng: np.random.Generator, w: int, h: int, cfg: AugmentConfig
          ) -> tuple[np.ndarray, np.ndarray]:
    """Mixup of the images ``indices`` (2 of them), each augmented on its own.
    ``load(i)`` returns (uint8 RGB image, labels ``Array[N, 5]``).  Returns
    (float32 ``Array[h, w, 3]``, truth ``Array[K, 5]``)."""
    first, second = (augment(*load(i), rng, w, h, cfg) for i in indices)
    return blend(first, second, cfg.max_boxes)
