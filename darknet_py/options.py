"""The options darknet reads for every section, with each darknet's defaults.

``SCHEMA[section][key] = Opt(kind, default, ...)`` is the single table the cfg
parser uses to convert values once, at parse time.  ``kind`` is one of
``int``, ``float``, ``str``, ``ints``, ``floats`` (comma separated lists).
``ab`` is AlexeyAB's default where it differs from pjreddie's; ``pj=False``
marks options only AlexeyAB's parser reads (their presence selects the
AlexeyAB dialect when the dialect is auto-detected).

Sources: src/parser.c of pjreddie/darknet and AlexeyAB/darknet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SAME = object()


@dataclass(frozen=True)
class Opt:
    kind: str
    default: Any = None
    ab: Any = _SAME
    pj: bool = True  # False: only AlexeyAB's parser reads it

    def default_for(self, dialect: str) -> Any:
        if dialect == "alexeyab" and self.ab is not _SAME:
            return self.ab
        return self.default


def _ab(kind: str, default: Any = None) -> Opt:
    return Opt(kind, default, pj=False)


# Section names as darknet spells them -> canonical type.
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
    "activation": "activation",
    "batchnorm": "batchnorm",
    "cost": "cost", "crop": "crop", "detection": "detection", "region": "region",
    "yolo": "yolo", "Gaussian_yolo": "Gaussian_yolo", "local": "local",
    "shortcut": "shortcut", "scale_channels": "scale_channels", "sam": "sam",
    "route": "route", "upsample": "upsample", "reorg": "reorg", "reorg3d": "reorg3d",
    "dropout": "dropout", "rnn": "rnn", "gru": "gru", "lstm": "lstm", "crnn": "crnn",
    "conv_lstm": "conv_lstm", "history": "history",
    "implicit_add": "implicit_add", "implicit_mul": "implicit_mul",
    "contrastive": "contrastive", "xnor": "xnor",
}

# Sections only AlexeyAB's darknet knows.
AB_ONLY_SECTIONS = frozenset({
    "local_avgpool", "Gaussian_yolo", "scale_channels", "sam", "reorg3d", "conv_lstm",
    "history", "implicit_add", "implicit_mul", "contrastive", "empty",
})

# Activations only AlexeyAB's darknet knows.
AB_ONLY_ACTIVATIONS = frozenset({
    "mish", "hard_mish", "swish", "relu6", "gelu", "normalize_channels",
    "normalize_channels_softmax", "normalize_channels_softmax_maxval", "revleaky",
})

_ACT = Opt("str", "logistic")

_CONV_COMMON: dict[str, Opt] = {
    "filters": Opt("int", 1),
    "size": Opt("int", 1),
    "stride": Opt("int", 1),
    "stride_x": _ab("int", -1),
    "stride_y": _ab("int", -1),
    "dilation": _ab("int", 1),
    "antialiasing": _ab("int", 0),
    "pad": Opt("int", 0),
    "padding": Opt("int", 0),
    "groups": Opt("int", 1),
    "activation": _ACT,
    "batch_normalize": Opt("int", 0),
    "binary": Opt("int", 0),
    "xnor": Opt("int", 0),
    "bin_output": _ab("int", 0),
    "flipped": Opt("int", 0),
    "dot": Opt("float", 0.0),
    "share_index": _ab("int", -1000000000),
    "sway": _ab("int", 0),
    "rotate": _ab("int", 0),
    "stretch": _ab("int", 0),
    "stretch_sway": _ab("int", 0),
    "assisted_excitation": _ab("float", 0.0),
    "cbn": _ab("int", 0),
    "coordconv": _ab("int", 0),
    "deform": _ab("int", 0),
    "learning_rate": Opt("float", 1.0),
}

_YOLO_COMMON: dict[str, Opt] = {
    "classes": Opt("int", 20),
    "num": Opt("int", 1),
    "mask": Opt("ints", None),
    "anchors": Opt("floats", None),
    "max": Opt("int", 90, ab=200),
    "jitter": Opt("float", 0.2),
    "ignore_thresh": Opt("float", 0.5),
    "truth_thresh": Opt("float", 1.0),
    "random": Opt("float", 0.0),
    "resize": _ab("float", 1.0),
    "focal_loss": _ab("int", 0),
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
    "iou_thresh": _ab("float", 1.0),
    "max_delta": _ab("float", float("inf")),
    "label_smooth_eps": _ab("float", 0.0),
    "counters_per_class": _ab("ints", None),
    "embedding_layer": _ab("int", 999999),
    "track_history_size": _ab("int", 5),
    "sim_thresh": _ab("float", 0.8),
    "dets_for_track": _ab("int", 1),
    "dets_for_show": _ab("int", 1),
    "track_ciou_norm": _ab("float", 0.01),
    "map": Opt("str", None),
}

SCHEMA: dict[str, dict[str, Opt]] = {
    "net": {
        "batch": Opt("int", 1),
        "subdivisions": Opt("int", 1),
        "width": Opt("int", 0),
        "height": Opt("int", 0),
        "channels": Opt("int", 0),
        "inputs": Opt("int", 0),
        "max_crop": Opt("int", 0),
        "min_crop": Opt("int", 0),
        "max_ratio": Opt("float", 0.0),
        "min_ratio": Opt("float", 0.0),
        "center": Opt("int", 0),
        "clip": Opt("float", 0.0),
        "learning_rate": Opt("float", 0.001),
        "momentum": Opt("float", 0.9),
        "decay": Opt("float", 0.0001),
        "adam": Opt("int", 0),
        "B1": Opt("float", 0.9),
        "B2": Opt("float", 0.999),
        "eps": Opt("float", 1e-7, ab=1e-6),
        "time_steps": Opt("int", 1),
        "notruth": Opt("int", 0),
        "random": Opt("int", 0),
        "angle": Opt("float", 0.0),
        "aspect": Opt("float", 1.0),
        "saturation": Opt("float", 1.0),
        "exposure": Opt("float", 1.0),
        "hue": Opt("float", 0.0),
        "policy": Opt("str", "constant"),
        "burn_in": Opt("int", 0),
        "power": Opt("float", 4.0),
        "step": Opt("int", 1),
        "scale": Opt("float", 1.0),
        "steps": Opt("ints", None),
        "scales": Opt("floats", None),
        "seq_scales": _ab("floats", None),
        "gamma": Opt("float", 1.0),
        "max_batches": Opt("int", 0),
        "letter_box": _ab("int", 0),
        "mosaic_bound": _ab("int", 0),
        "flip": _ab("int", 1),
        "blur": _ab("int", 0),
        "gaussian_noise": _ab("int", 0),
        "mixup": _ab("int", 0),
        "cutmix": _ab("int", 0),
        "mosaic": _ab("int", 0),
        "label_smooth_eps": _ab("float", 0.0),
        "resize_step": _ab("int", 32),
        "attention": _ab("int", 0),
        "adversarial_lr": _ab("float", 0.0),
        "track": _ab("int", 0),
        "augment_speed": _ab("int", 2),
        "sequential_subdivisions": _ab("int", 0),
        "try_fix_nan": _ab("int", 0),
        "init_sequential_subdivisions": _ab("int", 0),
        "max_chart_loss": _ab("float", 20.0),
        "loss_scale": _ab("float", 1.0),
        "dynamic_minibatch": _ab("int", 0),
        "optimized_memory": _ab("int", 0),
        "workspace_size_limit_MB": _ab("float", 1024.0),
        "equidistant_point": _ab("int", 0),
        "unsupervised": _ab("int", 0),
        "contrastive": _ab("int", 0),
        "contrastive_jit_flip": _ab("int", 0),
        "contrastive_color": _ab("int", 0),
        "cudnn_half": _ab("int", 0),
        "rgb": _ab("int", 0),
        "batches_per_cycle": _ab("int", 0),
        "batches_cycle_mult": _ab("int", 2),
        "sgdr_cycle": _ab("int", 0),
        "sgdr_mult": _ab("int", 2),
        "min_lr": _ab("float", 0.0),  # not read by either parser's [net]? kept for sgdr
    },
    "convolutional": dict(_CONV_COMMON),
    "deconvolutional": {
        "filters": Opt("int", 1),
        "size": Opt("int", 1),
        "stride": Opt("int", 1),
        "pad": Opt("int", 0),
        "padding": Opt("int", 0),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
        "learning_rate": Opt("float", 1.0),
    },
    "connected": {
        "output": Opt("int", 1),
        "activation": _ACT,
        "batch_normalize": Opt("int", 0),
        "learning_rate": Opt("float", 1.0),
    },
    "local": {
        "filters": Opt("int", 1),
        "size": Opt("int", 1),
        "stride": Opt("int", 1),
        "pad": Opt("int", 0),
        "activation": _ACT,
        "learning_rate": Opt("float", 1.0),
    },
    "maxpool": {
        "stride": Opt("int", 1),
        "stride_x": _ab("int", -1),
        "stride_y": _ab("int", -1),
        "size": Opt("int", 1),
        "padding": Opt("int", None),  # default size-1, resolved by the builder
        "maxpool_depth": _ab("int", 0),
        "out_channels": _ab("int", 1),
        "antialiasing": _ab("int", 0),
    },
    "local_avgpool": {
        "stride": Opt("int", 1),
        "stride_x": _ab("int", -1),
        "stride_y": _ab("int", -1),
        "size": Opt("int", 1),
        "padding": Opt("int", None),
        "maxpool_depth": _ab("int", 0),
        "out_channels": _ab("int", 1),
        "antialiasing": _ab("int", 0),
    },
    "avgpool": {},
    "dropout": {
        "probability": Opt("float", 0.5),
        "dropblock": _ab("int", 0),
        "dropblock_size_rel": _ab("float", 0.0),
        "dropblock_size_abs": _ab("int", 0),
    },
    "softmax": {
        "groups": Opt("int", 1),
        "temperature": Opt("float", 1.0),
        "tree": Opt("str", None),
        "spatial": Opt("int", 0),
        "noloss": Opt("int", 0),
    },
    "normalization": {
        "alpha": Opt("float", 0.0001),
        "beta": Opt("float", 0.75),
        "kappa": Opt("float", 1.0),
        "size": Opt("int", 5),
    },
    "batchnorm": {},
    "activation": {"activation": Opt("str", "linear")},
    "empty": {},
    "cost": {
        "type": Opt("str", "sse"),
        "scale": Opt("float", 1.0),
        "ratio": Opt("float", 0.0),
        "noobj": Opt("float", 1.0),
        "thresh": Opt("float", 0.0),
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
        "stopbackward": _ab("int", 0),
    },
    "shortcut": {
        "from": Opt("ints", None),
        "activation": Opt("str", "linear"),
        "alpha": Opt("float", 1.0),
        "beta": Opt("float", 1.0),
        "weights_type": _ab("str", "none"),
        "weights_normalization": _ab("str", "none"),
        "assisted_excitation": _ab("float", 0.0),
    },
    "scale_channels": {
        "from": _ab("int", None),
        "scale_wh": _ab("int", 0),
        "activation": _ab("str", "linear"),
    },
    "sam": {
        "from": _ab("int", None),
        "activation": _ab("str", "linear"),
    },
    "upsample": {"stride": Opt("int", 2), "scale": Opt("float", 1.0)},
    "reorg": {"stride": Opt("int", 1), "reverse": Opt("int", 0), "flatten": Opt("int", 0),
              "extra": Opt("int", 0)},
    "reorg3d": {"stride": _ab("int", 1), "reverse": _ab("int", 0)},
    "yolo": dict(_YOLO_COMMON),
    "Gaussian_yolo": {
        **{k: v for k, v in _YOLO_COMMON.items() if k not in ("max",)},
        "max": _ab("int", 200),
        "uc_normalizer": _ab("float", 1.0),
        "yolo_point": _ab("str", "center"),
    },
    "region": {
        "coords": Opt("int", 4),
        "classes": Opt("int", 20),
        "num": Opt("int", 1),
        "log": Opt("int", 0),
        "sqrt": Opt("int", 0),
        "softmax": Opt("int", 0),
        "background": Opt("int", 0),
        "max": Opt("int", 30),
        "jitter": Opt("float", 0.2),
        "rescore": Opt("int", 0),
        "thresh": Opt("float", 0.5),
        "classfix": Opt("int", 0),
        "absolute": Opt("int", 0),
        "random": Opt("int", 0),
        "coord_scale": Opt("float", 1.0),
        "object_scale": Opt("float", 1.0),
        "noobject_scale": Opt("float", 1.0),
        "mask_scale": Opt("float", 1.0),
        "class_scale": Opt("float", 1.0),
        "bias_match": Opt("int", 0),
        "tree": Opt("str", None),
        "map": Opt("str", None),
        "anchors": Opt("floats", None),
        "focal_loss": _ab("int", 0),
        "resize": _ab("float", 1.0),
    },
    "detection": {
        "classes": Opt("int", 1),
        "coords": Opt("int", 1),
        "rescore": Opt("int", 0),
        "num": Opt("int", 1),
        "side": Opt("int", 7),
        "softmax": Opt("int", 0),
        "sqrt": Opt("int", 0),
        "max": Opt("int", 30),
        "coord_scale": Opt("float", 1.0),
        "forced": Opt("int", 0),
        "object_scale": Opt("float", 1.0),
        "noobject_scale": Opt("float", 1.0),
        "class_scale": Opt("float", 1.0),
        "jitter": Opt("float", 0.2),
        "random": Opt("int", 0),
        "reorg": Opt("int", 0),
    },
    "implicit_add": {"filters": _ab("int", 1), "init": _ab("float", 0.0)},
    "implicit_mul": {"filters": _ab("int", 1), "init": _ab("float", 1.0)},
    "contrastive": {
        "classes": _ab("int", 1000),
        "temperature": _ab("float", 1.0),
        "cls_normalizer": _ab("float", 1.0),
        "max_delta": _ab("float", float("inf")),
        "contrastive_neg_max": _ab("int", 3),
        "yolo_layer": _ab("int", 0),
    },
    # Recurrent sections: parsed (so their cfgs round-trip) but not built.
    "rnn": {"output": Opt("int", 1), "hidden": Opt("int", 1), "activation": _ACT,
            "batch_normalize": Opt("int", 0), "logistic": Opt("int", 0),
            "steps": Opt("int", 1)},
    "gru": {"output": Opt("int", 1), "batch_normalize": Opt("int", 0),
            "tanh": Opt("int", 0)},
    "lstm": {"output": Opt("int", 1), "batch_normalize": Opt("int", 0)},
    "crnn": {"output_filters": Opt("int", 1), "hidden_filters": Opt("int", 1),
             "activation": _ACT, "batch_normalize": Opt("int", 0),
             "size": Opt("int", 3), "stride": Opt("int", 1), "pad": Opt("int", 0),
             "dilation": _ab("int", 1), "groups": _ab("int", 1), "xnor": Opt("int", 0)},
    "conv_lstm": {"output": _ab("int", 1), "size": _ab("int", 3), "stride": _ab("int", 1),
                  "pad": _ab("int", 0), "groups": _ab("int", 1), "dilation": _ab("int", 1),
                  "batch_normalize": _ab("int", 0), "xnor": _ab("int", 0),
                  "peephole": _ab("int", 0), "bottleneck": _ab("int", 0),
                  "lstm_activation": _ab("str", "tanh"), "activation": _ab("str", "linear")},
    "history": {"history_size": _ab("int", 4)},
    "xnor": {},
}

# Options every layer section may carry (parse_network_cfg reads them after the builder).
LAYER_COMMON: dict[str, Opt] = {
    "stopbackward": Opt("int", 0),
    "dontload": Opt("int", 0),
    "dontloadscales": Opt("int", 0),
    "dontsave": _ab("int", 0),
    "numload": Opt("int", 0),
    "learning_rate": Opt("float", 1.0),
    "smooth": Opt("float", 0.0),
    "train_only_bn": _ab("int", 0),
    "onlyforward": Opt("int", 0),
    "impact": _ab("float", 1.0),
    "truth": Opt("int", 0),
    "clip": Opt("float", 0.0),
}
