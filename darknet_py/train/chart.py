"""``chart.png``: AlexeyAB's training chart, average loss (blue, left axis) and
mAP@0.5 (red, right axis, 0-100 %) against the iteration, with labelled axes
and round-number ticks.  Drawn with OpenCV (already a dependency) and written
atomically."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLUE, RED, BLACK, GRID = (200, 0, 0), (0, 0, 200), (0, 0, 0), (225, 225, 225)  # BGR


def nice_ticks(top: float, target: int = 8) -> list[float]:
    """Ticks 0, s, 2s, ... up to ``top`` (>= ``top``), s a 1, 2 or 5 times a power of ten
    giving about ``target`` intervals."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [k * step for k in range(n + 1)]


@dataclass(frozen=True)
class Layout:
    """Where the plot area lies in the picture and how values map to pixels."""

    width: int = 1000
    height: int = 600
    left: int = 80
    right: int = 80
    top: int = 50
    bottom: int = 70
    x_max: float = 1.0          #: the last iteration on the axis
    loss_max: float = 1.0       #: the top of the loss axis

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom

    def x(self, iteration: float) -> int:
        return self.left + int(round(self.plot_w * iteration / self.x_max))

    def y(self, fraction: float) -> int:
        """The row of ``fraction`` (0 = the bottom axis, 1 = the top) of the plot."""
        return self.top + self.plot_h - int(round(self.plot_h * min(max(fraction, 0.0), 1.0)))

    def y_loss(self, v: float) -> int:
        return self.y(v / self.loss_max)

    def y_map(self, m: float) -> int:
        return self.y(m)


def layout_for(losses: list[tuple[int, float]], max_batches: int) -> tuple[Layout, list[float],
                                                                         list[float]]:
    """The layout, the x (iteration) ticks and the loss ticks for this data."""
    x_ticks = nice_ticks(max(1, max_batches), 10)
    finite = [v for _, v in losses if math.isfinite(v)]
    loss_ticks = nice_ticks(max(finite + [1e-6]), 8)
    return Layout(x_max=x_ticks[-1], loss_max=loss_ticks[-1]), x_ticks, loss_ticks


def _fmt(v: float) -> str:
    return f"{v:.4g}" if v < 1e4 else f"{v:.0f}"


def render_chart(losses: list[tuple[int, float]], maps: list[tuple[int, float]],
                 max_batches: int) -> np.ndarray:
    """The chart as a BGR ``Array[H, W, 3]`` uint8 (``maps`` values in [0, 1])."""
    import cv2
    lay, x_ticks, loss_ticks = layout_for(losses, max_batches)
    img = np.full((lay.height, lay.width, 3), 255, np.uint8)
    font, small = cv2.FONT_HERSHEY_SIMPLEX, 0.42
    x0, x1 = lay.left, lay.left + lay.plot_w
    y0, y1 = lay.top, lay.top + lay.plot_h
    for v in loss_ticks:                                   # left axis: loss, with grid lines
        y = lay.y_loss(v)
        cv2.line(img, (x0, y), (x1, y), GRID, 1)
        cv2.line(img, (x0 - 5, y), (x0, y), BLACK, 1)
        label = _fmt(v)
        (tw, _), _ = cv2.getTextSize(label, font, small, 1)
        cv2.putText(img, label, (x0 - 8 - tw, y + 4), font, small, BLUE, 1, cv2.LINE_AA)
    for k in range(0, 101, 10):                            # right axis: mAP %
        y = lay.y_map(k / 100)
        cv2.line(img, (x1, y), (x1 + 5, y), BLACK, 1)
        cv2.putText(img, f"{k}", (x1 + 8, y + 4), font, small, RED, 1, cv2.LINE_AA)
    for v in x_ticks:                                      # bottom axis: iterations
        x = lay.x(v)
        cv2.line(img, (x, y0), (x, y1), GRID, 1)
        cv2.line(img, (x, y1), (x, y1 + 5), BLACK, 1)
        label = _fmt(v)
        (tw, _), _ = cv2.getTextSize(label, font, small, 1)
        cv2.putText(img, label, (x - tw // 2, y1 + 20), font, small, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK, 1)
    cv2.putText(img, "iteration", (x0 + lay.plot_w // 2 - 35, lay.height - 18), font, 0.55, BLACK, 1,
                cv2.LINE_AA)
    cv2.putText(img, "avg loss", (8, y0 - 15), font, 0.55, BLUE, 1, cv2.LINE_AA)
    cv2.putText(img, "mAP@0.5 (%)", (lay.width - 125, y0 - 15), font, 0.55, RED, 1, cv2.LINE_AA)
    if max_batches < lay.x_max:                            # where training stops
        xm = lay.x(max_batches)
        cv2.line(img, (xm, y0), (xm, y1), (160, 160, 160), 1)

    pts = [(lay.x(i), lay.y_loss(v)) for i, v in losses if math.isfinite(v)]
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, BLUE, 1, cv2.LINE_AA)
    mpts = [(lay.x(i), lay.y_map(m)) for i, m in maps]
    for a, b in zip(mpts, mpts[1:]):
        cv2.line(img, a, b, RED, 2, cv2.LINE_AA)
    for p in mpts:
        cv2.circle(img, p, 3, RED, -1)
    title = f"max_batches {max_batches}"
    if losses:
        title += f"   iteration {losses[-1][0]}   avg loss {losses[-1][1]:.4f}"
    if maps:
        title += f"   mAP@0.5 {100 * maps[-1][1]:.2f} %"
    cv2.putText(img, title, (x0 + 90, 25), font, 0.55, BLACK, 1, cv2.LINE_AA)
    return img


def draw_chart(path: str | Path, losses: list[tuple[int, float]], maps: list[tuple[int, float]],
               max_batches: int) -> None:
    """Write :func:`render_chart` as a PNG at ``path`` (atomically)."""
    import cv2

    from ..files import atomic_write
    ok, buf = cv2.imencode(".png", render_chart(losses, maps, max_batches))
    if ok:
        atomic_write(Path(path), buf.tobytes())
