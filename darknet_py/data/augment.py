"""Darknet's detection augmentation (``load_data_detection``), both dialects.

One augmentation = random parameters drawn by the dialect's rules, then the
pixels and the boxes transformed with those same parameters:

* pjreddie (data.c at f6afaab): the image is scaled to ``nw x nh`` with a new
  aspect ratio ``(W + U(-dw, dw)) / (H + U(-dh, dh))`` (``dw = jitter*W``), its
  longer side filling the network size, and placed at a random offset on a
  0.5 canvas; then hue/saturation/exposure; then a random horizontal flip.
  Boxes: ``correct_boxes(-dx/w, -dy/h, nw/w, nh/h)``.
* AlexeyAB (data.c, OpenCV path): a crop ``pleft, pright, ptop, pbot`` each
  ``U(-dw, dw)`` pixels (``dw = int(jitter*W)``, plus the ``resize`` term, plus
  the ``letter_box`` padding), mean-colour fill outside the image, resize to
  the network size, flip (when ``[net] flip=1``), HSV jitter, then (``[net]
  blur``) a Gaussian blur of the background or the whole image and (``[net]
  gaussian_noise``) additive noise, each drawn per image.  Boxes:
  ``correct_boxes(pleft/W/sx, ptop/H/sy, 1/sx, 1/sy)`` with ``sx = swidth/W``.
  Mosaic (:mod:`~darknet_py.data.mosaic`) and mixup
  (:mod:`~darknet_py.data.mixup`) combine several such images.

Then the boxes are shuffled, corrected, clipped and dropped by the dialect's
``fill_truth_detection`` (:mod:`darknet_py.data.truth`).  Parameters can be
given instead of drawn (``augment_with``), which is how the tests check a
crop/flip worked out by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import DataError
from ..layers.heads import HEAD_TYPES
from . import image_ops
from .rng import coin, rand_int, rand_scale, rand_uniform
from .truth import FILL_TRUTH, F32, correct_boxes, randomize_boxes

#: AlexeyAB [net] augmentations this loader does not implement (reported, not silently used)
UNSUPPORTED_NET_KEYS = ("angle", "track", "contrastive")

#: AlexeyAB's ``net->mixup`` modes: 0 none, 1 mixup, 2 cutmix, 3 mosaic, 4 cutmix + mosaic
MIXUP, CUTMIX, MOSAIC, CUTMIX_MOSAIC = 1, 2, 3, 4


def net_mixup_mode(mixup: int, cutmix: int, mosaic: int) -> int:
    """AlexeyAB's ``parse_net_options``: ``mixup`` is read as is, then replaced by
    4 when mosaic and cutmix are both set, else 2 for cutmix, else 3 for mosaic
    (so ``mixup=1`` together with ``mosaic=1`` is mosaic alone)."""
    if mosaic and cutmix:
        return CUTMIX_MOSAIC
    if cutmix:
        return CUTMIX
    if mosaic:
        return MOSAIC
    return int(mixup)


def detector_mixup_mode(mode: int) -> int:
    """What AlexeyAB's detector loader (``load_data_detection``, OpenCV build) does
    with ``net->mixup``: cutmix is not supported for detectors (it prints so), so
    2 becomes 0 and 4 becomes 3 (mosaic).  Returns 0, 1 (mixup) or 3 (mosaic)."""
    mode = {CUTMIX: 0, CUTMIX_MOSAIC: MOSAIC}.get(mode, mode)
    if mode not in (0, MIXUP, MOSAIC):
        raise DataError(f"[net] mixup={mode}: darknet's detector knows mixup=0/1 only "
                        f"(mosaic and cutmix have their own keys)")
    return mode


def _unused_mixup_keys(net) -> tuple[str, ...]:
    """The keys of mixup/cutmix/mosaic an AlexeyAB detector does not use: cutmix
    always (darknet: "cutmix=1 - isn't supported for Detector"), mixup when mosaic
    or cutmix replaces it."""
    mixup, cutmix, mosaic = (int(net.get(k, 0) or 0) for k in ("mixup", "cutmix", "mosaic"))
    unused = []
    if mixup and (cutmix or mosaic):
        unused.append("mixup")
    if cutmix:
        unused.append("cutmix")
    return tuple(unused)


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation options darknet's detector training reads from a cfg."""

    dialect: str
    classes: int
    max_boxes: int
    jitter: float = 0.2
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = True
    resize: float = 1.0
    letter_box: bool = False
    mosaic: bool = False
    mosaic_bound: bool = False
    #: AlexeyAB mixup (used by 1/2 of the samples): blend with a second image 50/50
    mixup: bool = False
    #: AlexeyAB [net] blur: 0 off, 1 background blur, > 1 also whole-image blur
    blur: int = 0
    #: AlexeyAB [net] gaussian_noise: standard deviation (uint8 units), 0 off
    gaussian_noise: int = 0
    ignored: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_cfg(cls, cfg) -> "AugmentConfig":
        """From a parsed :class:`~darknet_py.cfg.Cfg`: [net] hue/saturation/
        exposure/flip/letter_box/mosaic/mixup/cutmix/blur/gaussian_noise, and
        jitter/max/resize/classes of the last detection layer (the layer
        darknet's ``train_detector`` reads).  mixup/cutmix/mosaic combine into
        one mode as AlexeyAB's parser and detector loader do
        (:func:`net_mixup_mode`, :func:`detector_mixup_mode`); keys without effect
        (cutmix; mixup next to mosaic/cutmix; :data:`UNSUPPORTED_NET_KEYS`) are
        listed in ``ignored`` (pjreddie's parser does not read the AlexeyAB keys:
        the cfg parser reports them as unused)."""
        heads = [s for s in cfg.layers if s.type in HEAD_TYPES]
        if not heads:
            raise DataError(f"{cfg.file}: the cfg has no [yolo]/[region]/[detection] layer, "
                            f"so it cannot be trained as a detector")
        head, net = heads[-1], cfg.net
        ab = cfg.dialect == "alexeyab"
        ignored = tuple(k for k in UNSUPPORTED_NET_KEYS
                        if k in net and net.get(k) not in (0, 0.0, None))
        mode = 0
        if ab:
            ignored = _unused_mixup_keys(net) + ignored
            mode = detector_mixup_mode(net_mixup_mode(
                *(int(net.get(k, 0) or 0) for k in ("mixup", "cutmix", "mosaic"))))
        return cls(
            dialect=cfg.dialect, classes=int(head["classes"]), max_boxes=int(head["max"]),
            jitter=float(head["jitter"]), hue=float(net["hue"]),
            saturation=float(net["saturation"]) or 1.0,  # darknet: 0 means 1
            exposure=float(net["exposure"]) or 1.0,
            flip=bool(net["flip"]) if ab else True,
            resize=float(head.get("resize", 1.0)) if ab else 1.0,
            letter_box=bool(net["letter_box"]) if ab else False,
            mosaic=mode == MOSAIC,
            mosaic_bound=bool(net["mosaic_bound"]) if ab else False,
            mixup=mode == MIXUP,
            blur=int(net.get("blur", 0) or 0) if ab else 0,
            gaussian_noise=int(net.get("gaussian_noise", 0) or 0) if ab else 0,
            ignored=ignored)


@dataclass(frozen=True)
class Colour:
    """Colour jitter: hue shift (turns), saturation and exposure factors."""

    dhue: float = 0.0
    dsat: float = 1.0
    dexp: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: AugmentConfig) -> "Colour":
        return cls(rand_uniform(rng, -cfg.hue, cfg.hue), rand_scale(rng, cfg.saturation),
                   rand_scale(rng, cfg.exposure))


@dataclass(frozen=True)
class Placement:
    """pjreddie: the image scaled to ``nw x nh`` at ``(dx, dy)`` of the network input."""

    nw: float
    nh: float
    dx: float
    dy: float
    flip: bool = False
    colour: Colour = Colour()

    def correct_args(self, ow: int, oh: int, w: int, h: int) -> tuple[float, float, float, float]:
        return (-F32(self.dx) / F32(w), -F32(self.dy) / F32(h),
                F32(self.nw) / F32(w), F32(self.nh) / F32(h))


@dataclass(frozen=True)
class CropJitter:
    """AlexeyAB: the crop ``[pleft, W - pright) x [ptop, H - pbot)`` (pixels,
    negative = padding) of the original image, resized to the network input;
    then ``blur`` (the drawn value, before darknet limits it by the smallest
    box: see :func:`effective_blur`) and ``noise`` (standard deviation, drawn
    from a generator seeded with ``noise_seed``)."""

    pleft: int
    pright: int
    ptop: int
    pbot: int
    flip: bool = False
    colour: Colour = Colour()
    blur: int = 0
    noise: int = 0
    noise_seed: int = 0

    def size(self, ow: int, oh: int) -> tuple[int, int]:
        return ow - self.pleft - self.pright, oh - self.ptop - self.pbot

    def correct_args(self, ow: int, oh: int, w: int, h: int) -> tuple[float, float, float, float]:
        swidth, sheight = self.size(ow, oh)
        sx, sy = F32(swidth) / F32(ow), F32(sheight) / F32(oh)
        dx = (F32(self.pleft) / F32(ow)) / sx
        dy = (F32(self.ptop) / F32(oh)) / sy
        return dx, dy, F32(1.0 / float(sx)), F32(1.0 / float(sy))


class Augmenter(Protocol):
    """One dialect's augmentation: draw parameters, transform the pixels."""

    def sample(self, rng: np.random.Generator, ow: int, oh: int, w: int, h: int,
               cfg: AugmentConfig): ...

    def image(self, img: np.ndarray, params, w: int, h: int,
              truth: np.ndarray | None = None) -> np.ndarray:
        """uint8 RGB ``Array[H, W, 3]`` -> float32 ``Array[h, w, 3]`` in [0, 1];
        ``truth`` ``Array[K, 5]``: the image's boxes after augmentation (AlexeyAB's
        blur keeps them sharp)."""


class PjreddieAugmenter:
    def sample(self, rng: np.random.Generator, ow: int, oh: int, w: int, h: int,
               cfg: AugmentConfig) -> Placement:
        dw, dh = F32(cfg.jitter) * F32(ow), F32(cfg.jitter) * F32(oh)
        new_ar = (F32(ow) + F32(rand_uniform(rng, -dw, dw))) / (F32(oh) + F32(rand_uniform(rng, -dh, dh)))
        if new_ar < 1:
            nh = F32(h)
            nw = nh * new_ar
        else:
            nw = F32(w)
            nh = nw / new_ar
        dx = F32(rand_uniform(rng, 0.0, float(F32(w) - nw)))
        dy = F32(rand_uniform(rng, 0.0, float(F32(h) - nh)))
        colour = Colour.sample(rng, cfg)
        return Placement(float(nw), float(nh), float(dx), float(dy), coin(rng), colour)

    def image(self, img: np.ndarray, p: Placement, w: int, h: int,
              truth: np.ndarray | None = None) -> np.ndarray:
        canvas = np.full((h, w, 3), 0.5, np.float32)
        out = image_ops.place_image(image_ops.to_float(img), int(p.nw), int(p.nh),
                                    int(p.dx), int(p.dy), canvas)
        c = p.colour
        out = image_ops.distort_hsv_float(out, c.dhue, c.dsat, c.dexp)
        return image_ops.flip_horizontal(out) if p.flip else out


def _precalc(lo: float, hi: float, r: float) -> float:
    """AlexeyAB's ``rand_precalc_random``: ``r`` in [0, 1] mapped onto [lo, hi]."""
    if hi < lo:
        lo, hi = hi, lo
    return r * (hi - lo) + lo


class AlexeyABAugmenter:
    def sample(self, rng: np.random.Generator, ow: int, oh: int, w: int, h: int,
               cfg: AugmentConfig) -> CropJitter:
        dw, dh = int(ow * cfg.jitter), int(oh * cfg.jitter)
        down = cfg.resize if cfg.resize <= 1.0 else 1.0 / cfg.resize
        up = cfg.resize if cfg.resize >= 1.0 else 1.0 / cfg.resize
        min_rdw, min_rdh = int(ow * (1 - 1 / down) / 2), int(oh * (1 - 1 / down) / 2)
        max_rdw, max_rdh = int(ow * (1 - 1 / up) / 2), int(oh * (1 - 1 / up) / 2)
        resize_r1, resize_r2 = float(rng.random()), float(rng.random())
        r1, r2, r3, r4 = (float(v) for v in rng.random(4))
        flip = coin(rng) if cfg.flip else False
        colour = Colour.sample(rng, cfg)
        blur = draw_blur(rng, cfg.blur)
        noise, noise_seed = draw_noise(rng, cfg.gaussian_noise)
        pleft, pright = int(_precalc(-dw, dw, r1)), int(_precalc(-dw, dw, r2))
        ptop, pbot = int(_precalc(-dh, dh, r3)), int(_precalc(-dh, dh, r4))
        hi_w, hi_h = (0, 0) if cfg.resize < 1 else (max_rdw, max_rdh)
        pleft = int(pleft + _precalc(min_rdw, hi_w, resize_r1))
        pright = int(pright + _precalc(min_rdw, hi_w, resize_r2))
        ptop = int(ptop + _precalc(min_rdh, hi_h, resize_r1))
        pbot = int(pbot + _precalc(min_rdh, hi_h, resize_r2))
        if cfg.letter_box:
            net_ar = w / h
            if (ow / oh) / net_ar > 1:  # the crop must be taller
                delta = (ow / net_ar - oh) / 2
                ptop, pbot = int(ptop - delta), int(pbot - delta)
            else:
                delta = (oh * net_ar - ow) / 2
                pleft, pright = int(pleft - delta), int(pright - delta)
        return CropJitter(pleft, pright, ptop, pbot, flip, colour, blur, noise, noise_seed)

    def image(self, img: np.ndarray, p: CropJitter, w: int, h: int,
              truth: np.ndarray | None = None) -> np.ndarray:
        return image_ops.to_float(alexeyab_pixels(img, p, w, h, truth))


def draw_blur(rng: np.random.Generator, blur: int) -> int:
    """AlexeyAB's per-image blur draw: ``rand_int(0, 2)`` = 0 no blur, 1 background
    blur, 2 the cfg value (so ``blur=1`` blurs the background of 2/3 of the images;
    ``blur=N > 1`` 1/3 background, 1/3 whole image).  No draw when ``blur`` is 0."""
    if not blur:
        return 0
    return (0, 1, int(blur))[rand_int(rng, 0, 2)]


def draw_noise(rng: np.random.Generator, sigma: int) -> tuple[int, int]:
    """AlexeyAB's per-image noise draw: ``sigma`` with probability 1/2
    (``rand_int(0, 1) == 1``), else 0; with a seed for the noise pixels.
    No draw when ``sigma`` is 0."""
    if not sigma or rand_int(rng, 0, 1) != 1:
        return 0, 0
    return int(sigma), int(rng.integers(2 ** 63))


def min_box_side(truth: np.ndarray, w: int, h: int) -> int:
    """``fill_truth_detection``'s return value: the smallest side, in whole network
    pixels (truncated), of the kept boxes ``Array[K, 5]``; 0 without boxes."""
    m = 0
    for bw, bh in np.asarray(truth, np.float32)[:, 3:5]:
        sw, sh = float(bw) * w, float(bh) * h
        if m == 0:
            m = int(sw)
        if m > sw:
            m = int(sw)
        if m > sh:
            m = int(sh)
    return m


def effective_blur(blur: int, truth: np.ndarray | None, w: int, h: int) -> int:
    """AlexeyAB disables a strong blur that would wipe out small objects: a blur
    ``> 1`` is lowered to ``min_box_side // 8`` when that is smaller (which may
    turn it into a background blur (1) or none (0))."""
    if blur > 1:
        limit = min_box_side(np.zeros((0, 5), np.float32) if truth is None else truth, w, h) // 8
        if limit < blur:
            return limit
    return blur


def alexeyab_pixels(img: np.ndarray, p: CropJitter, w: int, h: int,
                    truth: np.ndarray | None = None) -> np.ndarray:
    """AlexeyAB's ``image_data_augmentation``: crop (mean-colour padding), resize,
    flip, HSV jitter, blur, gaussian noise, all on uint8.  ``truth``
    ``Array[K, 5]`` are the boxes already moved onto the output.
    uint8 ``Array[H, W, 3]`` -> uint8 ``Array[h, w, 3]``."""
    oh, ow = img.shape[:2]
    swidth, sheight = p.size(ow, oh)
    out = image_ops.crop_resize_uint8(img, p.pleft, p.ptop, swidth, sheight, w, h)
    if p.flip:
        out = image_ops.flip_horizontal(out)
    c = p.colour
    out = image_ops.distort_hsv_uint8(out, c.dhue, c.dsat, c.dexp)
    boxes = np.zeros((0, 5), np.float32) if truth is None else truth
    out = image_ops.blur_uint8(out, effective_blur(p.blur, boxes, w, h), boxes)
    if p.noise:
        out = image_ops.gaussian_noise_uint8(out, p.noise, np.random.default_rng(p.noise_seed))
    return out


AUGMENTERS: dict[str, Augmenter] = {
    "pjreddie": PjreddieAugmenter(),
    "alexeyab": AlexeyABAugmenter(),
}


def augmenter(dialect: str) -> Augmenter:
    try:
        return AUGMENTERS[dialect]
    except KeyError:
        raise DataError(f"unknown dialect {dialect!r}; expected one of "
                        f"{', '.join(AUGMENTERS)}") from None


def transform_truth(labels: np.ndarray, params, ow: int, oh: int, w: int, h: int,
                    cfg: AugmentConfig, rng: np.random.Generator | None) -> np.ndarray:
    """The boxes darknet trains on for an image augmented with ``params``:
    shuffled (when ``rng`` is given), corrected, clipped, dropped.
    ``Array[N, 5]`` -> ``Array[K, 5]`` (class, cx, cy, w, h)."""
    boxes = randomize_boxes(rng, labels) if rng is not None else labels
    dx, dy, sx, sy = params.correct_args(ow, oh, w, h)
    boxes = correct_boxes(boxes, dx, dy, sx, sy, params.flip, cfg.dialect)
    return FILL_TRUTH[cfg.dialect](boxes, cfg.max_boxes, w, h)


def augment_with(img: np.ndarray, labels: np.ndarray, params, w: int, h: int,
                 cfg: AugmentConfig, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Apply given parameters: (float32 ``Array[h, w, 3]``, truth ``Array[K, 5]``)."""
    oh, ow = img.shape[:2]
    truth = transform_truth(labels, params, ow, oh, w, h, cfg, rng)
    return augmenter(cfg.dialect).image(img, params, w, h, truth), truth


def augment(img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, w: int, h: int,
            cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One random darknet augmentation of one image (no mosaic, no mixup)."""
    oh, ow = img.shape[:2]
    params = augmenter(cfg.dialect).sample(rng, ow, oh, w, h, cfg)
    return augment_with(img, labels, params, w, h, cfg, rng)

