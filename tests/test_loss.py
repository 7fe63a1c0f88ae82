"""The darknet loss: gradients equal minus darknet's l.delta, costs equal darknet's.

Oracles: the conformance data written by the C darknets (every head with
stored deltas, both dialects, both region ``seen`` values, yolov1, the
training-mode forward deltas), hand-worked cases, and ``darknet_ref`` (a
literal loop-by-loop transcription of forward_yolo_layer, at the end of this
file) for the option variants the conformance cases do not cover.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from darknet_py import Darknet, parse_cfg
from darknet_py.errors import DarknetError, DataError
from darknet_py.layers.heads.targets import (detection_truth_to_targets, select_truths,
                                             targets_to_detection_truth, targets_to_truth_buffer,
                                             truth_buffer_to_targets)
from darknet_py.loss import LOSSES, head_loss, region_loss, yolo_loss

from .conftest import manifest_or_empty

MANIFEST = manifest_or_empty()


# ------------------------------------------------------------------ helpers
def _delta_cases():
    out = []
    for name, case in MANIFEST.get("cases", {}).items():
        for layer in case["layers"]:
            for d in layer.get("deltas", []):
                out.append(pytest.param(name, layer["index"], d["key"], id=f"{name}-{d['key']}"))
    return out


def _trainfwd_cases():
    out = []
    for name, case in MANIFEST.get("cases", {}).items():
        for tf in case.get("trainfwd", []):
            out.append(pytest.param(name, tf["layer"], id=f"{name}-trainfwd-{tf['layer']}"))
    return out


_NETS: dict = {}


def _net(conformance, case: dict) -> Darknet:
    key = case["name"]
    if key not in _NETS:
        _NETS[key] = Darknet(conformance / case["cfg"], dialect=case["implementation"])
    return _NETS[key]


def _head_input(z, layer: dict, head) -> torch.Tensor:
    """The stored input of the head; for the cross-implementation case (which stores
    only head outputs) the inverse of the head's activation."""
    key = f"out_{head.sources[0]:03d}"
    if key in z.files:
        return torch.from_numpy(z[key].copy())
    o = torch.from_numpy(z[layer["key"]].copy()).double()
    n, c, h, w = o.shape
    v = o.view(n, head.n, -1, h, w).clone()
    lg = torch.logit(v)
    v[:, :, 0:2], v[:, :, 4:] = lg[:, :, 0:2], lg[:, :, 4:]
    return v.view(n, c, h, w).float()


def _targets(z, layer: dict, head, case: dict) -> torch.Tensor:
    buf = torch.from_numpy(z[layer["truth_buffer_key"]])
    if layer["section"] == "detection":
        return detection_truth_to_targets(buf, head.side, head.classes)
    floats = 6 if case["implementation"] == "alexeyab" and layer["section"] == "yolo" else 5
    return truth_buffer_to_targets(buf, floats)


def delta_tolerance(case: dict) -> dict:
    """The manifest's ``deltas_teacher_forced`` rule of the case: ``atol``, ``rtol``
    (element-wise, the atol relative to max(1, max|delta|)); the cost uses ``rtol``."""
    return case["tolerances"]["recommended"]["deltas_teacher_forced"]


#: against our float64 loop transcription of the C code (``ref_yolo`` and friends): each
#: delta is a handful (< 20) of float32 operations on O(1) values, so float32 rounding
#: leaves it within 20 * 2**-24 = 1.2e-6 of the float64 value; darknet's own delta rule
#: (1e-5, the manifest's deltas_teacher_forced) holds with room to spare
LOOP_REFERENCE = {"atol": 1e-5, "rtol": 1e-5}


def _check(grad: np.ndarray, delta: np.ndarray, what: str, case: dict | None = None):
    t = delta_tolerance(case) if case is not None else LOOP_REFERENCE
    tol = t["atol"] * max(1.0, float(np.abs(delta).max()))
    diff = np.abs(grad.reshape(delta.shape) + delta) - t["rtol"] * np.abs(delta)
    k = int(diff.argmax())
    assert diff.max() <= tol, (f"{what}: |grad + delta| - rtol*|delta| = {diff.max():.3g} > {tol:.3g} "
                               f"at flat index {k} (grad {grad.reshape(-1)[k]:.6g}, "
                               f"delta {delta.reshape(-1)[k]:.6g})")


# --------------------------------------------------------- conformance data
@pytest.mark.parametrize("name,index,key", _delta_cases())
def test_gradient_is_minus_darknet_delta(conformance, manifest, name, index, key):
    case = manifest["cases"][name]
    layer = next(L for L in case["layers"] if L["index"] == index)
    d = next(d for d in layer["deltas"] if d["key"] == key)
    z = np.load(conformance / case["arrays"])
    net = _net(conformance, case)
    head = net.module_list[index]
    head.seen = d["seen"]
    x = _head_input(z, layer, head).requires_grad_(True)
    loss, stats = head.loss(x, _targets(z, layer, head, case), (net.height, net.width))
    loss.backward()
    _check(x.grad.numpy(), z[key], f"{name} layer {index}", case)
    rtol = delta_tolerance(case)["rtol"]
    assert stats["cost"] == pytest.approx(d["cost"], rel=rtol)
    assert loss.item() == pytest.approx(d["cost"], rel=rtol)


@pytest.mark.parametrize("name,index", _trainfwd_cases())
def test_training_forward_deltas(conformance, manifest, name, index):
    case = manifest["cases"][name]
    layer = next(L for L in case["layers"] if L["index"] == index)
    z = np.load(conformance / case["arrays"])
    net = _net(conformance, case)
    head = net.module_list[index]
    head.seen = 0
    x = torch.from_numpy(z[f"trainfwd_out_{head.sources[0]:03d}"].copy()).requires_grad_(True)
    loss, stats = head.loss(x, _targets(z, layer, head, case), (net.height, net.width))
    loss.backward()
    _check(x.grad.numpy(), z[f"trainfwd_delta_{index:03d}"], f"{name} trainfwd {index}", case)
    cost = next(t["cost"] for t in case["trainfwd"] if t["layer"] == index)
    assert stats["cost"] == pytest.approx(cost, rel=delta_tolerance(case)["rtol"])


def test_network_loss_sums_the_heads(conformance, manifest):
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    z = np.load(conformance / case["arrays"])
    net = _net(conformance, case)
    xs, targets, costs = [], None, 0.0
    for i in net.heads:
        layer = next(L for L in case["layers"] if L["index"] == i)
        xs.append(torch.from_numpy(z[f"out_{net.module_list[i].sources[0]:03d}"].copy()).requires_grad_(True))
        t = _targets(z, layer, net.module_list[i], case)
        assert targets is None or torch.equal(t, targets)  # the same truths for every head
        targets = t
        costs += layer["deltas"][0]["cost"]
    total, stats = net.loss(xs, targets)
    total.backward()
    assert total.item() == pytest.approx(costs, rel=delta_tolerance(case)["rtol"])
    assert [s["layer"] for s in stats] == net.heads
    for i, x in zip(net.heads, xs):
        _check(x.grad.numpy(), z[f"delta_{i:03d}_seen0"], f"head {i}", case)


def test_truth_buffers_round_trip(conformance, manifest):
    for name, case in manifest["cases"].items():
        z = np.load(conformance / case["arrays"])
        ab = case["implementation"] == "alexeyab"
        for layer in case["layers"]:
            if "truth_buffer_key" not in layer:
                continue
            buf = torch.from_numpy(z[layer["truth_buffer_key"]])
            if layer["section"] == "detection":
                side, classes = layer["side"], layer["classes"]
                back = targets_to_detection_truth(detection_truth_to_targets(buf, side, classes),
                                                  buf.shape[0], side, classes)
            else:
                floats = 6 if ab and layer["section"] == "yolo" else 5
                t = truth_buffer_to_targets(buf, floats)
                assert t.shape[0] > 0 and bool((t[:, 2] != 0).all())
                back = targets_to_truth_buffer(t, buf.shape[0], buf.shape[1] // floats, floats)
            assert torch.allclose(back, buf, atol=1e-6), f"{name} {layer['truth_buffer_key']}"


# ------------------------------------------------------------ tiny heads
ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"


def make_head(section: str, dialect: str, classes: int = 3, n: int = 3, extra: str = "",
              grid: int = 4, net_size: int = 64, per: int | None = None):
    per = per if per is not None else 5 + classes
    cfg = f"""[net]
width={net_size}
height={net_size}
channels=3

[convolutional]
filters={n * per}
size=1
stride={net_size // grid}
activation=linear

[{section}]
classes={classes}
{extra}
"""
    net = Darknet(parse_cfg(cfg, dialect=dialect))
    return net, net.module_list[1]


def yolo_head(dialect: str, extra: str = "", classes: int = 3):
    body = f"mask=0,1,2\nanchors={ANCHORS}\nnum=6\n{extra}"
    return make_head("yolo", dialect, classes, 3, body)


def grad_of(head, x, targets, hw=(64, 64), fn=None):
    x = x.clone().requires_grad_(True)
    loss, stats = (fn or head_loss)(head, x, targets, hw)
    loss.backward()
    return x.grad.view(x.shape[0], head.n, -1, *x.shape[2:]), loss, stats


def T(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_loss_value_is_cost_and_gradient_is_exactly_minus_delta():
    net, head = yolo_head("alexeyab", "iou_loss=ciou\niou_thresh=0.2")
    torch.manual_seed(0)
    x = torch.randn(2, 24, 4, 4)
    tg = T([0, 1, 0.4, 0.4, 0.3, 0.2], [1, 2, 0.7, 0.2, 0.6, 0.5])
    delta, cost, stats = head.delta(x, tg, (64, 64))
    g, loss, _ = grad_of(head, x, tg)
    assert torch.equal(g.reshape(delta.shape), -delta)
    assert loss.item() == cost.item() == stats["cost"]


def test_truth_whose_best_anchor_is_in_another_layer():
    # a 1 x 1 box (64 x 64 px) has shape IoU 4096/6642 = .617 with anchor 3 (81x82 px)
    # and only 2146/4096 = .524 with anchor 2 (37x58): its best anchor is not in mask
    # 0,1,2, so this layer gives it no positive deltas, only "no object" ones.
    net, head = yolo_head("pjreddie", "ignore_thresh=0.7")
    x = torch.zeros(1, 24, 4, 4)
    g, loss, stats = grad_of(head, x, T([0, 1, 0.5, 0.5, 1.0, 1.0]))
    d = -g
    assert stats["count"] == 0
    assert torch.all(d[:, :, 0:4] == 0) and torch.all(d[:, :, 5:] == 0)
    # predictions with x=0 decode to anchor-size boxes at cell centres; the best one,
    # the largest anchor of the mask (37x58 px = .578 x .906) at a central cell, overlaps
    # the truth (the whole image) by .578 x .828 = .479: IoU .479 / (1 + .524 - .479) = .46
    # < .7, so every objectness delta is 0 - 0.5
    assert torch.all(d[:, :, 4] == -0.5)
    assert loss.item() == pytest.approx(48 * 0.25)


def test_two_truths_in_one_cell_pjreddie_and_alexeyab_rules():
    # both truths: same cell (1,1) of the 4x4 grid, same best anchor 1 (23x27 px)
    t1 = [0, 0, 0.30, 0.30, 23 / 64, 27 / 64]
    t2 = [0, 1, 0.32, 0.31, 24 / 64, 26 / 64]
    x = torch.zeros(1, 24, 4, 4)
    x[0, 1 * 8 + 5] = 200.0  # class 0 of anchor 1 saturates: p0 == 1.0 exactly
    p1 = 0.5
    for dialect in ("pjreddie", "alexeyab"):
        net, head = yolo_head(dialect)
        d = -grad_of(head, x, T(t1, t2))[0][0, 1, :, 1, 1]
        norm = 0.75 if dialect == "alexeyab" else 1.0

        def box(t):  # hand-worked delta_yolo_box with x = 0 (logistic 0.5, raw w, h 0)
            s = 2 - t[4] * t[5]
            return torch.tensor([s * (t[2] * 4 - 1 - 0.5), s * (t[3] * 4 - 1 - 0.5),
                                 s * math.log(t[4] * 64 / 23), s * math.log(t[5] * 64 / 27)])
        if dialect == "pjreddie":
            # later truth overwrites the box; class rule looks at the class-0 delta, which
            # is 1 - p0 = 0 after truth 1 -> truth 2 resets every class delta
            assert torch.allclose(d[:4], box(t2), atol=1e-5)
            assert torch.allclose(d[5:], torch.tensor([0 - 1.0, 1 - p1, 0 - p1]), atol=1e-6)
        else:
            # AlexeyAB accumulates both truths' boxes (x0.75) and checks the truth's own
            # class slot (-p1 != 0) -> only that slot is rewritten
            assert torch.allclose(d[:4], norm * (box(t1) + box(t2)), atol=1e-5)
            assert torch.allclose(d[5:], torch.tensor([1 - 1.0, 1 - p1, 0 - p1]), atol=1e-6)
        assert d[4].item() == pytest.approx(1 - 0.5)


def _big_anchor_head(dialect: str, extra: str = ""):
    # one 64x64 px anchor (= the whole 64 px image) in mask
    body = f"mask=0\nanchors=64,64\nnum=1\n{extra}"
    return make_head("yolo", dialect, 2, 1, body)


def test_prediction_above_ignore_thresh_and_truth_thresh():
    # x = 0: every prediction is a 1 x 1 box centred in its cell. Truth = the box
    # of cell (1,1): centre (.375, .375), size 1 x 1.  A prediction k cells away along
    # x overlaps (1 - k/4) x 1: IoU = (1 - k/4) / (1 + k/4).
    x = torch.zeros(1, 7, 4, 4)
    truth = T([0, 1, 0.375, 0.375, 1.0, 1.0])
    iou = lambda dx, dy: (1 - dx / 4) * (1 - dy / 4) / (2 - (1 - dx / 4) * (1 - dy / 4))  # noqa: E731
    for thresh in (0.5, 0.65):
        net, head = _big_anchor_head("pjreddie", f"ignore_thresh={thresh}")
        d = -grad_of(head, x, truth)[0][0, 0]
        for j in range(4):
            for i in range(4):
                if (i, j) == (1, 1):
                    assert d[4, j, i] == 0.5  # assigned: 1 - 0.5
                elif iou(abs(i - 1), abs(j - 1)) > thresh:
                    assert d[4, j, i] == 0, (i, j)
                else:
                    assert d[4, j, i] == -0.5, (i, j)
    # truth_thresh = .55: the neighbours with IoU .6 (one cell away in x or y) become
    # responsible for the truth: objectness 1 - .5, full class deltas, box deltas
    net, head = _big_anchor_head("pjreddie", "ignore_thresh=0.5\ntruth_thresh=0.55")
    d = -grad_of(head, x, truth)[0][0, 0]
    s = 2 - 1.0
    for (i, j) in ((0, 1), (2, 1), (1, 0), (1, 2)):
        assert d[4, j, i] == 0.5
        assert torch.allclose(d[5:, j, i], torch.tensor([-0.5, 0.5]))
        assert d[0, j, i].item() == pytest.approx(s * (0.375 * 4 - i - 0.5))
        assert d[1, j, i].item() == pytest.approx(s * (0.375 * 4 - j - 0.5))
        assert d[2, j, i].item() == pytest.approx(0.0, abs=1e-7)  # log(1 * 64 / 64) - 0
    # diagonal neighbours: IoU .5625 / 1.4375 = .39 < .5 -> plain "no object"
    assert iou(1, 1) < 0.5 and d[4, 0, 0] == -0.5 and d[4, 2, 2] == -0.5


def test_box_at_the_image_edge_and_the_first_zero_x_ends_the_list():
    net, head = yolo_head("pjreddie")
    x = torch.zeros(2, 24, 4, 4)
    # touches the left edge: x - w/2 = 0 -> cell 0; a centre at .999 -> last cell;
    # the third row of image 0 has x == 0: darknet stops reading there
    tg = T([0, 2, 0.1, 0.5, 0.2, 0.3], [0, 1, 0.999, 0.999, 23 / 64, 27 / 64],
           [0, 0, 0.0, 0.5, 0.3, 0.3], [0, 1, 0.6, 0.6, 0.2, 0.3], [1, 0, 0.5, 0.5, 0.3, 0.3])
    tr = select_truths(tg, 2, 90)
    assert tr.img.tolist() == [0, 0, 1]
    g, _, stats = grad_of(head, x, tg)
    d = -g
    assert stats["count"] == 3
    # first box: best anchor by shape IoU for .2 x .3 (12.8 x 19.2 px) is anchor 0 (10x14)
    s = 2 - 0.2 * 0.3
    assert d[0, 0, 0, 2, 0].item() == pytest.approx(s * (0.1 * 4 - 0 - 0.5))
    assert d[0, 0, 2, 2, 0].item() == pytest.approx(s * math.log(0.2 * 64 / 10), rel=1e-6)
    assert d[0, 0, 7, 2, 0].item() == pytest.approx(0.5)
    # second box sits in the last cell with anchor 1
    assert d[0, 1, 4, 3, 3] == 0.5
    assert d[0, 1, 0, 3, 3].item() == pytest.approx((2 - 23 * 27 / 64 ** 2) * (0.999 * 4 - 3 - 0.5), rel=1e-5)
    # the row after the x == 0 row is not read: its cell (2,2) keeps "no object"
    assert torch.all(d[0, :, 4, 2, 2] <= 0)


def test_empty_image():
    net, head = yolo_head("alexeyab")
    torch.manual_seed(1)
    x = torch.randn(2, 24, 4, 4)
    tg = T([0, 1, 0.4, 0.4, 0.2, 0.2])  # image 1 has no truth
    d = -grad_of(head, x, tg)[0]
    obj = torch.sigmoid(x.view(2, 3, 8, 4, 4)[1, :, 4])
    assert torch.allclose(d[1, :, 4], -obj, rtol=0, atol=1e-7)  # obj_normalizer * (0 - obj)
    assert torch.all(d[1, :, :4] == 0) and torch.all(d[1, :, 5:] == 0)
    # no truth at all: finite cost = sum(obj^2), stats with count 0
    g, loss, stats = grad_of(head, x, torch.zeros(0, 6))
    assert stats["count"] == 0
    assert loss.item() == pytest.approx(float((torch.sigmoid(x.view(2, 3, 8, 4, 4)[:, :, 4]) ** 2).sum()), rel=1e-6)


# ------------------------------------------- variants against darknet_ref
def _ref_inputs(head, seed: int, new_coords: bool = False):
    torch.manual_seed(seed)
    x = torch.randn(2, 24, 4, 4) * 1.5
    x.view(2, 3, 8, 4, 4)[:, :, 5:] -= 2  # about 60% of predictions pass the 0.25 class rule
    if new_coords:
        x = torch.sigmoid(x)  # the conv before a new_coords head is logistic
    out = head.activate(x).view(2, 3, 8, 4, 4)
    # truths: hand-placed ones (collision, other scale, edge) + copies of predictions
    rows = [[0, 1, 0.30, 0.30, 0.20, 0.25], [0, 2, 0.31, 0.29, 0.21, 0.24],
            [0, 0, 0.05, 0.50, 0.10, 0.30], [0, 2, 0.70, 0.60, 0.90, 0.80],
            [1, 1, 0.60, 0.40, 0.45, 0.30], [1, 0, 0.62, 0.42, 0.40, 0.33]]
    for (b, a, j, i) in ((0, 2, 1, 2), (1, 1, 3, 0), (1, 0, 2, 2)):
        o = out[b, a, :, j, i].double()
        anc = head.anchors[head.mask[a]]
        if new_coords:
            w, h = o[2] ** 2 * 4 * anc[0] / 64, o[3] ** 2 * 4 * anc[1] / 64
        else:
            w, h = torch.exp(o[2]) * anc[0] / 64, torch.exp(o[3]) * anc[1] / 64
        bx, by = (i + o[0]) / 4, (j + o[1]) / 4
        rows.append([b, (b + a) % 3, float(bx) * 1.01, float(by) * 0.99,
                     min(float(w), 0.95) * 1.02, min(float(h), 0.95) * 0.98])
    tg = T(*rows)
    per_image = [[(r[2], r[3], r[4], r[5], r[1]) for r in rows if r[0] == b] for b in range(2)]
    return x, tg, out.double().numpy(), per_image


VARIANTS = {
    # name: (dialect, cfg lines, reference options)
    "pj_mse": ("pjreddie", "ignore_thresh=0.5", {}),
    "pj_truth_thresh": ("pjreddie", "ignore_thresh=0.3\ntruth_thresh=0.5", {"truth_thresh": 0.5}),
    "ab_mse_default_norm": ("alexeyab", "ignore_thresh=0.5", {}),
    "ab_giou": ("alexeyab", "iou_loss=giou\niou_normalizer=0.5\nmax_delta=3",
                {"iou_loss": "giou", "iou_normalizer": 0.5, "max_delta": 3.0}),
    "ab_diou_iou_thresh": ("alexeyab", "iou_loss=diou\niou_normalizer=0.07\niou_thresh=0.2\niou_thresh_kind=giou",
                           {"iou_loss": "diou", "iou_normalizer": 0.07, "iou_thresh": 0.2,
                            "iou_thresh_kind": "giou"}),
    "ab_ciou_scale_xy": ("alexeyab", "iou_loss=ciou\niou_normalizer=0.07\nscale_x_y=1.1\niou_thresh=0.213",
                         {"iou_loss": "ciou", "iou_normalizer": 0.07, "iou_thresh": 0.213}),
    "ab_iou": ("alexeyab", "iou_loss=iou", {"iou_loss": "iou"}),
    "ab_objectness_smooth": ("alexeyab", "objectness_smooth=1\nobj_normalizer=2\nignore_thresh=0.3\ntruth_thresh=0.6",
                             {"objectness_smooth": 1, "obj_normalizer": 2.0, "truth_thresh": 0.6,
                              "ignore_thresh": 0.3}),
    "ab_label_smooth_counters": ("alexeyab", "label_smooth_eps=0.1\ncounters_per_class=10,20,5\ncls_normalizer=0.5",
                                 {"label_smooth_eps": 0.1, "mults": [2.0, 1.0, 4.0], "cls_normalizer": 0.5}),
    "ab_focal": ("alexeyab", "focal_loss=1", {"focal_loss": 1}),
    "ab_new_coords": ("alexeyab", "new_coords=1\nscale_x_y=2\niou_loss=ciou\niou_normalizer=0.05\niou_thresh=0.2",
                      {"new_coords": 1, "iou_loss": "ciou", "iou_normalizer": 0.05, "iou_thresh": 0.2}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_against_loop_reference(variant):
    dialect, lines, opts = VARIANTS[variant]
    net, head = yolo_head(dialect, lines)
    new_coords = bool(opts.get("new_coords"))
    for seed in (0, 1):
        x, tg, out, per_image = _ref_inputs(head, seed, new_coords)
        cfg = dict(dialect=dialect, classes=3, mask=[0, 1, 2],
                   anchors=[tuple(a) for a in head.anchors], ignore_thresh=head.opts["ignore_thresh"],
                   truth_thresh=head.opts["truth_thresh"])
        cfg.update(opts)
        ref, cost, st = ref_yolo(cfg, out, per_image, (64, 64))
        g, loss, stats = grad_of(head, x, tg)
        _check(g.reshape(ref.shape).numpy(), ref, f"{variant} seed {seed}")
        assert stats["count"] == st["count"]
        assert loss.item() == pytest.approx(cost, rel=1e-5)


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_objectness_target_iou_variant(dialect):
    # darknet_py extension (no darknet cfg key for [yolo]): objectness target = IoU
    net, head = yolo_head(dialect)
    x, tg, out, per_image = _ref_inputs(head, 3)
    cfg = dict(dialect=dialect, classes=3, mask=[0, 1, 2], anchors=[tuple(a) for a in head.anchors],
               ignore_thresh=0.5, truth_thresh=1.0, rescore=1)
    ref, cost, _ = ref_yolo(cfg, out, per_image, (64, 64))
    g, loss, _ = grad_of(head, x, tg, fn=lambda h, x, t, hw: yolo_loss(h, x, t, hw, rescore=True))
    _check(g.reshape(ref.shape).numpy(), ref, f"rescore {dialect}")
    assert loss.item() == pytest.approx(cost, rel=1e-5)
    # default (target 1) differs exactly on the assigned objectness entries
    g1 = grad_of(head, x, tg)[0]
    diff = (g1 - g).reshape(2, 3, 8, 4, 4)
    assert torch.all(diff[:, :, :4] == 0) and torch.all(diff[:, :, 5:] == 0)
    assert bool((diff[:, :, 4] != 0).any())


def test_delta_normalizer_scales_only_the_gradient():
    net, head = yolo_head("alexeyab", "delta_normalizer=0.5")
    net1, head1 = yolo_head("alexeyab")
    x, tg, _, _ = _ref_inputs(head, 4)
    g, loss, _ = grad_of(head, x, tg)
    g1, loss1, _ = grad_of(head1, x, tg)
    assert torch.allclose(g, 0.5 * g1) and loss.item() == loss1.item()


# ------------------------------------------------------------------ region
def region_head(dialect: str, extra: str = ""):
    body = f"anchors=0.5,0.6, 1.2,1.1, 2.5,3.0\nnum=3\ncoords=4\n{extra}"
    return make_head("region", dialect, 3, 3, body)


def test_region_prior_term_and_class_rule_by_hand():
    # x = 0: logistic 0.5 everywhere, classes logistic 0.5 (pjreddie, softmax=0)
    x = torch.zeros(1, 24, 4, 4)
    x[0, 0 * 8 + 2, 0, 3] = 1.0  # raw w of anchor 0 at cell (3,0)
    truth = T([0, 2, 0.30, 0.30, 1.2 / 4, 1.1 / 4], [0, 1, 0.31, 0.32, 1.2 / 4, 1.1 / 4])
    for seen, prior in ((0, True), (12800, False)):
        net, head = region_head("pjreddie", "bias_match=1\nthresh=0.99\nobject_scale=5\nnoobject_scale=1")
        head.seen = seen
        d = -grad_of(head, x, truth)[0][0]
        # unassigned anchor 0 at cell (3,3): prior pulls x, y to .5 (already there) and
        # w, h to log(1) = 0 -> 0.01 * 0 deltas; objectness 1 * (0 - .5)
        assert d[0, 4, 3, 3] == -0.5
        assert torch.allclose(d[0, :4, 3, 3], torch.zeros(4), atol=1e-7)
        # ... and at cell (3,0), where the raw w is 1: .01 * (log(1) - 1) while seen < 12800
        assert d[0, 2, 0, 3].item() == pytest.approx(-0.01 if prior else 0.0, abs=1e-7)
        # both truths -> cell (1,1), anchor 1 (exact shape): second overwrites the box;
        # class rule (softmax=0): class-0 delta is -.5 != 0 after the first -> only the
        # second truth's class slot is rewritten: [-.5, 1 - .5, 1 - .5]
        s = 2 - 0.3 * 0.275
        assert d[1, 0, 1, 1].item() == pytest.approx(s * (0.31 * 4 - 1 - 0.5), rel=1e-5)
        assert d[1, 4, 1, 1].item() == pytest.approx(5 * (1 - 0.5))
        assert torch.allclose(d[1, 5:, 1, 1], torch.tensor([-0.5, 0.5, 0.5]))


def test_region_alexeyab_by_hand():
    # AlexeyAB's [region] keeps yolov2's logistic derivative in x, y, objectness deltas
    # and has no (2 - w*h) box scale; x = 0: logistic .5, derivative .25
    net, head = region_head("alexeyab", "bias_match=1\nthresh=0.99\nobject_scale=5\nsoftmax=1")
    head.seen = 12800
    d = -grad_of(head, torch.zeros(1, 24, 4, 4), T([0, 2, 0.30, 0.30, 1.2 / 4, 1.1 / 4]))[0][0]
    assert d[0, 4, 3, 3].item() == pytest.approx(1 * (0 - 0.5) * 0.25)
    assert d[1, 4, 1, 1].item() == pytest.approx(5 * (1 - 0.5) * 0.25)
    assert d[1, 0, 1, 1].item() == pytest.approx(1 * (0.30 * 4 - 1 - 0.5) * 0.25, rel=1e-5)
    assert torch.allclose(d[1, 5:, 1, 1], torch.tensor([-1 / 3, -1 / 3, 2 / 3]))  # softmax of 0s


def test_region_backward_modes():
    net, head = region_head("pjreddie", "softmax=1")
    torch.manual_seed(2)
    x = torch.randn(2, 24, 4, 4)
    tg = T([0, 1, 0.4, 0.4, 0.3, 0.3], [1, 0, 0.6, 0.2, 0.5, 0.4])
    g_delta = grad_of(head, x, tg)[0]
    g_cpu, loss_cpu, _ = grad_of(head, x, tg, fn=lambda *a: region_loss(*a, backward="cpu"))
    g_gpu = grad_of(head, x, tg, fn=lambda *a: region_loss(*a, backward="gpu"))[0]
    assert torch.all(g_cpu == 0)
    y = torch.sigmoid(x.view(2, 3, 8, 4, 4))
    expect = g_delta.clone()
    for e in (0, 1, 4):
        expect[:, :, e] = g_delta[:, :, e] * y[:, :, e] * (1 - y[:, :, e])
    assert torch.allclose(g_gpu, expect)


# ----------------------------------------------------------- Gaussian_yolo
def test_gaussian_yolo_delta_by_hand():
    # x = 0: means of x, y and every sigma 0.5, means of w, h 0, objectness and classes 0.5
    body = f"mask=0,1,2\nanchors={ANCHORS}\nnum=6"
    net, head = make_head("Gaussian_yolo", "alexeyab", 3, 3, body, per=12)
    x = torch.zeros(1, 36, 4, 4)
    g, loss, stats = grad_of(head, x, T([0, 1, 0.30, 0.30, 23 / 64, 27 / 64]))
    d = -g[0, 1, :, 1, 1]  # anchor 1 (exact shape) at cell (1, 1)
    scale = 2 - (23 / 64) * (27 / 64)

    def nll(diff, s=0.5):  # darknet's Gaussian delta of a mean and of its sigma
        e = diff / s
        nd = math.exp(-e * e / 2) / (math.sqrt(2 * math.pi) * (s + 0.3))
        temp = 0.5 / (nd + 1e-9) * nd * scale
        return temp * e / s, temp * (e * e / s - 1 / (s + 0.3))
    mx, sx = nll(0.30 * 4 - 1 - 0.5)
    mw, sw = nll(0.0)  # log(w * 64 / 23) - 0
    # iou_normalizer 0.75 on the means, uc_normalizer 1 on the sigmas; one positive
    # class delta -> the box deltas are divided by 1
    assert d[0].item() == pytest.approx(0.75 * mx, rel=1e-5)
    assert d[1].item() == pytest.approx(sx, rel=1e-5)
    assert d[4].item() == pytest.approx(0.75 * mw, abs=1e-6)
    assert d[5].item() == pytest.approx(sw, rel=1e-5)
    assert d[8].item() == pytest.approx(0.5)  # cls_normalizer * (1 - 0.5)
    assert torch.allclose(d[9:], torch.tensor([-0.5, 0.5, -0.5]))
    assert (-g)[0, 0, 8, 3, 3].item() == pytest.approx(-0.5)
    assert stats["count"] == 1


# ----------------------------------------------------------------- errors
def test_bad_targets_raise_darknet_errors_naming_the_layer():
    net, head = yolo_head("pjreddie")
    x = torch.zeros(1, 24, 4, 4)
    with pytest.raises(DataError, match=r"layer 1 \[yolo\].*shape \[M, 6\]"):
        head.loss(x, torch.zeros(3, 5), (64, 64))
    with pytest.raises(DataError, match=r"layer 1 \[yolo\].*image index 3"):
        head.loss(x, T([3, 0, 0.5, 0.5, 0.1, 0.1]), (64, 64))
    with pytest.raises(DataError, match=r"layer 1 \[yolo\].*class 7"):
        head.loss(x, T([0, 7, 0.5, 0.5, 0.1, 0.1]), (64, 64))
    with pytest.raises(DataError, match=r"outside the layer's grid"):
        head.loss(x, T([0, 1, 1.5, 3.5, 0.1, 0.1]), (64, 64))
    with pytest.raises(DarknetError, match="channels"):
        head.loss(torch.zeros(1, 20, 4, 4), T([0, 1, 0.5, 0.5, 0.1, 0.1]), (64, 64))
    # AlexeyAB skips labels with a class outside the cfg's classes (darknet's "continue")
    net, head = yolo_head("alexeyab")
    _, _, stats = grad_of(head, x, T([0, 7, 0.5, 0.5, 0.1, 0.1]))
    assert stats["count"] == 0


def test_every_head_type_has_a_loss():
    assert set(LOSSES) == {"yolo", "Gaussian_yolo", "region", "detection"}


# =========================================================================
# darknet_ref: a slow, literal, loop-by-loop transcription of darknet's [yolo]
# training delta (forward_yolo_layer of pjreddie, process_batch of AlexeyAB),
# plain Python floats, one prediction / truth at a time.  Independent of the
# vectorised implementation; used on tiny grids only.
# =========================================================================


# --------------------------------------------------------------- box.c, scalar
def overlap(x1, w1, x2, w2):
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def inter(a, b):
    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    return 0.0 if (w < 0 or h < 0) else w * h


def iou(a, b, dialect="alexeyab"):
    i = inter(a, b)
    u = a[2] * a[3] + b[2] * b[3] - i
    if dialect == "pjreddie":
        return i / u if u else float("nan")
    return 0.0 if (i == 0 or u == 0) else i / u


def enclose(a, b):
    w = max(a[0] + a[2] / 2, b[0] + b[2] / 2) - min(a[0] - a[2] / 2, b[0] - b[2] / 2)
    h = max(a[1] + a[3] / 2, b[1] + b[3] / 2) - min(a[1] - a[3] / 2, b[1] - b[3] / 2)
    return w, h


def giou(a, b):
    w, h = enclose(a, b)
    c = w * h
    v = iou(a, b)
    if c == 0:
        return v
    u = a[2] * a[3] + b[2] * b[3] - inter(a, b)
    return v - (c - u) / c


def diou(a, b):
    w, h = enclose(a, b)
    c = w * w + h * h
    v = iou(a, b)
    if c == 0:
        return v
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    return v - (d / c) ** 0.6


def ciou(a, b):
    w, h = enclose(a, b)
    c = w * w + h * h
    v = iou(a, b)
    if c == 0:
        return v
    d = ((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / c
    ar = 4 / math.pi ** 2 * (math.atan(b[2] / b[3]) - math.atan(a[2] / a[3])) ** 2
    alpha = ar / (1 - v + ar + 0.000001)
    return v - (d + alpha * ar)


KIND = {"iou": iou, "giou": giou, "diou": diou, "ciou": ciou}


def dx_box_iou(pred, truth, kind):
    """dx_box_iou of AlexeyAB's box.c, line by line (positive sizes)."""
    px, py, pw, ph = pred
    tx, ty, tw, th = truth
    p_t, p_b, p_l, p_r = py - ph / 2, py + ph / 2, px - pw / 2, px + pw / 2
    t_t, t_b, t_l, t_r = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2
    X = (p_b - p_t) * (p_r - p_l)
    Xhat = (t_b - t_t) * (t_r - t_l)
    Ih = min(p_b, t_b) - max(p_t, t_t)
    Iw = min(p_r, t_r) - max(p_l, t_l)
    I = Iw * Ih  # noqa: E741
    U = X + Xhat - I
    S = (px - tx) ** 2 + (py - ty) ** 2
    gCw = max(p_r, t_r) - min(p_l, t_l)
    gCh = max(p_b, t_b) - min(p_t, t_t)
    gC = gCw * gCh
    dX = {"t": -(p_r - p_l), "b": p_r - p_l, "l": -(p_b - p_t), "r": p_b - p_t}
    dI = {"t": -Iw if p_t > t_t else 0.0, "b": Iw if p_b < t_b else 0.0,
          "l": -Ih if p_l > t_l else 0.0, "r": Ih if p_r < t_r else 0.0}
    dU = {k: dX[k] - dI[k] for k in dX}
    dC = {"t": -gCw if p_t < t_t else 0.0, "b": gCw if p_b > t_b else 0.0,
          "l": -gCh if p_l < t_l else 0.0, "r": gCh if p_r > t_r else 0.0}
    d = {k: ((U * dI[k]) - (I * dU[k])) / (U * U) if U > 0 else 0.0 for k in dX}
    if kind == "giou":
        if gC > 0:
            d = {k: d[k] + ((gC * dU[k]) - (U * dC[k])) / (gC * gC) for k in d}
        if Iw <= 0 or Ih <= 0:
            d = {k: ((gC * dU[k]) - (U * dC[k])) / (gC * gC) for k in d}
    Cw = max(px + pw / 2, tx + tw / 2) - min(px - pw / 2, tx - tw / 2)
    Ch = max(py + ph / 2, ty + th / 2) - min(py - ph / 2, ty - th / 2)
    C = Cw * Cw + Ch * Ch
    ct, cb = (1.0 if p_t < t_t else 0.0), (1.0 if p_b > t_b else 0.0)
    cl, cr = (1.0 if p_l < t_l else 0.0), (1.0 if p_r > t_r else 0.0)
    dCw_dx, dCw_dw = cr - cl, 0.5 * cr + 0.5 * cl
    dCh_dy, dCh_dh = cb - ct, 0.5 * cb + 0.5 * ct
    gx, gy = d["l"] + d["r"], d["t"] + d["b"]
    gw, gh = d["r"] - d["l"], d["b"] - d["t"]
    if kind in ("diou", "ciou"):
        ex = (2 * (tx - px) * C - (2 * Cw * dCw_dx) * S) / (C * C)
        ey = (2 * (ty - py) * C - (2 * Ch * dCh_dy) * S) / (C * C)
        ew = (2 * Cw * dCw_dw) * S / (C * C)
        eh = (2 * Ch * dCh_dh) * S / (C * C)
        if kind == "ciou":
            dat = math.atan(tw / th) - math.atan(pw / ph)
            ar = 4 / math.pi ** 2 * dat * dat
            alpha = ar / (1 - I / U + ar + 0.000001)
            ew += alpha * 8 / math.pi ** 2 * dat * ph
            eh += alpha * -8 / math.pi ** 2 * dat * pw
        if C > 0:
            gx, gy, gw, gh = gx + ex, gy + ey, gw + ew, gh + eh
        if Iw <= 0 or Ih <= 0:
            gx, gy, gw, gh = ex, ey, ew, eh
    return gx, gy, gw, gh


def finite(v):
    return v if math.isfinite(v) else 0.0


def clip(v, m):
    return max(-m, min(m, v))


# ----------------------------------------------------------------- the layer
def ref_yolo(cfg: dict, out: np.ndarray, truths: list[list[tuple]], net_wh: tuple[int, int]):
    """darknet's l.delta and cost.

    ``cfg``: dialect, classes, mask, anchors [(w, h)], ignore_thresh, truth_thresh and the
    AlexeyAB options (iou_loss, iou_normalizer, obj_normalizer, cls_normalizer, max_delta,
    iou_thresh, iou_thresh_kind, label_smooth_eps, focal_loss, objectness_smooth,
    new_coords, mults, rescore).  ``out``: the layer output [N, A, K, H, W] (float64).
    ``truths``: per image, the boxes darknet reads: (x, y, w, h, class).
    """
    ab = cfg["dialect"] == "alexeyab"
    g = lambda k, d: cfg.get(k, d)  # noqa: E731
    C, mask, anchors = cfg["classes"], cfg["mask"], cfg["anchors"]
    iou_loss = g("iou_loss", "mse") if ab else "mse"
    inorm = g("iou_normalizer", 0.75) if ab else 1.0
    onorm = g("obj_normalizer", 1.0)
    cnorm = g("cls_normalizer", 1.0)
    max_delta = g("max_delta", math.inf)
    eps = g("label_smooth_eps", 0.0)
    smooth = g("objectness_smooth", 0)
    mults = g("mults", None)
    new_coords = g("new_coords", 0)
    rescore = g("rescore", 0)
    N, A, K, H, W = out.shape
    nw, nh = net_wh
    dia = cfg["dialect"]
    delta = np.zeros_like(out)
    st = dict(iou=0.0, iou_loss=0.0, giou_loss=0.0, count=0)

    def pred_box(b, a, j, i, n):
        o = out[b, a, :, j, i]
        if new_coords:
            bw = o[2] * o[2] * 4 * anchors[n][0] / nw
            bh = o[3] * o[3] * 4 * anchors[n][1] / nh
        else:
            bw = math.exp(o[2]) * anchors[n][0] / nw
            bh = math.exp(o[3]) * anchors[n][1] / nh
        return ((i + o[0]) / W, (j + o[1]) / H, bw, bh)

    def box_delta(truth, b, a, j, i, n, scale, norm):
        o = out[b, a, :, j, i]
        d = delta[b, a, :, j, i]
        pred = pred_box(b, a, j, i, n)
        v = iou(pred, truth, dia)
        gv = giou(pred, truth) if ab else v
        if ab and iou_loss != "mse":
            pp = (pred[0], pred[1], pred[2] or 1.0, pred[3] or 1.0)
            dx, dy, dw, dh = dx_box_iou(pp, truth, iou_loss)
            if not new_coords:
                dw *= math.exp(o[2])
                dh *= math.exp(o[3])
            vals = [finite(q * norm) for q in (dx, dy, dw, dh)]
            if math.isfinite(max_delta):
                vals = [clip(q, max_delta) for q in vals]
            for k in range(4):
                d[k] += vals[k]
            return v, gv
        tx, ty = truth[0] * W - i, truth[1] * H - j
        if new_coords:
            tw = math.sqrt(truth[2] * nw / (4 * anchors[n][0]))
            th = math.sqrt(truth[3] * nh / (4 * anchors[n][1]))
        else:
            tw = math.log(truth[2] * nw / anchors[n][0])
            th = math.log(truth[3] * nh / anchors[n][1])
        for k, tv in enumerate((tx, ty, tw, th)):
            if ab:
                d[k] += scale * (tv - o[k]) * norm
            else:
                d[k] = scale * (tv - o[k])
        return v, gv

    def class_delta(b, a, j, i, c, cm):
        o = out[b, a, 5:, j, i]
        d = delta[b, a, 5:, j, i]
        check = d[c] if ab else d[0]
        ys = lambda y: y * (1 - eps) + 0.5 * eps if eps else y  # noqa: E731
        if check:
            d[c] = ys(1.0) - o[c] if ab else 1 - o[c]
            if ab and mults:
                d[c] *= cm
            return
        if ab and g("focal_loss", 0):
            pt = o[c] + 1e-15
            grad = -(1 - pt) * (2 * pt * math.log(pt) + pt - 1)
            for k in range(C):
                d[k] = ((1.0 if k == c else 0.0) - o[k]) * 0.5 * grad
            return
        for k in range(C):
            d[k] = ys(1.0 if k == c else 0.0) - o[k] if ab else (1.0 if k == c else 0.0) - o[k]
            if ab and mults and k == c:
                d[c] *= cm * cnorm

    for b in range(N):
        tb = truths[b]
        for j in range(H):
            for i in range(W):
                for a in range(A):
                    pred = pred_box(b, a, j, i, mask[a])
                    best, best_t, best_match = 0.0, 0, 0.0
                    cmatch = any(out[b, a, 5 + k, j, i] > 0.25 for k in range(C))
                    for t, tr in enumerate(tb):
                        v = iou(pred, tr[:4], dia)
                        if ab and v > best_match and cmatch:
                            best_match = v
                        if v > best:
                            best, best_t = v, t
                    o4 = out[b, a, 4, j, i]
                    if ab:
                        delta[b, a, 4, j, i] = onorm * (0 - o4)
                        if best_match > cfg["ignore_thresh"]:
                            if smooth:
                                alt = onorm * (best_match - o4)
                                if alt > delta[b, a, 4, j, i]:
                                    delta[b, a, 4, j, i] = alt
                            else:
                                delta[b, a, 4, j, i] = 0
                    else:
                        delta[b, a, 4, j, i] = -o4
                        if best > cfg["ignore_thresh"]:
                            delta[b, a, 4, j, i] = 0
                    if best > cfg["truth_thresh"]:
                        tr = tb[best_t]
                        c = int(tr[4])
                        cm = mults[c] if mults else 1.0
                        if ab:
                            delta[b, a, 4, j, i] = onorm * (best * best - o4) if smooth else onorm * (1 - o4)
                        else:
                            delta[b, a, 4, j, i] = 1 - o4
                        class_delta(b, a, j, i, c, cm)
                        if ab and smooth:
                            delta[b, a, 5 + c, j, i] = cm * (best * best - out[b, a, 5 + c, j, i])
                        box_delta(tr[:4], b, a, j, i, mask[a], 2 - tr[2] * tr[3], inorm * cm)
        for tr in tb:
            c = int(tr[4])
            cm = mults[c] if mults else 1.0
            i, j = int(tr[0] * W), int(tr[1] * H)
            shift = (0.0, 0.0, tr[2], tr[3])
            best, best_n = 0.0, 0
            for n, (aw, ah) in enumerate(anchors):
                v = iou((0.0, 0.0, aw / nw, ah / nh), shift, dia)
                if v > best:
                    best, best_n = v, n
            assigned = [best_n] if best_n in mask else []
            if ab and g("iou_thresh", 1.0) < 1.0:
                for n, (aw, ah) in enumerate(anchors):
                    if n in mask and n != best_n:
                        if KIND[g("iou_thresh_kind", "iou")]((0.0, 0.0, aw / nw, ah / nh), shift) > cfg["iou_thresh"]:
                            assigned.append(n)
            for n in assigned:
                a = mask.index(n)
                v, gv = box_delta(tr[:4], b, a, j, i, n, 2 - tr[2] * tr[3], inorm * cm)
                o4 = out[b, a, 4, j, i]
                target = v if rescore else 1.0
                if ab:
                    val = cm * onorm * (target - o4)
                    if smooth:
                        if delta[b, a, 4, j, i] == 0:
                            delta[b, a, 4, j, i] = val
                    else:
                        delta[b, a, 4, j, i] = val
                else:
                    delta[b, a, 4, j, i] = target - o4
                class_delta(b, a, j, i, c, cm)
                st["iou"] += v
                st["iou_loss"] += 1 - v
                st["giou_loss"] += 1 - gv
                st["count"] += 1
        if ab and g("iou_thresh", 1.0) < 1.0:
            for a in range(A):
                for j in range(H):
                    for i in range(W):
                        if delta[b, a, 4, j, i] != 0:
                            npos = int((delta[b, a, 5:, j, i] > 0).sum())
                            if npos:
                                delta[b, a, :4, j, i] /= npos
    if ab and iou_loss != "mse":
        cnt = max(st["count"], 1)
        part = st["giou_loss"] if iou_loss == "giou" else st["iou_loss"]
        cost = inorm * part / cnt + onorm * float((delta[:, :, 4:] ** 2).sum())
    else:
        cost = float((delta ** 2).sum())
    return delta.reshape(N, A * K, H, W), cost, st
