"""Darknet's target assignment as pure, vectorised functions.

Nothing here computes a loss term: these functions decide which truths darknet
reads, which anchor and cell each truth goes to, which predictions are ignored,
and in which order several truths hit the same prediction slot.  They also
convert our ``Tensor[M, 6]`` targets (image, class, cx, cy, w, h) to and from
darknet's ``net.truth`` buffers.

Darknet reads the truths of an image in buffer order and stops at the first
box whose x is exactly 0 (``if(!truth.x) break``) or after ``max`` boxes, so a
target row with ``cx == 0`` hides every later row of its image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...boxes import box_iou_cxcywh
from ...errors import DataError


# ------------------------------------------------------------------ targets
def check_targets(targets: Tensor, batch: int, where: str) -> Tensor:
    """Validate ``targets`` (``Tensor[M, 6]``) for a batch of ``batch`` images;
    returns it as float32.  ``where`` names the layer in error messages."""
    if not isinstance(targets, Tensor):
        raise DataError(f"{where}: targets must be a Tensor[M, 6], got {type(targets).__name__}")
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise DataError(f"{where}: targets must have shape [M, 6] (image, class, cx, cy, w, h), "
                        f"got {tuple(targets.shape)}")
    t = targets.detach().float()
    if t.numel() == 0:
        return t
    img = t[:, 0]
    bad = (img < 0) | (img >= batch) | (img != torch.floor(img))
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise DataError(f"{where}: targets row {row} has image index {float(img[row]):g}, "
                        f"outside 0..{batch - 1} (the batch has {batch} images)")
    if not bool(torch.isfinite(t[:, 1:]).all()):
        row = int(torch.nonzero(~torch.isfinite(t[:, 1:]).all(1))[0, 0])
        raise DataError(f"{where}: targets row {row} is not finite: {t[row].tolist()}")
    return t


@dataclass(frozen=True)
class Truths:
    """The truths darknet reads, in darknet's order (image by image, buffer order).

    ``img``, ``cls``: ``Tensor[M]`` long (class truncated toward zero like C's
    float->int); ``box``: ``Tensor[M, 4]`` float32 (cx, cy, w, h); ``rank``:
    ``Tensor[M]`` position of the truth within its image; ``per_image``: the
    largest number of truths in one image.
    """

    img: Tensor
    cls: Tensor
    box: Tensor
    rank: Tensor
    per_image: int

    @property
    def count(self) -> int:
        return int(self.img.numel())

    def subset(self, keep: Tensor) -> "Truths":
        """The truths where ``keep`` is true, re-ranked within each image."""
        img = self.img[keep]
        rank = _rank_in_group(img)
        per = int(rank.max()) + 1 if rank.numel() else 0
        return Truths(img, self.cls[keep], self.box[keep], rank, per)


def _rank_in_group(group: Tensor) -> Tensor:
    """For each element, how many earlier elements have the same group id."""
    if group.numel() == 0:
        return group.clone()
    order = torch.sort(group, stable=True).indices
    g = group[order]
    pos = torch.arange(g.numel(), device=g.device)
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - first
    return rank


def select_truths(targets: Tensor, batch: int, max_boxes: int, where: str = "loss",
                  device: torch.device | None = None) -> Truths:
    """The rows of ``targets`` darknet would read: per image, in order, at most
    ``max_boxes`` of them and none from the first row with ``cx == 0`` on
    (moved to ``device`` when given)."""
    t = check_targets(targets, batch, where)
    if device is not None:
        t = t.to(device)
    img = t[:, 0].long()
    if t.shape[0] == 0:
        empty = img.new_zeros(0)
        return Truths(empty, empty, t.new_zeros(0, 4), empty, 0)
    rank = _rank_in_group(img)
    # count the x == 0 rows at or before each row of the same image
    order = torch.sort(img * (t.shape[0] + 1) + rank).indices  # image-major, in order
    z = (t[order, 2] == 0).long()
    zc = torch.cumsum(z, 0)
    g = img[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    before = torch.cummax(torch.where(start, zc - z, torch.zeros_like(zc)), 0).values
    dead = torch.empty_like(zc)
    dead[order] = zc - before
    keep = (rank < max_boxes) & (dead == 0)
    cls = torch.trunc(t[keep, 1]).long()
    box = t[keep, 2:6].contiguous()
    img = img[keep]
    rank = rank[keep]
    per = int(rank.max()) + 1 if rank.numel() else 0
    return Truths(img, cls, box, rank, per)


def pad_by_image(truths: Truths, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Truth boxes laid out per image: ``(boxes [N, T, 4], valid [N, T], index [N, T])``
    with ``T = truths.per_image`` (at least 1) and ``index`` the row in ``truths``."""
    T = max(truths.per_image, 1)
    dev = truths.box.device
    boxes = torch.zeros(batch, T, 4, device=dev)
    valid = torch.zeros(batch, T, dtype=torch.bool, device=dev)
    index = torch.zeros(batch, T, dtype=torch.long, device=dev)
    if truths.count:
        boxes[truths.img, truths.rank] = truths.box
        valid[truths.img, truths.rank] = True
        index[truths.img, truths.rank] = torch.arange(truths.count, device=dev)
    return boxes, valid, index


# ----------------------------------------------------------- truth buffers
def targets_to_truth_buffer(targets: Tensor, batch: int, max_boxes: int, box_floats: int = 5) -> Tensor:
    """Darknet's ``net.truth`` for [yolo]/[region]: ``Tensor[N, max_boxes*box_floats]``
    with boxes ``[x, y, w, h, class]`` (+ ``track_id = 0`` when ``box_floats == 6``,
    AlexeyAB), zero padded.  Rows beyond ``max_boxes`` per image are dropped."""
    if box_floats not in (5, 6):
        raise ValueError("box_floats is 5 (pjreddie) or 6 (AlexeyAB)")
    t = check_targets(targets, batch, "truth buffer")
    buf = torch.zeros(batch, max_boxes, box_floats, device=t.device)
    if t.shape[0]:
        img = t[:, 0].long()
        rank = _rank_in_group(img)
        ok = rank < max_boxes
        row = torch.cat([t[:, 2:6], t[:, 1:2]], 1)
        if box_floats == 6:
            row = torch.cat([row, torch.zeros_like(row[:, :1])], 1)
        buf[img[ok], rank[ok]] = row[ok]
    return buf.reshape(batch, max_boxes * box_floats)


def truth_buffer_to_targets(buffer: Tensor, box_floats: int = 5, max_boxes: int | None = None) -> Tensor:
    """Inverse of :func:`targets_to_truth_buffer`: ``Tensor[N, L]`` -> ``Tensor[M, 6]``
    with the boxes darknet reads (up to the first ``x == 0``, at most ``max_boxes``)."""
    if box_floats not in (5, 6):
        raise ValueError("box_floats is 5 (pjreddie) or 6 (AlexeyAB)")
    buf = torch.as_tensor(buffer).float()
    n = buf.shape[0]
    per = buf.shape[1] // box_floats
    if max_boxes is not None:
        per = min(per, max_boxes)
    b = buf[:, : per * box_floats].reshape(n, per, box_floats)
    alive = torch.cumprod((b[:, :, 0] != 0).long(), 1).bool()
    img = torch.arange(n, device=buf.device)[:, None].expand(n, per)
    rows = torch.cat([img[..., None].float(), b[..., 4:5], b[..., 0:4]], 2)
    return rows[alive]


def targets_to_detection_truth(targets: Tensor, batch: int, side: int, classes: int) -> Tensor:
    """The yolov1 ``[detection]`` truth grid darknet's ``fill_truth_region`` builds:
    ``Tensor[N, side*side*(1+classes+4)]``, per cell ``[is_obj, one-hot, x, y, w, h]``
    with x, y relative to the cell; boxes with w or h < .005 are skipped and a
    second box in an occupied cell is dropped (the first one wins)."""
    t = check_targets(targets, batch, "detection truth")
    per = 1 + classes + 4
    buf = torch.zeros(batch, side * side, per, device=t.device)
    if t.shape[0]:
        ok = (t[:, 4] >= 0.005) & (t[:, 5] >= 0.005)
        t = t[ok]
        col = (t[:, 2] * side).long()
        row = (t[:, 3] * side).long()
        cell = col + row * side
        img = t[:, 0].long()
        key = img * side * side + cell
        first = _rank_in_group(key) == 0
        t, img, cell, col, row = t[first], img[first], cell[first], col[first], row[first]
        cls = torch.trunc(t[:, 1]).long()
        buf[img, cell, 0] = 1
        has = cls < classes
        buf[img[has], cell[has], 1 + cls[has]] = 1
        buf[img, cell, 1 + classes] = t[:, 2] * side - col.float()
        buf[img, cell, 2 + classes] = t[:, 3] * side - row.float()
        buf[img, cell, 3 + classes] = t[:, 4]
        buf[img, cell, 4 + classes] = t[:, 5]
    return buf.reshape(batch, -1)


def detection_truth_to_targets(buffer: Tensor, side: int, classes: int) -> Tensor:
    """Inverse of :func:`targets_to_detection_truth` (cells with ``is_obj`` set, cell order)."""
    buf = torch.as_tensor(buffer).float()
    n = buf.shape[0]
    b = buf.reshape(n, side * side, 1 + classes + 4)
    img, cell = torch.nonzero(b[:, :, 0] != 0, as_tuple=True)
    v = b[img, cell]
    col = (cell % side).float()
    row = (cell // side).float()
    cls = torch.argmax(v[:, 1:1 + classes], 1).float()
    x = (v[:, 1 + classes] + col) / side
    y = (v[:, 2 + classes] + row) / side
    return torch.stack([img.float(), cls, x, y, v[:, 3 + classes], v[:, 4 + classes]], 1)


# ---------------------------------------------------------------- matching
def first_argmax_above_zero(values: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """darknet's ``best = 0; if (v > best) {best = v; idx = k}`` scan: the first
    maximum, (0, index 0) when nothing is positive; NaN never wins."""
    v = torch.nan_to_num(values, nan=0.0)
    v = torch.where(v > 0, v, torch.zeros_like(v))
    best, idx = torch.max(v, dim=dim)  # ties: the first index
    return best, torch.where(best > 0, idx, torch.zeros_like(idx))


def best_anchor(wh: Tensor, anchors_wh: Tensor, dialect: str) -> Tensor:
    """Index of the anchor whose shape (both boxes centred) has the highest IoU with
    each truth: ``wh [M, 2]``, ``anchors_wh [A, 2]`` (same units) -> ``Tensor[M]``."""
    if wh.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=wh.device)
    zeros_t = torch.zeros_like(wh)
    truth = torch.cat([zeros_t, wh], 1)[:, None, :]
    anc = torch.cat([torch.zeros_like(anchors_wh), anchors_wh], 1)[None, :, :]
    iou = box_iou_cxcywh(anc, truth, dialect)
    return first_argmax_above_zero(iou, 1)[1]


def shape_ious(wh: Tensor, anchors_wh: Tensor, iou_fn) -> Tensor:
    """``iou_fn(anchor_shape, truth_shape)`` for centred boxes: ``Tensor[M, A]``."""
    truth = torch.cat([torch.zeros_like(wh), wh], 1)[:, None, :]
    anc = torch.cat([torch.zeros_like(anchors_wh), anchors_wh], 1)[None, :, :]
    return iou_fn(anc, truth)


def truth_cells(box: Tensor, grid_w: int, grid_h: int) -> tuple[Tensor, Tensor]:
    """``(i, j)``: darknet's ``(int)(x * w)``, ``(int)(y * h)`` (truncation toward 0)."""
    return (box[:, 0] * grid_w).long(), (box[:, 1] * grid_h).long()


def best_truth_per_prediction(pred: Tensor, truth_boxes: Tensor, valid: Tensor,
                              dialect: str) -> tuple[Tensor, Tensor]:
    """For every prediction, the best IoU with a truth of its image and that truth's
    position (first maximum; 0 / 0 when no IoU is positive).

    ``pred [N, P, 4]``, ``truth_boxes [N, T, 4]``, ``valid [N, T]`` -> ``([N, P], [N, P])``.

    Same arithmetic as :func:`~darknet_py.boxes.box_iou_cxcywh` (either dialect: the
    two differ only on empty unions, which never beat a positive IoU), laid out
    ``[N, T, P]`` so the long axis is contiguous, with in-place steps.
    """
    N, P, _ = pred.shape
    if truth_boxes.shape[1] == 0 or not bool(valid.any()):
        return pred.new_zeros(N, P), torch.zeros(N, P, dtype=torch.long, device=pred.device)
    far = torch.tensor([-10.0, -10.0, 1.0, 1.0], device=pred.device)
    tb = torch.where(valid[..., None], truth_boxes, far)                 # padding never overlaps
    px, py, pw, ph = (pred[..., k][:, None, :] for k in range(4))         # [N, 1, P]
    tx, ty, tw, th = (tb[..., k][:, :, None] for k in range(4))          # [N, T, 1]
    iw = torch.minimum(px + pw / 2, tx + tw / 2)
    iw -= torch.maximum(px - pw / 2, tx - tw / 2)
    ih = torch.minimum(py + ph / 2, ty + th / 2)
    ih -= torch.maximum(py - ph / 2, ty - th / 2)
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))                     # darknet: 0 if w<0 or h<0
    union = (pw * ph + tw * th).sub_(inter)
    iou = inter.div_(union)                                              # [N, T, P]
    if not (bool((pw * ph > 0).all()) and bool((tw * th > 0).all())):
        iou.nan_to_num_(nan=0.0)  # 0/0 for two empty boxes (pjreddie's NaN never wins)
    best, idx = torch.max(iou, dim=1)                                    # ties: first truth
    pos = best > 0
    return torch.where(pos, best, torch.zeros_like(best)), torch.where(pos, idx, torch.zeros_like(idx))


def order_in_slot(slot: Tensor, key: Tensor) -> Tensor:
    """Rank of each assignment among those hitting the same slot, in ``key`` order:
    darknet processes them sequentially, so rank r is the r-th write to the slot."""
    if slot.numel() == 0:
        return slot.clone()
    order = torch.sort(key, stable=True).indices
    rank_sorted = _rank_in_group(slot[order])
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


# ---------------------------------------------------------- shared records
@dataclass
class BestTruths:
    """Per prediction (flat index ``s``, ``per_image`` of them per image): the best
    IoU with a truth of its image (``iou [S]``) and that truth's position among
    the image's truths (``pos [S]``; meaningful where ``iou > 0``)."""

    iou: Tensor
    pos: Tensor
    index: Tensor          # [N, T] row in the Truths of each (image, position)
    per_image: int

    def truth_of(self, slots: Tensor) -> Tensor:
        """The row in the :class:`Truths` of the best truth of each prediction in ``slots``."""
        return self.index[slots // self.per_image, self.pos[slots]]


def best_truths(pred: Tensor, tr: Truths, N: int, dialect: str) -> BestTruths:
    """For each prediction box ``pred [N, P, 4]``, its best-overlapping truth."""
    tb, tv, tidx = pad_by_image(tr, N)
    best_iou, best_pos = best_truth_per_prediction(pred, tb, tv, dialect)
    return BestTruths(best_iou.reshape(-1), best_pos.reshape(-1), tidx, pred.shape[1])


@dataclass
class Assignments:
    """Phase 2's writes, one per (truth, anchor) pair darknet processes: ``truth``
    (row in the truths), ``anchor`` (index into all anchors), ``slot`` (flat
    prediction index), ``col``/``row`` (the cell) and ``wave`` (how many earlier
    writes hit the same slot), all ``Tensor[R]`` long."""

    truth: Tensor
    anchor: Tensor
    slot: Tensor
    col: Tensor
    row: Tensor
    wave: Tensor

    @staticmethod
    def none(device: torch.device) -> "Assignments":
        e = torch.zeros(0, dtype=torch.long, device=device)
        return Assignments(e, e, e, e, e, e)

    @property
    def waves(self) -> int:
        return int(self.wave.max()) + 1 if self.wave.numel() else 0


@dataclass
class TruthStats:
    """Sums over the assigned truths, for darknet's printed averages."""

    iou: float = 0.0
    giou_loss: float = 0.0
    iou_loss: float = 0.0
    cat: float = 0.0
    obj: float = 0.0
    r50: int = 0
    r75: int = 0
    count: int = 0

    def add(self, iou: Tensor, giou: Tensor, cat: Tensor, obj: Tensor) -> None:
        self.iou += float(iou.sum())
        self.iou_loss += float((1 - iou).sum())
        self.giou_loss += float((1 - giou).sum())
        self.cat += float(cat.sum())
        self.obj += float(obj.sum())
        self.r50 += int((iou > 0.5).sum())
        self.r75 += int((iou > 0.75).sum())
        self.count += int(iou.numel())
