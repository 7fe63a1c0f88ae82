"""darknet_py.boxes against hand-worked values and independent derivatives.

The expected numbers are worked out in the comments from the definitions in
darknet's box.c; derivatives are checked against autograd of the plain
formulas written here (float64)."""
from __future__ import annotations

import math

import pytest
import torch

from darknet_py import boxes as B


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


# ---------------------------------------------------------------- IoU family
def test_iou_hand_values():
    a = t(0.5, 0.5, 0.4, 0.4)
    b = t(0.6, 0.5, 0.4, 0.4)
    # overlap 0.3 x 0.4 = 0.12, union 0.16 + 0.16 - 0.12 = 0.2
    assert B.box_iou_cxcywh(a, b).item() == pytest.approx(0.6, abs=1e-6)
    assert B.box_iou_cxcywh(a, b, "pjreddie").item() == pytest.approx(0.6, abs=1e-6)
    # disjoint: intersection clamps to 0
    c = t(0.9, 0.9, 0.1, 0.1)
    assert B.box_iou_cxcywh(a, c).item() == 0.0
    # touching edges: overlap 0 in x -> 0
    d = t(0.9, 0.5, 0.4, 0.4)
    assert B.box_iou_cxcywh(a, d).item() == 0.0


def test_iou_dialects_differ_only_on_empty_union():
    z = t(0.5, 0.5, 0.0, 0.0)
    assert B.box_iou_cxcywh(z, z, "alexeyab").item() == 0.0
    assert math.isnan(B.box_iou_cxcywh(z, z, "pjreddie").item())
    with pytest.raises(ValueError, match="dialect"):
        B.box_iou_cxcywh(z, z, "yolov5")


def test_giou_diou_ciou_hand_values():
    a = t(0.2, 0.5, 0.2, 0.2)
    b = t(0.6, 0.5, 0.2, 0.2)
    # disjoint: iou 0; enclosing 0.6 x 0.2 = 0.12, union 0.08 -> giou = -(0.04/0.12)
    assert B.box_giou_cxcywh(a, b).item() == pytest.approx(-1 / 3, abs=1e-6)
    # diou: d^2 = 0.16, diagonal^2 = 0.36 + 0.04 = 0.4; darknet raises the ratio to 0.6
    assert B.box_diou_cxcywh(a, b).item() == pytest.approx(-(0.4 ** 0.6), abs=1e-6)
    assert B.box_diounms_cxcywh(a, b, 1.0).item() == pytest.approx(-0.4, abs=1e-6)
    # ciou: same aspect ratio -> v = 0 -> iou - d^2/c^2
    assert B.box_ciou_cxcywh(a, b).item() == pytest.approx(-0.4, abs=1e-6)
    # ciou with different aspect ratios, from the paper's formula
    p, g = t(0.5, 0.5, 0.4, 0.2), t(0.55, 0.5, 0.2, 0.4)
    # p spans x .3-.7, y .4-.6; g spans x .45-.65, y .3-.7: overlap .2 x .2,
    # union .08 + .08 - .04, enclosing .4 x .4
    iou = 0.04 / 0.12
    c2 = 0.4 ** 2 + 0.4 ** 2
    v = 4 / math.pi ** 2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    alpha = v / (1 - iou + v + 1e-6)
    assert B.box_ciou_cxcywh(p, g).item() == pytest.approx(iou - 0.05 ** 2 / c2 - alpha * v, abs=1e-6)
    # kinds by cfg name, unknown kinds raise
    assert B.box_iou_kind_cxcywh(p, g, "iou").item() == pytest.approx(iou, abs=1e-6)
    with pytest.raises(ValueError, match="unknown IoU kind"):
        B.box_iou_kind_cxcywh(p, g, "siou")


def test_broadcasting_gives_pairwise_table():
    a = torch.rand(5, 4) * 0.5 + 0.1
    b = torch.rand(3, 4) * 0.5 + 0.1
    table = B.box_iou_cxcywh(a[:, None], b[None])
    assert table.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            assert table[i, j] == B.box_iou_cxcywh(a[i], b[j])


def test_formats_round_trip_and_unknown_format():
    bx = t(0.5, 0.4, 0.2, 0.6)
    assert torch.allclose(B.convert(bx, "cxcywh", "xyxy"), t(0.4, 0.1, 0.6, 0.7))
    assert torch.allclose(B.convert(bx, "cxcywh", "xywh"), t(0.4, 0.1, 0.2, 0.6))
    assert torch.allclose(B.convert(B.convert(bx, "cxcywh", "xywh"), "xywh", "cxcywh"), bx)
    assert B.box_iou(t(0.4, 0.3, 0.6, 0.7), t(0.5, 0.3, 0.7, 0.7), fmt="xyxy").item() == \
        pytest.approx(0.1 * 0.4 / (0.08 + 0.08 - 0.04), abs=1e-6)
    with pytest.raises(ValueError, match="unknown box format"):
        B.convert(bx, "cxcywh", "yxyx")


# ------------------------------------------------------------ dx_box_iou
def _iou64(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    pl, pr, pt, pb = p[0] - p[2] / 2, p[0] + p[2] / 2, p[1] - p[3] / 2, p[1] + p[3] / 2
    gl, gr, gt, gb = g[0] - g[2] / 2, g[0] + g[2] / 2, g[1] - g[3] / 2, g[1] + g[3] / 2
    inter = (torch.minimum(pr, gr) - torch.maximum(pl, gl)) * (torch.minimum(pb, gb) - torch.maximum(pt, gt))
    return inter / (p[2] * p[3] + g[2] * g[3] - inter)


def _enclosure64(p, g):
    cw = torch.maximum(p[0] + p[2] / 2, g[0] + g[2] / 2) - torch.minimum(p[0] - p[2] / 2, g[0] - g[2] / 2)
    ch = torch.maximum(p[1] + p[3] / 2, g[1] + g[3] / 2) - torch.minimum(p[1] - p[3] / 2, g[1] - g[3] / 2)
    return cw, ch


def _grad(fn, p, g):
    p = p.double().clone().requires_grad_(True)
    fn(p, g.double()).backward()
    return p.grad


CASES = [(t(0.50, 0.50, 0.30, 0.20), t(0.55, 0.44, 0.25, 0.30)),  # no edge ties (subgradients)
         (t(0.30, 0.60, 0.40, 0.50), t(0.38, 0.50, 0.20, 0.20)),
         (t(0.52, 0.48, 0.10, 0.12), t(0.50, 0.50, 0.30, 0.40))]


@pytest.mark.parametrize("p,g", CASES)
def test_dx_box_iou_matches_derivative_of_iou(p, g):
    # darknet returns d/dx, d/dy and TWICE d/dw, d/dh ("not divided by 2")
    d = B.dx_box_iou_cxcywh(p, g, "iou").double()
    ref = _grad(_iou64, p, g) * torch.tensor([1, 1, 2, 2], dtype=torch.float64)
    assert torch.allclose(d, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("p,g", CASES)
def test_dx_box_iou_matches_derivative_of_giou(p, g):
    def giou(p, g):
        iou = _iou64(p, g)
        inter = iou * (p[2] * p[3] + g[2] * g[3]) / (1 + iou)
        u = p[2] * p[3] + g[2] * g[3] - inter
        cw, ch = _enclosure64(p, g)
        return iou - (cw * ch - u) / (cw * ch)
    d = B.dx_box_iou_cxcywh(p, g, "giou").double()
    ref = _grad(giou, p, g) * torch.tensor([1, 1, 2, 2], dtype=torch.float64)
    assert torch.allclose(d, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("p,g", CASES)
def test_dx_box_iou_diou_ciou_follow_darknets_formula(p, g):
    # darknet adds (2 (g - p) C - S dC/dx) / C^2 to x, y (the sign of the C term is
    # darknet's own, not the derivative of -S/C) and S dC/dw / C^2 to w, h, with
    # S the squared centre distance and C the squared enclosing diagonal; CIoU adds
    # alpha * 8/pi^2 (atan(wg/hg) - atan(w/h)) * (h, -w) to (w, h).
    pd, gd = p.double(), g.double()
    S = ((pd[:2] - gd[:2]) ** 2).sum()

    def c2(p, g):
        cw, ch = _enclosure64(p, g)
        return cw * cw + ch * ch
    C = c2(pd, gd)
    dC = _grad(c2, p, g)
    base = _grad(_iou64, p, g) * torch.tensor([1, 1, 2, 2], dtype=torch.float64)
    pen = torch.stack([(2 * (gd[0] - pd[0]) * C - dC[0] * S) / C ** 2,
                       (2 * (gd[1] - pd[1]) * C - dC[1] * S) / C ** 2,
                       dC[2] * S / C ** 2, dC[3] * S / C ** 2])
    d = B.dx_box_iou_cxcywh(p, g, "diou").double()
    assert torch.allclose(d, base + pen, atol=1e-4, rtol=1e-4)
    iou = _iou64(pd, gd)
    dat = math.atan(g[2] / g[3]) - math.atan(p[2] / p[3])
    v = 4 / math.pi ** 2 * dat ** 2
    alpha = v / (1 - iou + v + 1e-6)
    ar = torch.stack([torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64),
                      alpha * 8 / math.pi ** 2 * dat * pd[3], -alpha * 8 / math.pi ** 2 * dat * pd[2]])
    d = B.dx_box_iou_cxcywh(p, g, "ciou").double()
    assert torch.allclose(d, base + pen + ar, atol=1e-4, rtol=1e-4)


def test_dx_box_iou_disjoint_boxes_use_the_penalty_alone():
    p, g = t(0.2, 0.5, 0.2, 0.2), t(0.7, 0.6, 0.2, 0.2)
    # worked by hand with darknet's unclamped quantities:
    # pred l,r,t,b = .1,.3,.4,.6; truth .6,.8,.5,.7; Iw = -.3, Ih = .1, I = -.03,
    # U = .04 + .04 + .03 = .11, C = .7 * .3 = .21.
    # iou (darknet does not clamp I, so disjoint boxes still get a gradient):
    # left edge dI = 0, dU = -.2; right edge dI = Ih = .1, dU = .2 - .1 -> (U dI - I dU) / U^2
    I_, U_ = -0.03, 0.11
    dl_iou = (0 - I_ * -0.2) / U_ ** 2
    dr_iou = (U_ * 0.1 - I_ * 0.1) / U_ ** 2
    d = B.dx_box_iou_cxcywh(p, g, "iou")
    assert d[0].item() == pytest.approx(dl_iou + dr_iou, rel=1e-4)
    assert d[2].item() == pytest.approx(dr_iou - dl_iou, rel=1e-4)
    # giou on disjoint boxes: the enclosing-area term alone
    # left edge:  dU = -(b - t) = -.2, dC = -Ch = -.3 -> (C dU - U dC) / C^2
    # right edge: dU = .2 - Ih = .1,  dC = 0       -> C dU / C^2
    C, U = 0.21, 0.11
    dl = (C * -0.2 - U * -0.3) / C ** 2
    dr = (C * 0.1) / C ** 2
    d = B.dx_box_iou_cxcywh(p, g, "giou")
    assert d[0].item() == pytest.approx(dl + dr, rel=1e-4)
    assert d[2].item() == pytest.approx(dr - dl, rel=1e-4)
    with pytest.raises(ValueError, match="iou_loss"):
        B.dx_box_iou_cxcywh(p, g, "mse")


def test_rmse():
    assert B.box_rmse_cxcywh(t(0, 0, 0, 0), t(0.3, 0.4, 0, 0)).item() == pytest.approx(0.5)
