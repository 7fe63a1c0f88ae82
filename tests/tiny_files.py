"""A tiny detector written to disk (cfg, .weights, an image) for CLI tests
that need real files but not darknet's numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_CFG = """[net]
width=64
height=32
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=14
size=1
activation=linear

[yolo]
mask=0,1
anchors=8,16, 32,8
classes=2
num=2
"""


def tiny_model_files(folder: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(cfg, weights, image) under ``folder``: random parameters drawn from
    ``seed``, a 40x24 RGB PNG of random pixels."""
    import cv2

    from darknet_py import Darknet

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    model = Darknet(str(cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + (0.5 if "variance" in name else -0.5))
    weights = folder / "tiny.weights"
    model.save_weights(str(weights))
    image = folder / "img.png"
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert cv2.imwrite(str(image), pixels)
    return cfg, weights, image
