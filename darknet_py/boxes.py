"""Box arithmetic exactly as darknet's box.c computes it, named by box format.

Every ``*_cxcywh`` function takes boxes as tensors ``[..., 4]`` in centre format
``(x, y, w, h)`` and broadcasts like any elementwise torch op, so
``box_iou_cxcywh(a[:, None], b[None])`` is the ``[N, M]`` pairwise table.
Results keep the dtype of the inputs; the float32 operations are done in the
same order as darknet's C so that the results match it to the last bit or two
(``pow``/``atan``, which darknet evaluates in double, are evaluated in float64
and rounded back).

Two dialects of ``box_iou`` exist:

* ``pjreddie``: ``intersection / union`` (NaN for two empty boxes);
* ``alexeyab``: 0 when the intersection or the union is 0.

They agree whenever the union is positive.  The (G/D/C)IoU variants and
``dx_box_iou`` are AlexeyAB's.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

#: the box formats ``convert`` understands
FORMATS = ("cxcywh", "xyxy", "xywh")

_FOUR_OVER_PI2 = 4.0 / (math.pi * math.pi)
_EIGHT_OVER_PI2 = 8.0 / (math.pi * math.pi)


# ---------------------------------------------------------------- conversions
def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(FORMATS)}")


def convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``Tensor[..., 4]`` between ``cxcywh`` (darknet's centre format),
    ``xyxy`` (corners) and ``xywh`` (top-left corner + size)."""
    _check_format(in_fmt)
    _check_format(out_fmt)
    if in_fmt == out_fmt:
        return boxes
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    elif in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        return torch.stack([x1, y1, x2, y2], -1)
    if out_fmt == "xywh":
        return torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (x, y, w, h) -> (left, top, right, bottom) as darknet's ``to_tblr``."""
    return convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return convert(boxes, "xyxy", "cxcywh")


# ------------------------------------------------------------ overlap / area
def _overlap(x1: Tensor, w1: Tensor, x2: Tensor, w2: Tensor) -> Tensor:
    """Signed 1-D overlap length (negative when disjoint), darknet's ``overlap``."""
    left = torch.maximum(x1 - w1 / 2, x2 - w2 / 2)
    right = torch.minimum(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def box_intersection_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """Intersection area; 0 when the boxes are disjoint along either axis."""
    w = _overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
    h = _overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
    area = w * h
    return torch.where((w < 0) | (h < 0), torch.zeros_like(area), area)


def box_union_cxcywh(a: Tensor, b: Tensor, inter: Tensor | None = None) -> Tensor:
    """``a.w*a.h + b.w*b.h - intersection`` in darknet's operation order."""
    if inter is None:
        inter = box_intersection_cxcywh(a, b)
    return a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter


# ----------------------------------------------------------------------- IoU
def box_iou_cxcywh(a: Tensor, b: Tensor, dialect: str = "alexeyab") -> Tensor:
    """IoU of centre-format boxes.  ``dialect="pjreddie"`` is the plain ratio,
    ``"alexeyab"`` returns 0 where the intersection or the union is 0."""
    inter = box_intersection_cxcywh(a, b)
    union = box_union_cxcywh(a, b, inter)
    if dialect == "pjreddie":
        return inter / union
    if dialect != "alexeyab":
        raise ValueError(f"unknown darknet dialect {dialect!r} (pjreddie or alexeyab)")
    bad = (inter == 0) | (union == 0)
    return torch.where(bad, torch.zeros_like(inter), inter / torch.where(bad, torch.ones_like(union), union))


def _enclosing(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box enclosing a and b (``box_c``)."""
    top = torch.minimum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)
    bot = torch.maximum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
    left = torch.minimum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)
    right = torch.maximum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
    return right - left, bot - top


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return num / torch.where(den == 0, torch.ones_like(den), den)


def box_giou_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU: ``iou - (C - U) / C`` with C the enclosing area (iou if C == 0)."""
    w, h = _enclosing(a, b)
    c = w * h
    iou = box_iou_cxcywh(a, b, "alexeyab")
    u = box_union_cxcywh(a, b)
    return torch.where(c == 0, iou, iou - _safe_div(c - u, c))


def _centre_dist2(a: Tensor, b: Tensor) -> Tensor:
    dx = a[..., 0] - b[..., 0]
    dy = a[..., 1] - b[..., 1]
    return dx * dx + dy * dy


def box_diounms_cxcywh(a: Tensor, b: Tensor, beta: float = 0.6) -> Tensor:
    """AlexeyAB's ``box_diounms``: ``iou - (d^2 / c^2) ** beta`` with d the centre
    distance and c the enclosing diagonal (iou if c == 0)."""
    w, h = _enclosing(a, b)
    c = w * w + h * h
    iou = box_iou_cxcywh(a, b, "alexeyab")
    d = _centre_dist2(a, b)
    # darknet: pow(float, double) in double, rounded to float
    term = torch.pow(_safe_div(d, c).double(), float(beta)).to(iou.dtype)
    return torch.where(c == 0, iou, iou - term)


def box_diou_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """AlexeyAB's ``box_diou`` (used by greedynms): the DIoU with the distance
    term raised to the power 0.6, as darknet hard-codes it."""
    return box_diounms_cxcywh(a, b, 0.6)


def _aspect_term(truth: Tensor, pred: Tensor) -> Tensor:
    """``atan(w_gt/h_gt) - atan(w/h)`` in float64 (darknet evaluates atan in double)."""
    ar_gt = (truth[..., 2] / truth[..., 3]).double()
    ar_pred = (pred[..., 2] / pred[..., 3]).double()
    return torch.atan(ar_gt) - torch.atan(ar_pred)


def box_ciou_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """Complete IoU of prediction ``a`` against truth ``b``:
    ``iou - d^2/c^2 - alpha * v`` (iou if c == 0)."""
    w, h = _enclosing(a, b)
    c = w * w + h * h
    iou = box_iou_cxcywh(a, b, "alexeyab")
    d = _safe_div(_centre_dist2(a, b), c)
    dat = _aspect_term(b, a)
    ar_loss = (_FOUR_OVER_PI2 * dat * dat).to(iou.dtype)
    alpha = (ar_loss.double() / ((1 - iou + ar_loss).double() + 0.000001)).to(iou.dtype)
    return torch.where(c == 0, iou, iou - (d + alpha * ar_loss))


#: ``iou_thresh_kind`` / ``iou_loss`` name -> IoU function of (pred, truth)
IOU_KINDS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "iou": box_iou_cxcywh,
    "mse": box_iou_cxcywh,  # darknet's box_iou_kind falls back to the IoU
    "giou": box_giou_cxcywh,
    "diou": box_diou_cxcywh,
    "ciou": box_ciou_cxcywh,
}


def box_iou_kind_cxcywh(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """``box_iou_kind``: the IoU flavour named by a cfg value (iou, giou, diou, ciou)."""
    try:
        fn = IOU_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown IoU kind {kind!r}; expected one of {', '.join(IOU_KINDS)}") from None
    return fn(a, b)


def box_rmse_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance of the (x, y, w, h) vectors (``box_rmse``, yolov1's fallback match)."""
    d = (a - b).double()
    return torch.sqrt((d * d).sum(-1)).to(a.dtype)


# ------------------------------------------------------------------ gradient
def dx_box_iou_cxcywh(pred: Tensor, truth: Tensor, kind: str) -> Tensor:
    """AlexeyAB's ``dx_box_iou``: ``Tensor[..., 4]`` = (dx, dy, dw, dh), the
    direction darknet moves ``pred`` (x, y, w, h) to increase the (G/D/C)IoU with
    ``truth``.  It is darknet's hand-written derivative (w, h not halved, the
    GIoU/DIoU/CIoU penalty alone for disjoint boxes), not autograd's.  ``kind`` is
    ``iou``, ``giou``, ``diou`` or ``ciou``."""
    if kind not in ("iou", "giou", "diou", "ciou"):
        raise ValueError(f"unknown iou_loss {kind!r}; expected iou, giou, diou or ciou")
    px, py, pw, ph = pred.unbind(-1)
    tx, ty, tw, th = truth.unbind(-1)
    top0, bot0 = py - ph / 2, py + ph / 2
    left0, right0 = px - pw / 2, px + pw / 2
    p_t, p_b = torch.minimum(top0, bot0), torch.maximum(top0, bot0)
    p_l, p_r = torch.minimum(left0, right0), torch.maximum(left0, right0)
    t_t, t_b = ty - th / 2, ty + th / 2
    t_l, t_r = tx - tw / 2, tx + tw / 2

    X = (p_b - p_t) * (p_r - p_l)
    Xhat = (t_b - t_t) * (t_r - t_l)
    Ih = torch.minimum(p_b, t_b) - torch.maximum(p_t, t_t)
    Iw = torch.minimum(p_r, t_r) - torch.maximum(p_l, t_l)
    I = Iw * Ih  # noqa: E741 - darknet's name; not clamped (two negative sides give I > 0)
    U = X + Xhat - I
    S = (px - tx) * (px - tx) + (py - ty) * (py - ty)
    gCw = torch.maximum(p_r, t_r) - torch.minimum(p_l, t_l)
    gCh = torch.maximum(p_b, t_b) - torch.minimum(p_t, t_t)
    gC = gCw * gCh

    zero = torch.zeros_like(X)
    dX_t, dX_b = -(p_r - p_l), p_r - p_l
    dX_l, dX_r = -(p_b - p_t), p_b - p_t
    dI_t = torch.where(p_t > t_t, -Iw, zero)
    dI_b = torch.where(p_b < t_b, Iw, zero)
    dI_l = torch.where(p_l > t_l, -Ih, zero)
    dI_r = torch.where(p_r < t_r, Ih, zero)
    dU_t, dU_b, dU_l, dU_r = dX_t - dI_t, dX_b - dI_b, dX_l - dI_l, dX_r - dI_r
    dC_t = torch.where(p_t < t_t, -gCw, zero)
    dC_b = torch.where(p_b > t_b, gCw, zero)
    dC_l = torch.where(p_l < t_l, -gCh, zero)
    dC_r = torch.where(p_r > t_r, gCh, zero)

    upos = U > 0
    UU = torch.where(upos, U * U, torch.ones_like(U))

    def iou_part(dI: Tensor, dU: Tensor) -> Tensor:
        return torch.where(upos, ((U * dI) - (I * dU)) / UU, zero)

    d_t, d_b = iou_part(dI_t, dU_t), iou_part(dI_b, dU_b)
    d_l, d_r = iou_part(dI_l, dU_l), iou_part(dI_r, dU_r)
    # darknet's "corner selection" assigns sequentially (the second line reads the
    # already-updated first value); with positive sizes it is the identity
    tb = top0 < bot0
    d_t = torch.where(tb, d_t, d_b)
    d_b = torch.where(tb, d_b, d_t)
    lr = left0 < right0
    d_l = torch.where(lr, d_l, d_r)
    d_r = torch.where(lr, d_r, d_l)

    disjoint = (Iw <= 0) | (Ih <= 0)
    if kind == "giou":
        CC = torch.where(gC > 0, gC * gC, torch.ones_like(gC))

        def c_part(dU: Tensor, dC: Tensor) -> Tensor:
            return ((gC * dU) - (U * dC)) / CC

        g_t, g_b, g_l, g_r = c_part(dU_t, dC_t), c_part(dU_b, dC_b), c_part(dU_l, dC_l), c_part(dU_r, dC_r)
        cpos = gC > 0
        d_t, d_b = torch.where(cpos, d_t + g_t, d_t), torch.where(cpos, d_b + g_b, d_b)
        d_l, d_r = torch.where(cpos, d_l + g_l, d_l), torch.where(cpos, d_r + g_r, d_r)
        # disjoint boxes: the enclosing term alone (darknet divides even when C == 0)
        d_t, d_b = torch.where(disjoint, ((gC * dU_t) - (U * dC_t)) / (gC * gC), d_t), \
            torch.where(disjoint, ((gC * dU_b) - (U * dC_b)) / (gC * gC), d_b)
        d_l, d_r = torch.where(disjoint, ((gC * dU_l) - (U * dC_l)) / (gC * gC), d_l), \
            torch.where(disjoint, ((gC * dU_r) - (U * dC_r)) / (gC * gC), d_r)

    p_dx = d_l + d_r
    p_dy = d_t + d_b
    p_dw = d_r - d_l
    p_dh = d_b - d_t

    if kind in ("diou", "ciou"):
        Ct = torch.minimum(py - ph / 2, ty - th / 2)
        Cb = torch.maximum(py + ph / 2, ty + th / 2)
        Cl = torch.minimum(px - pw / 2, tx - tw / 2)
        Cr = torch.maximum(px + pw / 2, tx + tw / 2)
        Cw, Ch = Cr - Cl, Cb - Ct
        C = Cw * Cw + Ch * Ch
        one = torch.ones_like(X)
        ct, cb = (p_t < t_t).to(X.dtype), (p_b > t_b).to(X.dtype)
        cl, cr = (p_l < t_l).to(X.dtype), (p_r > t_r).to(X.dtype)
        dCw_dx, dCw_dw = cr - cl, cr * 0.5 - cl * -0.5
        dCh_dy, dCh_dh = cb - ct, cb * 0.5 - ct * -0.5
        # dCw_dy = dCw_dh = dCh_dx = dCh_dw = 0
        CC = C * C
        pen_x = (2 * (tx - px) * C - (2 * Cw * dCw_dx + 2 * Ch * zero) * S) / CC
        pen_y = (2 * (ty - py) * C - (2 * Cw * zero + 2 * Ch * dCh_dy) * S) / CC
        pen_w = (2 * Cw * dCw_dw + 2 * Ch * zero) * S / CC
        pen_h = (2 * Cw * zero + 2 * Ch * dCh_dh) * S / CC
        if kind == "ciou":
            dat = _aspect_term(truth, pred)
            ar_loss = (_FOUR_OVER_PI2 * dat * dat).to(X.dtype)
            iou_ratio = I / U
            alpha = (ar_loss.double() / ((one - iou_ratio + ar_loss).double() + 0.000001)).to(X.dtype)
            ar_dw = (_EIGHT_OVER_PI2 * dat * ph.double()).to(X.dtype)
            ar_dh = (-_EIGHT_OVER_PI2 * dat * pw.double()).to(X.dtype)
            pen_w = pen_w + alpha * ar_dw
            pen_h = pen_h + alpha * ar_dh
        cpos = C > 0
        p_dx = torch.where(disjoint, pen_x, torch.where(cpos, p_dx + pen_x, p_dx))
        p_dy = torch.where(disjoint, pen_y, torch.where(cpos, p_dy + pen_y, p_dy))
        p_dw = torch.where(disjoint, pen_w, torch.where(cpos, p_dw + pen_w, p_dw))
        p_dh = torch.where(disjoint, pen_h, torch.where(cpos, p_dh + pen_h, p_dh))
    return torch.stack([p_dx, p_dy, p_dw, p_dh], -1)


def box_iou(a: Tensor, b: Tensor, fmt: str = "cxcywh", dialect: str = "alexeyab") -> Tensor:
    """IoU of ``Tensor[..., 4]`` boxes given in ``fmt`` (broadcasting)."""
    _check_format(fmt)
    return box_iou_cxcywh(convert(a, fmt, "cxcywh"), convert(b, fmt, "cxcywh"), dialect)
