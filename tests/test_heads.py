"""The head classes: registry, traceable decode, darknet backward.

The traceable decode (torch only, for the decoded-box ONNX export) is checked
against two things: the functions ``darknet_py.convert`` used so far (the same
math, so bit-equal), and the exact decode ``head.decode`` (darknet's
``get_network_boxes`` arithmetic) on the same outputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from darknet_py import Darknet, parse_cfg
from darknet_py.cfg import parse_cfg as _parse
from darknet_py.errors import CfgError, UnsupportedLayerError
from darknet_py.layers.heads import HEAD_CLASSES, HEAD_TYPES, Head, is_head, traceable_head_types
from darknet_py.postprocess import DecodeContext

ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"
RANCH = "0.57,0.68, 1.87,2.06, 3.34,5.47"

HEADS = {
    "yolo": ("yolo", 8, f"classes=3\nmask=0,1,2\nanchors={ANCHORS}\nnum=6"),
    "yolo_mask345_scale": ("yolo", 8, f"classes=3\nmask=3,4,5\nanchors={ANCHORS}\nnum=6\nscale_x_y=1.1"),
    "yolo_new_coords": ("yolo", 8, f"classes=3\nmask=0,1,2\nanchors={ANCHORS}\nnum=6\nnew_coords=1"),
    "region_softmax": ("region", 8, f"classes=3\nnum=3\ncoords=4\nsoftmax=1\nanchors={RANCH}"),
    "region_logistic": ("region", 8, f"classes=3\nnum=3\ncoords=4\nanchors={RANCH}"),
}


def head_of(section: str, per: int, body: str, dialect: str):
    cfg = (f"[net]\nwidth=64\nheight=48\nchannels=3\n\n[convolutional]\nfilters={3 * per}\nsize=1\n"
           f"stride=16\nactivation=linear\n\n[{section}]\n{body}\n")
    return Darknet(parse_cfg(cfg, dialect=dialect)).module_list[1]


def eval_output(head, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c, h, w = head.in_shape
    head.eval()
    with torch.no_grad():
        return head(torch.randn(2, c, h, w, generator=g) * 2)


def test_head_types_come_from_the_classes():
    assert HEAD_TYPES == frozenset(HEAD_CLASSES) == {"yolo", "Gaussian_yolo", "region", "detection"}
    assert all(issubclass(cls, Head) and cls.type == t for t, cls in HEAD_CLASSES.items())
    assert traceable_head_types() == ("yolo", "region")
    cfg = _parse("[net]\nwidth=8\nheight=8\nchannels=3\n\n[maxpool]\n\n[yolo]\nclasses=1\nmask=0\n"
                 "anchors=1,1\nnum=1\n")
    assert [is_head(s) for s in cfg.layers] == [False, True]
    assert is_head("Gaussian_yolo") and not is_head("convolutional")


# The exact decode takes exp() in double and rounds once; the traceable one rounds
# exp, the product with the anchor and the division in float32: at most 3 roundings
# of 2^-24 each, plus float32 exp's own error (1 ulp): within 4 * 2^-24 relative, so
# 2^-21 (8 ulp) is a bound with margin.  x, y, the class products and the order are
# the same float operations in both, so they must be equal.
WH_RTOL = 2.0 ** -21


@pytest.mark.parametrize("dialect,name", [(d, n) for d in ("pjreddie", "alexeyab") for n in sorted(HEADS)])
def test_traceable_decode_matches_the_exact_decode(name, dialect):
    head = head_of(*HEADS[name], dialect)
    y = eval_output(head, 1)
    boxes, obj, scores = head.traceable_decode(y, (48, 64))
    for b in range(y.shape[0]):
        # image = network size, no letterbox: darknet's correction is the identity
        ctx = DecodeContext(64, 48, 64, 48, 0.0, 0.5, False, dialect)
        dets = head.decode(y[b], ctx)
        keep = (obj[b] > 0).numpy()          # [yolo] lists a box only above thresh (0 here)
        assert len(dets) == int(keep.sum())
        got = boxes[b].numpy()[keep]
        if dialect == "alexeyab" and name.startswith("region"):
            # x, y go through a float32 logistic here: torch's and numpy's expf may differ by
            # 1 ulp, the same bound as w, h
            np.testing.assert_allclose(got[:, :2], dets.boxes[:, :2], rtol=WH_RTOL, atol=0)
        else:
            np.testing.assert_array_equal(got[:, :2], dets.boxes[:, :2])
        np.testing.assert_allclose(got[:, 2:], dets.boxes[:, 2:], rtol=WH_RTOL, atol=0)
        sc = scores[b].numpy()[keep]
        np.testing.assert_array_equal(np.where(sc > 0, sc, 0), dets.prob)   # darknet's prob > thresh


def test_heads_without_traceable_decode_refuse():
    body = f"classes=2\nmask=0,1,2\nanchors={ANCHORS}\nnum=6"
    head = head_of("Gaussian_yolo", 11, body, "alexeyab")
    with pytest.raises(UnsupportedLayerError, match=r"\[Gaussian_yolo\] has no traceable box decode"):
        head.traceable_decode(eval_output(head), (48, 64))


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_darknet_backward_is_pjreddies_gpu_region_backward(dialect):
    """pjreddie's GPU ``backward_region_layer`` multiplies the x, y and objectness
    deltas by the logistic derivative; AlexeyAB's delta already has it, [yolo] none."""
    head = head_of(*HEADS["region_softmax"], dialect)
    x = torch.randn(2, 24, 3, 4, requires_grad=True)
    g = torch.randn(2, 24, 3, 4)
    head.darknet_backward(x).backward(g)
    expect = g.clone().view(2, 3, 8, 3, 4)
    if dialect == "pjreddie":
        s = torch.sigmoid(x.detach()).view(2, 3, 8, 3, 4)
        for e in (0, 1, 4):
            expect[:, :, e] = expect[:, :, e] * (s[:, :, e] * (1 - s[:, :, e]))
    assert torch.equal(x.grad, expect.view_as(g))
    yolo = head_of(*HEADS["yolo"], dialect)
    assert yolo.darknet_backward(x) is x


def test_params_are_read_once_at_construction():
    head = head_of("yolo", 8, f"classes=3\nmask=0,1,2\nanchors={ANCHORS}\nnum=6\niou_loss=giou\n"
                              f"iou_normalizer=0.07", "alexeyab")
    p = head.params
    assert (p.iou_loss, p.iou_normalizer, p.mask, p.total) == ("giou", float(np.float32(0.07)), (0, 1, 2), 6)
    assert head.anchors[1] == (23.0, 27.0) and head.n == 3 and head.classes == 3
    with pytest.raises(CfgError, match="counters_per_class has 2 values but classes=3"):
        head_of("yolo", 8, f"classes=3\nmask=0,1,2\nanchors={ANCHORS}\nnum=6\ncounters_per_class=1,2",
                "alexeyab")
