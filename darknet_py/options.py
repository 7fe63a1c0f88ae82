"""The options darknet's parsers read, section by section, with each darknet's defaults.

``SCHEMA[section][key] = Opt(...)`` is the one table :mod:`darknet_py.cfg`
converts values with, once, at parse time.  It was written from ``src/parser.c``
of pjreddie/darknet and of AlexeyAB/darknet: every ``option_find*`` call of
``parse_net_options``, of every ``parse_<layer>`` function, and the per-layer
options ``parse_network_cfg`` reads after each builder (``LAYER_COMMON``).

``Opt`` fields:

* ``kind``: how darknet converts the text -- ``int`` (``atoi``), ``float``
  (``atof`` into a C ``float``), ``float_int`` (``atof`` stored into an
  ``int``), ``str``, ``activation`` (a name of the dialect's activation table),
  ``ints`` / ``floats`` (comma separated lists).  ``ab_kind`` where AlexeyAB
  converts differently (``random`` of the heads is an int in pjreddie, a float
  in AlexeyAB).
* ``default`` (pjreddie's) and ``ab`` (AlexeyAB's, where it differs).  A
  :class:`Derived` default is computed from options read before it, as darknet
  passes a variable (``size`` defaults to ``stride``, ``inputs`` to h*w*c ...).
* ``pj=False``: pjreddie's parser does not read it; ``alexeyab=False``: AlexeyAB's
  does not.  An option a dialect does not read keeps its default in
  ``Section.options`` (the value that darknet's layer then has) and, when the
  file sets it, is reported unused, like darknet's ``option_unused``.
* ``when``: read only when this holds for the options read before it
  (darknet reads ``steps`` only for ``policy=steps``, ``B1`` only with ``adam=1``).

The entries are listed in the order darknet reads them where a later default
depends on an earlier value.  Versions read: pjreddie's last parser.c (the one of
the conformance commit f6afaab) and AlexeyAB's master parser.c (the stored copy
is newer than the conformance commit 59596d7; options it added since, such as
the tracking keys of [yolo], are read here too).  Sections neither darknet knows
(e.g. YOLOR's [implicit_add]) are unknown sections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from .activations import ACTIVATIONS

DIALECTS = ("pjreddie", "alexeyab")
KINDS = frozenset({"int", "float", "float_int", "str", "activation", "ints", "floats"})

_SAME = object()
FLT_MAX = float(np.finfo(np.float32).max)  # darknet's FLT_MAX default of max_delta

Options = Mapping[str, Any]


@dataclass(frozen=True)
class Derived:
    """A default darknet computes from other values: ``fn(options_so_far, net_options)``."""

    fn: Callable[[Options, Options], Any]
    text: str  # the C expression, for messages and docs

    def __repr__(self) -> str:
        return f"Derived({self.text})"


@dataclass(frozen=True)
class Opt:
    """One option of one section (see the module docstring)."""

    kind: str
    default: Any = None
    ab: Any = _SAME
    pj: bool = True
    alexeyab: bool = True
    ab_kind: str | None = None
    when: Callable[[Options, str], bool] | None = None

    def __post_init__(self) -> None:
        for k in (self.kind, self.ab_kind or self.kind):
            if k not in KINDS:
                raise ValueError(f"unknown option kind {k!r}")

    def reads(self, dialect: str, opts: Options | None = None) -> bool:
        """Whether ``dialect``'s parser reads this option (given the options read before it)."""
        if not (self.pj if dialect == "pjreddie" else self.alexeyab):
            return False
        return self.when is None or opts is None or self.when(opts, dialect)

    def kind_for(self, dialect: str) -> str:
        return self.ab_kind if dialect == "alexeyab" and self.ab_kind else self.kind

    def raw_default(self, dialect: str) -> Any:
        if dialect == "alexeyab" and self.ab is not _SAME:
            return self.ab
        return self.default

    def default_for(self, dialect: str, opts: Options | None = None,
                    net: Options | None = None) -> Any:
        """The default value, with :class:`Derived` defaults computed from ``opts``/``net``."""
        d = self.raw_default(dialect)
        if isinstance(d, Derived):
            return d.fn(opts or {}, net or {})
        return d


def _ab(kind: str, default: Any = None, **kw: Any) -> Opt:
    """An option only AlexeyAB's parser reads."""
    return Opt(kind, default, pj=False, **kw)


def _pj(kind: str, default: Any = None, **kw: Any) -> Opt:
    """An option only pjreddie's parser reads."""
    return Opt(kind, default, alexeyab=False, **kw)


def _fixed(kind: str, value: Any) -> Opt:
    """A value darknet's layer has but its parser never reads (e.g. local_avgpool's depth)."""
    return Opt(kind, value, pj=False, alexeyab=False)


def _f32_div(a: float, b: float) -> float:
    """C ``(float)a / b`` in float32 (0/0 is NaN, x/0 is inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float32(a) / np.float32(b))


def _same_as(key: str) -> Derived:
    return Derived(lambda o, n: o[key], key)


def _policy_in(*names: str) -> Callable[[Options, str], bool]:
    """Read for these policies; ``sgdr`` is a policy of AlexeyAB only (pjreddie: constant)."""
    def when(o: Options, dialect: str) -> bool:
        policy = o.get("policy")
        return policy in names and (policy != "sgdr" or dialect == "alexeyab")
    return when


def _adam(o: Options, dialect: str) -> bool:
    return bool(o.get("adam"))


# ----------------------------------------------------------------- sections

#: Section names as spelled in a cfg -> canonical section type.
SECTION_ALIASES: dict[str, str] = {
    "net": "net", "network": "net",
    "conv": "convolutional", "convolutional": "convolutional",
    "deconv": "deconvolutional", "deconvolutional": "deconvolutional",
    "conn": "connected", "connected": "connected",
    "max": "maxpool", "maxpool": "maxpool",
    "local_avg": "local_avgpool", "local_avgpool": "local_avgpool",
    "avg": "avgpool", "avgpool": "avgpool",
    "soft": "softmax", "softmax": "softmax",
    "lrn": "normalization", "normalization": "normalization",
    "empty": "empty", "silence": "empty",
    "activation": "activation", "logistic": "logistic", "l2norm": "l2norm",
    "batchnorm": "batchnorm", "cost": "cost", "crop": "crop", "detection": "detection",
    "region": "region", "yolo": "yolo", "Gaussian_yolo": "Gaussian_yolo", "iseg": "iseg",
    "local": "local", "shortcut": "shortcut", "scale_channels": "scale_channels",
    "sam": "sam", "route": "route", "upsample": "upsample", "reorg": "reorg",
    "reorg3d": "reorg3d", "dropout": "dropout", "rnn": "rnn", "gru": "gru", "lstm": "lstm",
    "crnn": "crnn", "conv_lstm": "conv_lstm", "history": "history",
    "contrastive": "contrastive", "implicit": "implicit",
}

#: Sections only one darknet's string_to_layer_type knows (all others: both).
PJ_ONLY_SECTIONS = frozenset({"deconvolutional", "logistic", "l2norm", "iseg"})
AB_ONLY_SECTIONS = frozenset({
    "local_avgpool", "Gaussian_yolo", "scale_channels", "sam", "reorg3d", "conv_lstm",
    "history", "contrastive", "empty", "implicit",
})


def section_dialects(kind: str) -> tuple[str, ...]:
    """The dialects whose parser knows section type ``kind``."""
    if kind in PJ_ONLY_SECTIONS:
        return ("pjreddie",)
    if kind in AB_ONLY_SECTIONS:
        return ("alexeyab",)
    return DIALECTS


#: Activation names only AlexeyAB's get_activation knows (from the one activation table).
AB_ONLY_ACTIVATIONS = frozenset(ACTIVATIONS["alexeyab"]) - frozenset(ACTIVATIONS["pjreddie"])

#: Values of a key that only AlexeyAB understands (pjreddie falls back silently).
AB_ONLY_VALUES: dict[tuple[str, str], frozenset[str]] = {("net", "policy"): frozenset({"sgdr"})}

_ACT = Opt("activation", "logistic")

# ----------------------------------------------------------------- [net]

_NET: dict[str, Opt] = {
    "max_batches": Opt("int", 0),
    "batch": Opt("int", 1),
    "learning_rate": Opt("float", 0.001),
    "learning_rate_min": _ab("float", 0.00001),
    "sgdr_cycle": _ab("int", _same_as("max_batches")),
    "sgdr_mult": _ab("int", 2),
    "momentum": Opt("float", 0.9),
    "decay": Opt("float", 0.0001),
    "subdivisions": Opt("int", 1),
    "time_steps": Opt("int", 1),
    "notruth": _pj("int", 0),
    "random": _pj("int", 0),
    "track": _ab("int", 0),
    "augment_speed": _ab("int", 2),
    # darknet then clamps it to subdivisions
    "sequential_subdivisions": _ab("int", _same_as("subdivisions")),
    "try_fix_nan": _ab("int", 0),
    "weights_reject_freq": _ab("int", 0),
    "equidistant_point": _ab("int", 0),
    "badlabels_rejection_percentage": _ab("float", 0.0),
    "num_sigmas_reject_badlabels": _ab("float", 0.0),
    "ema_alpha": _ab("float", 0.0),
    "use_cuda_graph": _ab("int", 0),
    "loss_scale": _ab("float", 1.0),
    "dynamic_minibatch": _ab("int", 0),
    "optimized_memory": _ab("int", 0),
    "workspace_size_limit_MB": _ab("float", 1024.0),
    "adam": Opt("int", 0),
    "B1": Opt("float", 0.9, when=_adam),
    "B2": Opt("float", 0.999, when=_adam),
    "eps": Opt("float", 0.0000001, ab=0.000001, when=_adam),
    "height": Opt("int", 0),
    "width": Opt("int", 0),
    "channels": Opt("int", 0),
    "inputs": Opt("int", Derived(lambda o, n: o["height"] * o["width"] * o["channels"], "h*w*c")),
    "max_crop": Opt("int", Derived(lambda o, n: o["width"] * 2, "w*2")),
    "min_crop": Opt("int", _same_as("width")),
    "max_ratio": _pj("float", Derived(lambda o, n: _f32_div(o["max_crop"], o["width"]),
                                      "(float)max_crop/w")),
    "min_ratio": _pj("float", Derived(lambda o, n: _f32_div(o["min_crop"], o["width"]),
                                      "(float)min_crop/w")),
    "center": _pj("int", 0),
    "clip": _pj("float", 0.0),
    "flip": _ab("int", 1),
    "blur": _ab("int", 0),
    "gaussian_noise": _ab("int", 0),
    "mixup": _ab("int", 0),
    "cutmix": _ab("int", 0),
    "mosaic": _ab("int", 0),
    "letter_box": _ab("int", 0),
    "mosaic_bound": _ab("int", 0),
    "contrastive": _ab("int", 0),
    "contrastive_jit_flip": _ab("int", 0),
    "contrastive_color": _ab("int", 0),
    "unsupervised": _ab("int", 0),
    "label_smooth_eps": _ab("float", 0.0),
    "resize_step": _ab("float_int", 32),
    "attention": _ab("int", 0),
    "adversarial_lr": _ab("float", 0.0),
    "max_chart_loss": _ab("float", 20.0),
    "angle": Opt("float", 0.0),
    "aspect": Opt("float", 1.0),
    "saturation": Opt("float", 1.0),
    "exposure": Opt("float", 1.0),
    "hue": Opt("float", 0.0),
    "power": Opt("float", 4.0),
    "policy": Opt("str", "constant"),
    "burn_in": Opt("int", 0),
    "step": Opt("int", 1, when=_policy_in("step", "sigmoid")),
    "scale": Opt("float", 1.0, when=_policy_in("step")),
    "steps": Opt("ints", None, when=_policy_in("steps", "sgdr")),
    "scales": Opt("floats", None, when=_policy_in("steps", "sgdr")),
    "seq_scales": _ab("floats", None, when=_policy_in("steps", "sgdr")),
    "gamma": Opt("float", 1.0, when=_policy_in("exp", "sigmoid")),
    "show_receptive_field": _ab("float_int", 0),
}

# ----------------------------------------------------------------- layers

_CONVOLUTIONAL: dict[str, Opt] = {
    "filters": Opt("int", 1),
    "groups": Opt("int", 1),
    "size": Opt("int", 1),
    "stride_x": _ab("int", -1),  # < 1: use stride
    "stride_y": _ab("int", -1),
    "stride": Opt("int", 1),
    "dilation": _ab("int", 1),
    "antialiasing": _ab("int", 0),
    "pad": Opt("int", 0),
    "padding": Opt("int", 0),
    "activation": _ACT,
    "assisted_excitation": _ab("float_int", 0),
    "share_index": _ab("int", -1000000000),
    "batch_normalize": Opt("int", 0),
    "cbn": _ab("int", 0),
    "binary": Opt("int", 0),
    "xnor": Opt("int", 0),
    "bin_output": _ab("int", 0),
    "sway": _ab("int", 0),
    "rotate": _ab("int", 0),
    "stretch": _ab("int", 0),
    "stretch_sway": _ab("int", 0),
    "flipped": Opt("int", 0),
    "dot": Opt("float", 0.0),
    "angle": _ab("float", 15.0),
    "grad_centr": _ab("int", 0),
    "reverse": _ab("float_int", 0),
    "coordconv": _ab("int", 0),
    "stream": _ab("int", -1),
    "wait_stream": _ab("int", -1),
}

_POOL_WINDOW: dict[str, Opt] = {
    "stride": Opt("int", 1),
    "stride_x": _ab("int", _same_as("stride")),
    "stride_y": _ab("int", _same_as("stride")),
    "size": Opt("int", _same_as("stride")),
    "padding": Opt("int", Derived(lambda o, n: o["size"] - 1, "size-1")),
}

_YOLO: dict[str, Opt] = {
    "classes": Opt("int", 20),
    "num": Opt("int", 1),
    "mask": Opt("ints", None),
    "max": Opt("int", 90, ab=200),
    "show_details": _ab("int", 1),
    "max_delta": _ab("float", FLT_MAX),
    "counters_per_class": _ab("ints", None),
    "label_smooth_eps": _ab("float", 0.0),
    "scale_x_y": _ab("float", 1.0),
    "objectness_smooth": _ab("int", 0),
    "new_coords": _ab("int", 0),
    "iou_normalizer": _ab("float", 0.75),
    "obj_normalizer": _ab("float", 1.0),
    "cls_normalizer": _ab("float", 1.0),
    "delta_normalizer": _ab("float", 1.0),
    "iou_loss": _ab("str", "mse"),
    "iou_thresh_kind": _ab("str", "iou"),
    "beta_nms": _ab("float", 0.6),
    "nms_kind": _ab("str", "default"),
    "jitter": Opt("float", 0.2),
    "resize": _ab("float", 1.0),
    "focal_loss": _ab("int", 0),
    "ignore_thresh": Opt("float", 0.5),
    "truth_thresh": Opt("float", 1.0),
    "iou_thresh": _ab("float", 1.0),
    "random": Opt("int", 0, ab=0.0, ab_kind="float"),
    "track_history_size": _ab("int", 5),
    # read with option_find_int_quiet and a default of 0.8, i.e. 0 (and atoi of the value)
    "sim_thresh": _ab("int", 0),
    "dets_for_track": _ab("int", 1),
    "dets_for_show": _ab("int", 1),
    "track_ciou_norm": _ab("float", 0.01),
    "embedding_layer": _ab("int", 999999),
    "map": Opt("str", None),
    "anchors": Opt("floats", None),
}

_GAUSSIAN_YOLO: dict[str, Opt] = {
    "classes": Opt("int", 20),
    "max": Opt("int", 200),
    "num": Opt("int", 1),
    "mask": Opt("ints", None),
    "max_delta": Opt("float", FLT_MAX),
    "counters_per_class": Opt("ints", None),
    "label_smooth_eps": Opt("float", 0.0),
    "scale_x_y": Opt("float", 1.0),
    "objectness_smooth": Opt("int", 0),
    "uc_normalizer": Opt("float", 1.0),
    "iou_normalizer": Opt("float", 0.75),
    "obj_normalizer": Opt("float", 1.0),
    "cls_normalizer": Opt("float", 1.0),
    "delta_normalizer": Opt("float", 1.0),
    "iou_loss": Opt("str", "mse"),
    "iou_thresh_kind": Opt("str", "iou"),
    "beta_nms": Opt("float", 0.6),
    "nms_kind": Opt("str", "default"),
    "yolo_point": Opt("str", "center"),
    "jitter": Opt("float", 0.2),
    "resize": Opt("float", 1.0),
    "ignore_thresh": Opt("float", 0.5),
    "truth_thresh": Opt("float", 1.0),
    "iou_thresh": Opt("float", 1.0),
    "random": Opt("float", 0.0),
    "map": Opt("str", None),
    "anchors": Opt("floats", None),
    # the layer has no new_coords; kept so the [yolo] code can read it uniformly
    "new_coords": _fixed("int", 0),
}

SCHEMA: dict[str, dict[str, Opt]] = {
    "net": _NET,
    "convolutional": _CONVOLUTIONAL,
    "deconvolutional": {
        "filters": Opt("int", 1),
        "size": Opt("int", 1),
        "stride": Opt("int", 1),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
        "pad": Opt("int", 0),
        "padding": Opt("int", 0),
    },
    "local": {
        "filters": Opt("int", 1),
        "size": Opt("int", 1),
        "stride": Opt("int", 1),
        "pad": Opt("int", 0),
        "activation": _ACT,
    },
    "connected": {
        "output": Opt("int", 1),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
    },
    "maxpool": {
        **_POOL_WINDOW,
        "maxpool_depth": _ab("int", 0),
        "out_channels": _ab("int", 1),
        "antialiasing": _ab("int", 0),
        "maxpool_zero_nonmax": _ab("int", 0),
    },
    "local_avgpool": {
        **_POOL_WINDOW,
        # parse_local_avgpool passes these as constants
        "maxpool_depth": _fixed("int", 0),
        "out_channels": _fixed("int", 1),
        "antialiasing": _fixed("int", 0),
    },
    "avgpool": {},
    "dropout": {
        "probability": Opt("float", 0.5, ab=0.2),
        "dropblock": _ab("int", 0),
        "dropblock_size_rel": _ab("float", 0.0),
        "dropblock_size_abs": _ab("float_int", 0),
    },
    "softmax": {
        "groups": Opt("int", 1),
        "temperature": Opt("float", 1.0),
        "tree": Opt("str", None),
        "spatial": Opt("float_int", 0),
        "noloss": Opt("int", 0),
    },
    "normalization": {
        "alpha": Opt("float", 0.0001),
        "beta": Opt("float", 0.75),
        "kappa": Opt("float", 1.0),
        "size": Opt("int", 5),
    },
    "batchnorm": {},
    "activation": {"activation": Opt("activation", "linear")},
    "logistic": {},
    "l2norm": {},
    "empty": {},
    "cost": {
        "type": Opt("str", "sse"),
        "scale": Opt("float", 1.0),
        "ratio": Opt("float", 0.0),
        "noobj": _pj("float", 1.0),
        "thresh": _pj("float", 0.0),
    },
    "crop": {
        "crop_height": Opt("int", 1),
        "crop_width": Opt("int", 1),
        "flip": Opt("int", 0),
        "angle": Opt("float", 0.0),
        "saturation": Opt("float", 1.0),
        "exposure": Opt("float", 1.0),
        "noadjust": Opt("int", 0),
        "shift": Opt("float", 0.0),
    },
    "route": {
        "layers": Opt("ints", None),
        "groups": _ab("int", 1),
        "group_id": _ab("int", 0),
        "stream": _ab("int", -1),
        "wait_stream": _ab("int", -1),
    },
    "shortcut": {
        "from": Opt("ints", None),  # pjreddie reads only the first number (atoi)
        "activation": Opt("activation", "linear"),
        "alpha": _pj("float", 1.0),
        "beta": _pj("float", 1.0),
        "weights_type": _ab("str", "none"),
        "weights_normalization": _ab("str", "none"),
    },
    "scale_channels": {
        "from": Opt("int", None),
        "scale_wh": Opt("int", 0),
        "activation": Opt("activation", "linear"),
    },
    "sam": {
        "from": Opt("int", None),
        "activation": Opt("activation", "linear"),
    },
    "implicit": {
        "mean": Opt("float", 0.0),
        "std": Opt("float", 0.2),
        "filters": Opt("int", 128),
        "atoms": Opt("int", 1),
    },
    "upsample": {"stride": Opt("int", 2), "scale": Opt("float", 1.0)},
    # pjreddie's [reorg]; AlexeyAB's [reorg] is its reorg_old (stride, reverse only)
    "reorg": {
        "stride": Opt("int", 1),
        "reverse": Opt("int", 0),
        "flatten": _pj("int", 0),
        "extra": _pj("int", 0),
    },
    "reorg3d": {"stride": Opt("int", 1), "reverse": Opt("int", 0)},
    "yolo": _YOLO,
    "Gaussian_yolo": _GAUSSIAN_YOLO,
    "iseg": {"classes": Opt("int", 20), "ids": Opt("int", 32)},
    "region": {
        "coords": Opt("int", 4),
        "classes": Opt("int", 20),
        "num": Opt("int", 1),
        "max": Opt("int", 30, ab=200),
        "log": Opt("int", 0),
        "sqrt": Opt("int", 0),
        "softmax": Opt("int", 0),
        "background": _pj("int", 0),
        "focal_loss": _ab("int", 0),
        "jitter": Opt("float", 0.2),
        "resize": _ab("float", 1.0),
        "rescore": Opt("int", 0),
        "thresh": Opt("float", 0.5),
        "classfix": Opt("int", 0),
        "absolute": Opt("int", 0),
        "random": Opt("int", 0, ab=0.0, ab_kind="float"),
        "coord_scale": Opt("float", 1.0),
        "object_scale": Opt("float", 1.0),
        "noobject_scale": Opt("float", 1.0),
        "mask_scale": Opt("float", 1.0),
        "class_scale": Opt("float", 1.0),
        "bias_match": Opt("int", 0),
        "tree": Opt("str", None),
        "map": Opt("str", None),
        "anchors": Opt("floats", None),
    },
    "detection": {
        "coords": Opt("int", 1),
        "classes": Opt("int", 1),
        "rescore": Opt("int", 0),
        "num": Opt("int", 1),
        "side": Opt("int", 7),
        "softmax": Opt("int", 0),
        "sqrt": Opt("int", 0),
        "max": Opt("int", 90, ab=200),
        "coord_scale": Opt("float", 1.0),
        "forced": Opt("int", 0),
        "object_scale": Opt("float", 1.0),
        "noobject_scale": Opt("float", 1.0),
        "class_scale": Opt("float", 1.0),
        "jitter": Opt("float", 0.2),
        "resize": _ab("float", 1.0),
        "random": Opt("int", 0, ab=0.0, ab_kind="float"),
        "reorg": Opt("int", 0),
    },
    "contrastive": {
        "classes": Opt("int", 1000),
        "yolo_layer": Opt("int", 0),
        "temperature": Opt("float", 1.0),
        "cls_normalizer": Opt("float", 1.0),
        "max_delta": Opt("float", FLT_MAX),
        "contrastive_neg_max": Opt("int", 3),
    },
    # Recurrent sections (darknet_py/layers/recurrent.py, conv_recurrent.py).
    "rnn": {
        "output": Opt("int", 1),
        "hidden": _ab("int", 1),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
        "logistic": _ab("int", 0),
        "shortcut": Opt("int", 0),
    },
    "gru": {
        "output": Opt("int", 1),
        "batch_normalize": Opt("int", 0),
        "tanh": _pj("int", 0),
    },
    "lstm": {"output": Opt("int", 1), "batch_normalize": Opt("int", 0)},
    "crnn": {
        "size": _ab("int", 3),
        "stride": _ab("int", 1),
        "dilation": _ab("int", 1),
        "pad": _ab("int", 0),
        "padding": _ab("int", 0),
        "output_filters": _pj("int", 1),
        "hidden_filters": _pj("int", 1),
        "output": _ab("int", 1),
        "hidden": _ab("int", 1),
        "groups": _ab("int", 1),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
        "xnor": _ab("int", 0),
        "shortcut": Opt("int", 0),
    },
    "conv_lstm": {
        "size": Opt("int", 3),
        "stride": Opt("int", 1),
        "dilation": Opt("int", 1),
        "pad": Opt("int", 0),
        "padding": Opt("int", 0),
        "output": Opt("int", 1),
        "groups": Opt("int", 1),
        "activation": Opt("activation", "linear"),
        "batch_normalize": Opt("int", 0),
        "xnor": Opt("int", 0),
        "peephole": Opt("int", 0),
        "bottleneck": Opt("int", 0),
        # conv_lstm is AlexeyAB's, whose parser has raised time_steps < 1 to 1 by then
        "state_constrain": Opt("int", Derived(lambda o, n: max(1, n.get("time_steps", 1)) * 32,
                                              "time_steps*32")),
        "shortcut": Opt("int", 0),
        "lstm_activation": Opt("activation", "tanh"),
        "time_normalizer": Opt("float", 1.0),
    },
    "history": {"history_size": Opt("int", 4)},
}

#: Options parse_network_cfg reads from every layer section after its builder.
LAYER_COMMON: dict[str, Opt] = {
    "clip": _ab("float", 0.0),  # pjreddie copies [net] clip into every layer instead
    "truth": _pj("int", 0),
    "onlyforward": Opt("int", 0),
    "dont_update": _ab("int", 0),
    "burnin_update": _ab("int", 0),
    "stopbackward": Opt("int", 0),
    "train_only_bn": _ab("int", 0),
    "dontsave": _pj("int", 0),
    "dontload": Opt("int", 0),
    "numload": _pj("int", 0),
    "dontloadscales": Opt("int", 0),
    "learning_rate": Opt("float", 1.0),
    "smooth": _pj("float", 0.0),
}


def section_schema(kind: str) -> dict[str, Opt]:
    """Every option of section type ``kind`` in reading order (layer common options last)."""
    spec = dict(SCHEMA[kind])
    if kind != "net":
        for key, opt in LAYER_COMMON.items():
            spec.setdefault(key, opt)
    return spec


def _check_schema() -> None:
    """Every alias names a section with a schema, and every schema has an alias."""
    if set(SECTION_ALIASES.values()) != set(SCHEMA):
        raise AssertionError(f"aliases and schema disagree: "
                             f"{sorted(set(SECTION_ALIASES.values()) ^ set(SCHEMA))}")


_check_schema()
