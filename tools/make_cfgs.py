#!/usr/bin/env python3
"""Write the cfg files in cfg/ from compact descriptions of each architecture.

The architectures are the published YOLO networks (Darknet-53 with a
three-scale FPN for YOLOv3, the tiny variants, CSP-tiny for YOLOv4-tiny) plus
``tiny-shapes.cfg``, a small network for the built-in training job.  The
tests compare every generated file option by option with darknet's own cfg.

    python tools/make_cfgs.py            # rewrites cfg/*.cfg
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NET_COMMON = [("channels", 3), ("momentum", 0.9), ("decay", 0.0005), ("angle", 0),
              ("saturation", 1.5), ("exposure", 1.5), ("hue", ".1")]


class Cfg:
    """Accumulates sections; ``len(self)`` is the index the next layer gets."""

    def __init__(self, **net):
        self.sections: list[tuple[str, list[tuple[str, object]]]] = [("net", list(net.items()))]

    def __len__(self) -> int:
        return len(self.sections) - 1

    def add(self, kind: str, **opts) -> int:
        self.sections.append((kind, [(k.rstrip("_"), v) for k, v in opts.items()]))
        return len(self) - 1

    def conv(self, filters: int, size: int = 3, stride: int = 1, bn: bool = True,
             act: str = "leaky") -> int:
        opts = {"batch_normalize": 1} if bn else {}
        return self.add("convolutional", **opts, filters=filters, size=size, stride=stride, pad=1,
                        activation=act)

    def text(self) -> str:
        out = []
        for kind, opts in self.sections:
            out.append(f"[{kind}]")
            out += [f"{k}={_fmt(v)}" for k, v in opts]
            out.append("")
        return "\n".join(out)


def _fmt(v: object) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


def _net(width: int, batch: int, subdivisions: int, lr: float, max_batches: int,
         steps: tuple[int, int], **extra) -> dict:
    net = {"batch": batch, "subdivisions": subdivisions, "width": width, "height": width}
    net.update(NET_COMMON)
    net.update(learning_rate=lr, burn_in=1000, max_batches=max_batches, policy="steps",
               steps=list(steps), scales=[".1", ".1"])
    net.update(extra)
    return net


V3_ANCHORS = [10, 13, 16, 30, 33, 23, 30, 61, 62, 45, 59, 119, 116, 90, 156, 198, 373, 326]
TINY_ANCHORS = [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]


def _yolo(c: Cfg, mask, anchors, classes: int, **extra) -> int:
    return c.add("yolo", mask=list(mask), anchors=anchors, classes=classes,
                 num=len(anchors) // 2, jitter=".3", ignore_thresh=".7", truth_thresh=1, **extra)


def yolov3(classes: int = 80) -> Cfg:
    """Darknet-53 backbone (residual stages 1, 2, 8, 8, 4) and three detection scales."""
    c = Cfg(**_net(608, 64, 16, 0.001, 500200, (400000, 450000)))
    c.conv(32)
    for filters, blocks in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        c.conv(filters, 3, 2)
        for _ in range(blocks):
            c.conv(filters // 2, 1)
            c.conv(filters, 3)
            c.add("shortcut", from_=-3, activation="linear")
    out = 3 * (classes + 5)
    taps = (61, 36)  # outputs of the last 512- and 256-channel stages
    for scale, filters in enumerate((512, 256, 128)):
        if scale:
            c.add("route", layers=-4)
            c.conv(filters, 1)
            c.add("upsample", stride=2)
            c.add("route", layers=[-1, taps[scale - 1]])
        for _ in range(3):
            c.conv(filters, 1)
            c.conv(filters * 2, 3)
        c.conv(out, 1, bn=False, act="linear")
        _yolo(c, range(6 - 3 * scale, 9 - 3 * scale), V3_ANCHORS, classes, random=1)
    return c


def yolov3_tiny(classes: int = 80, width: int = 416, filters: tuple = (16, 32, 64, 128, 256, 512),
                net: dict | None = None, anchors=TINY_ANCHORS, random: int = 1) -> Cfg:
    """Six 3x3 conv + maxpool stages, a 2x2/1 maxpool, and two detection scales."""
    c = Cfg(**(net or _net(width, 1, 1, 0.001, 500200, (400000, 450000))))
    for i, f in enumerate(filters):
        c.conv(f)
        c.add("maxpool", size=2, stride=2 if i < len(filters) - 1 else 1)
    tap = 2 * (len(filters) - 2)  # the conv of the 16x-downsampled stage
    c.conv(filters[-1] * 2)
    c.conv(filters[-2], 1)
    c.conv(filters[-1])
    out = 3 * (classes + 5)
    c.conv(out, 1, bn=False, act="linear")
    _yolo(c, (3, 4, 5), anchors, classes, random=random)
    c.add("route", layers=-4)
    c.conv(filters[-3], 1)
    c.add("upsample", stride=2)
    c.add("route", layers=[-1, tap])
    c.conv(filters[-2])
    c.conv(out, 1, bn=False, act="linear")
    _yolo(c, (0, 1, 2), anchors, classes, random=random)
    return c


def yolov4_tiny(classes: int = 80) -> Cfg:
    """Two strided convs, three CSP-tiny stages (half-channel route groups), two scales."""
    c = Cfg(**_net(416, 64, 1, 0.00261, 2000200, (1600000, 1800000)))
    c.conv(32, 3, 2)
    c.conv(64, 3, 2)
    for i, f in enumerate((64, 128, 256)):
        c.conv(f)
        c.add("route", layers=-1, groups=2, group_id=1)
        c.conv(f // 2)
        c.conv(f // 2)
        c.add("route", layers=[-1, -2])
        c.conv(f, 1)
        c.add("route", layers=[-6, -1])
        c.add("maxpool", size=2, stride=2)
    c.conv(512)
    c.conv(256, 1)
    c.conv(512)
    out = 3 * (classes + 5)
    head = dict(jitter=".3", scale_x_y=1.05, cls_normalizer=1.0, iou_normalizer=0.07,
                iou_loss="ciou", ignore_thresh=".7", truth_thresh=1, random=0, resize=1.5,
                nms_kind="greedynms", beta_nms=0.6)
    c.conv(out, 1, bn=False, act="linear")
    c.add("yolo", mask=[3, 4, 5], anchors=TINY_ANCHORS, classes=classes, num=6, **head)
    c.add("route", layers=-4)
    c.conv(128, 1)
    c.add("upsample", stride=2)
    c.add("route", layers=[-1, 23])
    c.conv(256)
    c.conv(out, 1, bn=False, act="linear")
    c.add("yolo", mask=[1, 2, 3], anchors=TINY_ANCHORS, classes=classes, num=6, **head)
    return c


def yolov2_tiny(classes: int = 80) -> Cfg:
    c = Cfg(**_net(416, 1, 1, 0.001, 500200, (400000, 450000)))
    for i, f in enumerate((16, 32, 64, 128, 256, 512)):
        c.conv(f)
        c.add("maxpool", size=2, stride=2 if i < 5 else 1)
    c.conv(1024)
    c.conv(512)
    c.conv(5 * (classes + 5), 1, bn=False, act="linear")
    c.add("region", anchors=["0.57273", "0.677385", "1.87446", "2.06253", "3.33843", "5.47434",
                             "7.88282", "3.52778", "9.77052", "9.16828"],
          bias_match=1, classes=classes, coords=4, num=5, softmax=1, jitter=".2", rescore=0,
          object_scale=5, noobject_scale=1, class_scale=1, coord_scale=1, absolute=1,
          thresh=".6", random=1)
    return c


def tiny_shapes(classes: int = 4) -> Cfg:
    """A small yolov3-tiny-shaped network for the built-in training job (160x160,
    CPU friendly): narrower stages, anchors for its 26-66 px shapes, and no
    multi-scale training (pjreddie's random=1 would train at 320-608 px)."""
    net = {"batch": 16, "subdivisions": 1, "width": 160, "height": 160, **dict(NET_COMMON),
           "learning_rate": 0.005, "burn_in": 50, "max_batches": 700, "policy": "steps",
           "steps": [600, 650], "scales": [".1", ".1"]}
    anchors = [24, 24, 30, 30, 37, 37, 45, 45, 55, 55, 68, 68]  # the shapes are 26-66 px
    return yolov3_tiny(classes, 160, (16, 32, 48, 64, 96, 128), net=net, anchors=anchors, random=0)


CFGS = {
    "yolov3.cfg": yolov3,
    "yolov3-tiny.cfg": yolov3_tiny,
    "yolov4-tiny.cfg": yolov4_tiny,
    "yolov2-tiny.cfg": yolov2_tiny,
    "tiny-shapes.cfg": tiny_shapes,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "cfg"), help="folder to write into")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in CFGS.items():
        (out / name).write_text(fn().text())
        print(f"wrote {out / name}")
    builtin = ROOT / "darknet_py" / "data" / "builtin" / "tiny-shapes.cfg"  # the built-in job's, packaged
    builtin.write_text(tiny_shapes().text())
    print(f"wrote {builtin}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
