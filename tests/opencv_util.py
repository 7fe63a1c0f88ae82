"""Comparing our model with OpenCV's darknet importer (``cv2.dnn.readNetFromDarknet``).

OpenCV hard-codes one batch-norm convention, ``(x - mean) / sqrt(var + 1e-6)``,
for both dialects, so before comparing, our model gets the rolling variances
that make its own formula equal OpenCV's; everything else (cfg reading, weights
order, layers, head decoding) is compared as is.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from darknet_py import Darknet
from darknet_py.layers.conv import _BNMixin
from darknet_py.postprocess import DecodeContext, get_network_boxes

OPENCV_SCORE_THRESH = 0.2  # OpenCV's [yolo]/[region] zero class scores not above this


def match_opencv_bn(model: Darknet) -> None:
    """Rolling variances v' with our dialect's formula == OpenCV's sqrt(v + 1e-6)."""
    with torch.no_grad():
        for layer in model.module_list:
            if isinstance(layer, _BNMixin) and getattr(layer, "batch_normalize", False):
                v = layer.rolling_variance.double()
                if layer.dialect == "pjreddie":
                    v2 = (torch.sqrt(v + 1e-6) - 1e-6) ** 2
                else:
                    v2 = v + 1e-6 - 1e-5
                layer.rolling_variance.copy_(v2.float())


def load_for_opencv(cfg, weights, dialect):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Darknet(cfg, dialect=dialect)
    model.load_weights(weights)
    match_opencv_bn(model)
    return model.eval()


def compare_with_opencv(model: Darknet, net, x: torch.Tensor, tol: float, what: str) -> int:
    """Run both on ``x``; returns how many values were compared."""
    heads = model.heads
    keep = [h - 1 for h in heads] + [len(model.module_list) - 1]
    with torch.no_grad():
        ours = model.forward_all(x, keep=keep)
    names = list(net.getLayerNames())
    want = [f"permute_{h}" for h in heads]
    assert all(w in names for w in want), f"{what}: OpenCV has no {want}"
    out_names = list(net.getUnconnectedOutLayersNames())
    net.setInput(x.numpy().copy())
    got = net.forward(want + out_names)
    compared = 0
    for h, o in zip(heads, got[:len(want)]):
        ref = ours[h - 1].numpy().transpose(0, 2, 3, 1)
        scale = max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(o - ref).max())
        assert diff <= tol * scale, f"{what}: input of head {h} differs from OpenCV by {diff:.3g}"
        compared += o.size
    if not heads:
        ref = ours[len(model.module_list) - 1].numpy().reshape(got[-1].shape)
        assert float(np.abs(got[-1] - ref).max()) <= tol * max(1.0, float(np.abs(ref).max()))
        return compared + ref.size
    # decoded rows: one OpenCV output per head, rows (y * W + x) * anchors + a
    for k, (h, o) in enumerate(zip(heads, got[len(want):])):
        head = model.module_list[h]
        _, _, gh, gw = ours[h].shape
        o = o.reshape(x.shape[0], -1, o.shape[-1])  # OpenCV drops the batch axis for one image
        for b in range(x.shape[0]):
            ctx = DecodeContext(model.width, model.height, model.width, model.height, thresh=-1.0,
                                letter=False, dialect="alexeyab")
            d = get_network_boxes([head], [ours[h]], ctx, b)
            order = np.arange(len(d))
            if head.type == "region" and head.dialect == "pjreddie":  # ours is anchor-major
                order = (np.arange(gh * gw)[:, None] + gh * gw * np.arange(head.n)[None]).reshape(-1)
            boxes, obj, prob = d.boxes[order], d.objectness[order], d.prob[order]
            if head.type == "region" and head.dialect == "alexeyab":
                obj = np.asarray(ours[h][b].reshape(head.n, head.per_anchor, -1)[:, 4].t().reshape(-1))
            ob = o[b]
            assert ob.shape == (len(order), 5 + head.classes), f"{what}: head {h} rows {ob.shape}"
            assert np.allclose(ob[:, :2], boxes[:, :2], atol=2 * tol), f"{what}: head {h} x, y"
            assert np.allclose(ob[:, 2:4], boxes[:, 2:4], rtol=2 * tol * 10, atol=1e-6), f"{what}: head {h} w, h"
            assert np.allclose(ob[:, 4], obj, atol=2 * tol), f"{what}: head {h} objectness"
            scores = ob[:, 5:]
            kept = scores > 0
            assert np.allclose(scores[kept], prob[kept], atol=2 * tol), f"{what}: head {h} class scores"
            if head.type == "yolo":  # no NMS inside OpenCV's [yolo]: every clear score is there
                clear = prob > OPENCV_SCORE_THRESH + 2 * tol
                assert np.all(kept[clear]), f"{what}: head {h}: OpenCV dropped scores above its threshold"
            compared += ob.size
    return compared
