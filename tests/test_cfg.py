"""The cfg parser and writer, and the option schema, against darknet.

Oracles: the head-layer options darknet itself reported for the conformance
cases (manifest ``cases[*].layers``), the defaults read in both darknets'
``src/parser.c`` (quoted beside each expected value), and cfgs built here whose
reading is worked out by hand from ``read_cfg`` / ``option_find`` / ``atoi`` /
``atof``.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from darknet_py import Darknet, parse_cfg, write_cfg
from darknet_py.cfg import Section, UnusedOptionWarning, save_cfg
from darknet_py.errors import CfgError, DarknetError, UnsupportedLayerError
from darknet_py.options import FLT_MAX, SCHEMA, section_dialects, section_schema
from tests.conftest import CONFORMANCE, manifest_or_empty

MANIFEST = manifest_or_empty()
CASES = sorted(MANIFEST.get("cases", {}))
DIALECTS = ("pjreddie", "alexeyab")
NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def f32(x: float) -> float:
    """A C float, as darknet holds the number."""
    return float(np.float32(x))


def _all_cfgs() -> list:
    """Every cfg of the conformance data: case/train/real folders and both zoo folders."""
    return sorted(CONFORMANCE.glob("*/*.cfg")) + sorted(CONFORMANCE.glob("zoo/*/*.cfg"))


ALL_CFGS = _all_cfgs()
ALL_IDS = [str(p.relative_to(CONFORMANCE)) for p in ALL_CFGS]


def parse(text: str, dialect: str = "auto", name: str = "t.cfg"):
    return parse_cfg(text, dialect=dialect, name=name, warn_unused=False)


def raises_cfg(text: str, message: str, line: int | None, dialect: str = "auto",
               cls: type = CfgError) -> CfgError:
    """Parsing ``text`` (as file t.cfg) raises exactly ``t.cfg:<line>: <message>``."""
    with pytest.raises(DarknetError) as info:
        parse_cfg(text, dialect=dialect, name="t.cfg", warn_unused=False)
    err = info.value
    assert type(err) is cls
    where = "t.cfg" if line is None else f"t.cfg:{line}"
    assert str(err) == f"{where}: {message}"
    assert err.file == "t.cfg" and err.line == line
    return err


def raises_build(text: str, cls: type, pattern: str, line: int, dialect: str = "auto") -> str:
    """Building ``text`` raises ``cls`` at t.cfg:<line> with a message matching ``pattern``."""
    with pytest.raises(DarknetError) as info:
        Darknet(parse(text, dialect))
    err = info.value
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert (err.file, err.line) == ("t.cfg", line), str(err)
    assert str(err).startswith(f"t.cfg:{line}: ")
    assert re.search(pattern, str(err)), str(err)
    return str(err)


# ------------------------------------------------------------------ round trip

@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("path", ALL_CFGS, ids=ALL_IDS)
def test_round_trip(path, dialect, conformance):
    """parse(write(parse(f))) == parse(f) in both dialects; a dialect that does not
    know one of the cfg's sections or activations rejects it with that reason."""
    try:
        cfg = parse_cfg(path, dialect=dialect, warn_unused=False)
    except CfgError as err:
        assert dialect == "pjreddie" and parse_cfg(path, warn_unused=False).dialect == "alexeyab"
        assert re.search(r"(unknown section \[\w+\] for pjreddie darknet|"
                         r"unknown activation for pjreddie darknet)", str(err)), str(err)
        return
    text = write_cfg(cfg)
    again = parse_cfg(text, dialect=dialect, name="written", warn_unused=False)
    assert again == cfg
    assert write_cfg(again) == text


# ------------------------------------------------------------------ darknet's own reading

def _head_expectations(layer: dict, dialect: str) -> dict:
    """The cfg options behind the values darknet reported for a head layer."""
    sec = layer["section"]
    if sec == "yolo":
        exp = {"classes": layer["classes"], "num": layer["total"], "mask": tuple(layer["mask"]),
               "max": layer["max_boxes"], "ignore_thresh": f32(layer["ignore_thresh"]),
               "truth_thresh": f32(layer["truth_thresh"]),
               "anchors": tuple(f32(b) for b in layer["biases"])}
        if dialect == "alexeyab":
            max_delta = layer["max_delta"]
            exp.update({
                "scale_x_y": f32(layer["scale_x_y"]), "new_coords": layer["new_coords"],
                "iou_loss": layer["iou_loss"], "iou_normalizer": f32(layer["iou_normalizer"]),
                "obj_normalizer": f32(layer["obj_normalizer"]),
                "cls_normalizer": f32(layer["cls_normalizer"]), "iou_thresh": f32(layer["iou_thresh"]),
                "max_delta": FLT_MAX if isinstance(max_delta, str) else f32(max_delta),
                "nms_kind": layer["nms_kind"], "beta_nms": f32(layer["beta_nms"])})
        return exp
    if sec == "region":
        keys = ("thresh", "object_scale", "noobject_scale", "class_scale", "coord_scale")
        return {"classes": layer["classes"], "num": layer["n"], "coords": layer["coords"],
                "softmax": layer["softmax"], "rescore": layer["rescore"],
                "bias_match": layer["bias_match"], "background": layer["background"],
                "anchors": tuple(f32(b) for b in layer["biases"]),
                **{k: f32(layer[k]) for k in keys}}
    if sec == "detection":
        keys = ("object_scale", "noobject_scale", "class_scale", "coord_scale")
        return {"classes": layer["classes"], "num": layer["n"], "coords": layer["coords"],
                "side": layer["side"], "softmax": layer["softmax"], "sqrt": layer["sqrt"],
                "rescore": layer["rescore"], **{k: f32(layer[k]) for k in keys}}
    return {}


@pytest.mark.parametrize("name", CASES)
def test_case_cfgs_read_as_darknet_read_them(name, conformance, manifest):
    """Layer count, section types, input size and every head option darknet reported
    (defaults included: max 90 vs 200, AlexeyAB's iou_normalizer 0.75 ...)."""
    case = manifest["cases"][name]
    dialect = case["implementation"].lower()
    cfg = parse_cfg(conformance / case["cfg"], dialect=dialect, warn_unused=False)
    assert len(cfg.layers) == case["net"]["n"]
    assert (cfg.net["width"], cfg.net["height"], cfg.net["channels"]) == \
        (case["net"]["w"], case["net"]["h"], case["net"]["c"])
    checked = 0
    for layer in case["layers"]:
        sec = cfg.layers[layer["index"]]
        assert sec.type == layer["section"]
        for key, value in _head_expectations(layer, dialect).items():
            assert sec[key] == value, (layer["index"], key, sec[key], value)
            checked += 1
    assert checked > 0 or name == "pj_alexnet_narrow16"


@pytest.mark.parametrize("name", CASES)
def test_case_dialect_detection(name, conformance, manifest):
    """Auto-detection gives the implementation that ran the case; the cross-implementation
    case runs pjreddie's unmodified yolov3-tiny.cfg under AlexeyAB, which nothing detects."""
    case = manifest["cases"][name]
    detected = parse_cfg(conformance / case["cfg"], warn_unused=False).dialect
    expected = "pjreddie" if name.endswith("_crossimpl") else case["implementation"].lower()
    assert detected == expected


# ------------------------------------------------------------------ defaults (src/parser.c)

_SKIP = object()  # the dialect does not read the key (or does not know the section)

# (section, extra lines, key, pjreddie's value, AlexeyAB's value); comments quote parser.c
DEFAULTS = [
    # parse_net_options (both): net->learning_rate = option_find_float(options, "learning_rate", .001);
    ("net", "", "learning_rate", f32(0.001), f32(0.001)),
    # net->decay = option_find_float(options, "decay", .0001);
    ("net", "", "decay", f32(0.0001), f32(0.0001)),
    # net->momentum = option_find_float(options, "momentum", .9);
    ("net", "", "momentum", f32(0.9), f32(0.9)),
    # if(net->adam){ ... net->eps = option_find_float(options, "eps", .0000001);  (AlexeyAB: .000001)
    ("net", "adam=1", "eps", f32(1e-7), f32(1e-6)),
    # net->B1 = option_find_float(options, "B1", .9);
    ("net", "adam=1", "B1", f32(0.9), f32(0.9)),
    # net->inputs = option_find_int_quiet(options, "inputs", net->h * net->w * net->c);
    ("net", "", "inputs", 32 * 32 * 3, 32 * 32 * 3),
    # net->max_crop = option_find_int_quiet(options, "max_crop",net->w*2);
    ("net", "", "max_crop", 64, 64),
    # net->min_crop = option_find_int_quiet(options, "min_crop",net->w);
    ("net", "", "min_crop", 32, 32),
    # pjreddie: net->max_ratio = option_find_float_quiet(options, "max_ratio", (float) net->max_crop / net->w);
    ("net", "max_crop=80", "max_ratio", 2.5, _SKIP),
    # AlexeyAB: net->flip = option_find_int_quiet(options, "flip", 1);
    ("net", "", "flip", _SKIP, 1),
    # AlexeyAB: net->batches_per_cycle = option_find_int_quiet(options, "sgdr_cycle", net->max_batches);
    ("net", "max_batches=5000", "sgdr_cycle", _SKIP, 5000),
    # AlexeyAB: net->learning_rate_min = option_find_float_quiet(options, "learning_rate_min", .00001);
    ("net", "", "learning_rate_min", _SKIP, f32(0.00001)),
    # AlexeyAB: net->resize_step = option_find_float_quiet(options, "resize_step", 32);
    ("net", "", "resize_step", _SKIP, 32),
    # net->power = option_find_float_quiet(options, "power", 4);
    ("net", "", "power", 4.0, 4.0),
    # char *policy_s = option_find_str(options, "policy", "constant");
    ("net", "", "policy", "constant", "constant"),
    # parse_convolutional: char *activation_s = option_find_str(options, "activation", "logistic");
    ("convolutional", "", "activation", "logistic", "logistic"),
    # int n = option_find_int(options, "filters",1);
    ("convolutional", "", "filters", 1, 1),
    # int groups = option_find_int_quiet(options, "groups", 1);
    ("convolutional", "", "groups", 1, 1),
    # AlexeyAB: int share_index = option_find_int_quiet(options, "share_index", -1000000000);
    ("convolutional", "", "share_index", _SKIP, -1000000000),
    # AlexeyAB: layer.angle = option_find_float_quiet(options, "angle", 15);
    ("convolutional", "", "angle", _SKIP, 15.0),
    # parse_maxpool: int size = option_find_int(options, "size",stride);
    ("maxpool", "stride=2", "size", 2, 2),
    # int padding = option_find_int_quiet(options, "padding", size-1);
    ("maxpool", "stride=2\nsize=3", "padding", 2, 2),
    # AlexeyAB: int stride_x = option_find_int_quiet(options, "stride_x", stride);
    ("maxpool", "stride=2", "stride_x", _SKIP, 2),
    # parse_dropout: float probability = option_find_float(options, "probability", .5);  (AlexeyAB: .2)
    ("dropout", "", "probability", 0.5, f32(0.2)),
    # parse_yolo: int max_boxes = option_find_int_quiet(options, "max",90);  (AlexeyAB: 200)
    ("yolo", "", "max", 90, 200),
    # pjreddie: l.random = option_find_int_quiet(options, "random", 0);  AlexeyAB: option_find_float_quiet
    ("yolo", "random=1.5", "random", 1, 1.5),
    # l.ignore_thresh = option_find_float(options, "ignore_thresh", .5);
    ("yolo", "", "ignore_thresh", 0.5, 0.5),
    # AlexeyAB: l.iou_normalizer = option_find_float_quiet(options, "iou_normalizer", 0.75);
    ("yolo", "", "iou_normalizer", _SKIP, 0.75),
    # AlexeyAB: l.max_delta = option_find_float_quiet(options, "max_delta", FLT_MAX);
    ("yolo", "", "max_delta", _SKIP, FLT_MAX),
    # AlexeyAB: l.sim_thresh = option_find_int_quiet(options, "sim_thresh", 0.8);  (an int: 0)
    ("yolo", "", "sim_thresh", _SKIP, 0),
    # AlexeyAB: l.beta_nms = option_find_float_quiet(options, "beta_nms", 0.6);
    ("yolo", "", "beta_nms", _SKIP, f32(0.6)),
    # parse_region: l.max_boxes = option_find_int_quiet(options, "max",30);  (AlexeyAB: 200)
    ("region", "", "max", 30, 200),
    # pjreddie only: l.background = option_find_int_quiet(options, "background", 0);
    ("region", "background=1", "background", 1, _SKIP),
    # parse_detection: layer.max_boxes = option_find_int_quiet(options, "max",90);  (AlexeyAB: 200)
    ("detection", "", "max", 90, 200),
    # int side = option_find_int(options, "side", 7);
    ("detection", "", "side", 7, 7),
    # parse_shortcut: char *activation_s = option_find_str(options, "activation", "linear");
    ("shortcut", "from=-1", "activation", "linear", "linear"),
    # pjreddie only: s.alpha = option_find_float_quiet(options, "alpha", 1);
    ("shortcut", "from=-1\nalpha=0.5", "alpha", 0.5, _SKIP),
    # parse_upsample: int stride = option_find_int(options, "stride",2);
    ("upsample", "", "stride", 2, 2),
    # parse_normalization: float beta =  option_find_float(options, "beta" , .75);
    ("normalization", "", "beta", 0.75, 0.75),
    # pjreddie only (parse_cost): layer.noobject_scale = option_find_float_quiet(options, "noobj", 1);
    ("cost", "noobj=2", "noobj", 2.0, _SKIP),
    # AlexeyAB parse_conv_lstm: l.state_constrain = option_find_int_quiet(options, "state_constrain", params.time_steps * 32);
    ("conv_lstm", "", "state_constrain", _SKIP, 3 * 32),
    # char *lstm_activation_s = option_find_str(options, "lstm_activation", "tanh");
    ("conv_lstm", "", "lstm_activation", _SKIP, "tanh"),
    # AlexeyAB parse_implicit: int filters = option_find_int(options, "filters", 128);
    ("implicit", "", "filters", _SKIP, 128),
    # pjreddie parse_iseg: int ids = option_find_int(options, "ids", 32);
    ("iseg", "", "ids", 32, _SKIP),
    # parse_network_cfg (both): l.learning_rate_scale = option_find_float_quiet(options, "learning_rate", 1);
    ("route", "layers=-1", "learning_rate", 1.0, 1.0),
    # AlexeyAB only: l.clip = option_find_float_quiet(options, "clip", 0);  (pjreddie: l.clip = net->clip)
    ("route", "layers=-1\nclip=2", "clip", _SKIP, 2.0),
    # pjreddie only: l.dontsave = option_find_int_quiet(options, "dontsave", 0);
    ("route", "layers=-1\ndontsave=1", "dontsave", 1, _SKIP),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("section,extra,key,pj,ab", DEFAULTS,
                         ids=[f"{d[0]}.{d[2]}" for d in DEFAULTS])
def test_defaults_and_reading(section, extra, key, pj, ab, dialect):
    """Each darknet's default; a key one darknet does not read keeps its default and,
    when the file sets it, is unused; a section one darknet does not know is an error."""
    expected = pj if dialect == "pjreddie" else ab
    head = NET + "time_steps=3\n"
    text = head + extra + "\n" if section == "net" else f"{head}[{section}]\n{extra}\n"
    if dialect not in section_dialects(section):
        assert expected is _SKIP
        with pytest.raises(CfgError, match=rf"unknown section \[{section}\] for {dialect}"):
            parse(text, dialect)
        return
    layer = parse(text, dialect).sections[-1]
    if expected is _SKIP:
        assert key in layer.options  # kept, at the value darknet's layer has
        default = section_schema(section)[key].default_for(dialect, layer.options, {})
        assert layer[key] == (f32(default) if isinstance(default, float) else default)
        assert (key in layer.unused) == (key in layer.given)
        return
    assert layer[key] == expected and type(layer[key]) is type(expected), (layer[key], expected)
    assert key not in layer.unused


def test_every_default_has_its_kinds_type():
    for kind in SCHEMA:
        for dialect in DIALECTS:
            opts: dict = {}
            for key, opt in section_schema(kind).items():
                value = opt.default_for(dialect, opts, {"time_steps": 1})
                opts[key] = value
                want = {"int": (int,), "float_int": (int,), "float": (int, float), "str": (str,),
                        "activation": (str,), "ints": (tuple,), "floats": (tuple,)}
                assert value is None or isinstance(value, want[opt.kind_for(dialect)]), (kind, key)


# ------------------------------------------------------------------ reading values like darknet

def test_strip_removes_every_space_like_darknet():
    """read_cfg strips every space and tab, even inside keys and values."""
    cfg = parse(NET + "[convolutional]\nfil ters = 1 6\n\tsize\t=\t3\n")
    conv = cfg.layers[0]
    assert (conv["filters"], conv["size"]) == (16, 3)
    assert list(conv.given) == ["filters", "size"]


def test_missing_comma_glues_numbers_like_darknet():
    """'61,45    61,45' is 61,4561,45 once darknet's strip() removed the spaces."""
    cfg = parse(NET + "[yolo]\nanchors = 10,14,  61,45    61,45\nnum=2\n")
    assert cfg.layers[0]["anchors"] == (10.0, 14.0, 61.0, 4561.0, 45.0)


def test_int_is_atoi_of_a_number():
    """atoi reads the integer prefix: 3.9 -> 3, .5 -> 0, -1.5 -> -1, 2#x -> 2."""
    cfg = parse(NET + "[convolutional]\nsize=3.9\npad=.5\nstride=2#two\n"
                      "[route]\nlayers=-1.5, 0\n")
    conv, route = cfg.layers
    assert (conv["size"], conv["pad"], conv["stride"]) == (3, 0, 2)
    assert route["layers"] == (-1, 0)


def test_float_is_a_c_float():
    """atof rounded into a float: 1.05 is float32(1.05), .1 and 1e-1 read the same."""
    cfg = parse(NET + "[yolo]\nscale_x_y=1.05\nignore_thresh=.1\ntruth_thresh=1e-1\n", "alexeyab")
    yolo = cfg.layers[0]
    assert yolo["scale_x_y"] == f32(1.05) != 1.05
    assert yolo["ignore_thresh"] == yolo["truth_thresh"] == f32(0.1)


def test_float_read_into_int():
    """spatial is read with option_find_float_quiet into an int: 1e1 -> 10 (atoi would give 1)."""
    cfg = parse(NET + "[softmax]\nspatial=1e1\n")
    assert cfg.layers[0]["spatial"] == 10


def test_lists_allow_one_trailing_comma():
    cfg = parse(NET + "steps=400000,450000,\nscales=.1,.1\npolicy=steps\n")
    assert cfg.net["steps"] == (400000, 450000)
    assert cfg.net["scales"] == (f32(0.1), f32(0.1))


def test_first_occurrence_wins_like_option_find():
    text = NET + "[convolutional]\nfilters=8\nsize=3\nfilters=16\n"
    with pytest.warns(UnusedOptionWarning, match=r"t\.cfg:8: \[convolutional\] filters=16 repeats "
                                                 r"the key of line 6; darknet reads only the first"):
        cfg = parse_cfg(text, name="t.cfg")
    conv = cfg.layers[0]
    assert conv["filters"] == 8 and conv.line_of("filters") == 6
    assert conv.repeated == [("filters", "16", 8)]
    assert parse(write_cfg(cfg)) == cfg


def test_crlf_comments_blank_lines_and_line_sources():
    lf = NET + "\n# a comment\n; another\n[convolutional]\nfilters=4\n"
    crlf = lf.replace("\n", "\r\n")
    assert parse(crlf) == parse(lf)
    assert parse(crlf).layers[0].line == 8
    lines = parse_cfg(lf.splitlines(keepends=True), warn_unused=False)  # e.g. file.readlines()
    assert lines == parse(lf) and lines.layers[0].line == 8


def test_string_values_keep_their_text():
    """Only numbers treat '#' as the end of the value (atoi/atof stop there)."""
    cfg = parse(NET + "[region]\ntree=data/9k#tree\nnum=1\n")
    assert cfg.layers[0]["tree"] == "data/9k#tree"


def test_derived_defaults_follow_the_values_read():
    cfg = parse(NET + "[maxpool]\nstride=3\n[local_avgpool]\nsize=4\n", "alexeyab")
    pool, avg = cfg.layers
    assert (pool["size"], pool["padding"], pool["stride_x"], pool["stride_y"]) == (3, 2, 3, 3)
    assert (avg["stride"], avg["size"], avg["padding"]) == (1, 4, 3)


# ------------------------------------------------------------------ unused keys

def _unused_warnings(text: str, dialect: str = "auto") -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_cfg(text, dialect=dialect, name="t.cfg")
    return [str(w.message) for w in caught if issubclass(w.category, UnusedOptionWarning)]


def test_unknown_key_is_unused():
    msgs = _unused_warnings(NET + "[convolutional]\nfilters=4\nfoo=bar\n")
    assert msgs == ["t.cfg:7: [convolutional] foo=bar is not read by pjreddie darknet "
                    "(unused field)"]


def test_other_dialects_key_is_unused_and_keeps_the_default():
    text = NET + "[maxpool]\nstride=2\nstride_x=1\n"
    assert _unused_warnings(text, "pjreddie") == [
        "t.cfg:7: [maxpool] stride_x=1 is not read by pjreddie darknet (unused field)"]
    pj = parse(text, "pjreddie").layers[0]
    assert pj["stride_x"] == 2 and pj.unused == {"stride_x": "1"}
    assert parse(text, "alexeyab").layers[0]["stride_x"] == 1
    assert parse(text).dialect == "alexeyab"  # stride_x in [maxpool] is AlexeyAB's


def test_conditionally_read_keys():
    """steps/scales only for policy=steps, B1 only with adam=1 (both darknets)."""
    text = NET + "policy=poly\nsteps=10,20\nscales=.1,.1\nB1=0.5\n"
    msgs = _unused_warnings(text)
    assert [m.split(" is not")[0] for m in msgs] == [
        "t.cfg:6: [net] steps=10,20", "t.cfg:7: [net] scales=.1,.1", "t.cfg:8: [net] B1=0.5"]
    net = parse(text).net
    assert net["steps"] is None and net["B1"] == f32(0.9)
    net = parse(text.replace("policy=poly", "policy=steps\nadam=1")).net
    assert net["steps"] == (10, 20) and net["B1"] == 0.5
    sgdr = text.replace("policy=poly", "policy=sgdr")  # AlexeyAB's; pjreddie: constant
    assert parse(sgdr, "alexeyab").net["steps"] == (10, 20)
    assert parse(sgdr, "pjreddie").net.unused.keys() == {"steps", "scales", "B1"}


def test_no_warning_when_disabled_or_clean(conformance, manifest):
    assert _unused_warnings(NET + "[convolutional]\nfoo=1\n") != []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_cfg(NET + "[convolutional]\nfoo=1\n", warn_unused=False)
        parse_cfg(conformance / manifest["cases"]["pj_yolov3-tiny_narrow8"]["cfg"])
    assert [w for w in caught if issubclass(w.category, UnusedOptionWarning)] == []


def test_unused_keys_of_the_zoo(conformance):
    """The only keys of both darknets' cfg folders that their parser does not read
    (checked by hand against parser.c) and the only repeated keys."""
    found = set()
    for path in sorted(conformance.glob("zoo/*/*.cfg")):
        cfg = parse_cfg(path, warn_unused=False)
        for s in cfg.sections:
            found |= {(path.parent.name, path.name, s.given[k], k) for k in s.unused}
            found |= {(path.parent.name, path.name, line, k + " (repeated)")
                      for k, _, line in s.repeated}
    sam = "yolov4-sam-mish-csp-reorg-bfm.cfg"
    assert found == {
        ("alexeyab", "Gaussian_yolov3_BDD.cfg", 24, "max_epochs"),   # read by nothing
        ("alexeyab", "writing.cfg", 10, "seen"), ("pjreddie", "writing.cfg", 10, "seen"),
        *{("alexeyab", sam, line, "uc_normalizer") for line in (1156, 1290, 1424)},  # [Gaussian_yolo] only
        *{("alexeyab", sam, line, "beta1") for line in (1160, 1294, 1428)},  # typo of beta_nms
        *{("alexeyab", f, line, key + " (repeated)")
          for f in ("efficientnet-lite3.cfg", "efficientnet_b0.cfg")
          for key, line in (("momentum", 33 if "lite" in f else 25),
                            ("decay", 34 if "lite" in f else 26))},
        *{(d, f, line, key + " (repeated)") for d in ("alexeyab", "pjreddie")
          for f, b in (("yolo9000.cfg", 8), ("yolov3-openimages.cfg", 6))
          for key, line in (("batch", b), ("subdivisions", b + 1))},
    }


# ------------------------------------------------------------------ dialect detection

@pytest.mark.parametrize("text,dialect", [
    (NET + "[convolutional]\nactivation=leaky\n", "pjreddie"),
    (NET + "[Gaussian_yolo]\n", "alexeyab"),                       # AlexeyAB-only section
    (NET + "[silence]\n", "alexeyab"),                             # ... under its alias
    (NET + "[convolutional]\nactivation=mish\n", "alexeyab"),      # AlexeyAB-only activation
    (NET + "[shortcut]\nfrom=-1\nactivation=swish\n", "alexeyab"),
    (NET + "[yolo]\niou_loss=ciou\n", "alexeyab"),                 # AlexeyAB-only option
    (NET + "letter_box=1\n", "alexeyab"),
    (NET + "policy=sgdr\n", "alexeyab"),                           # a value only AlexeyAB knows
    (NET + "[convolutional]\nfoo=1\n", "pjreddie"),                # unknown keys say nothing
    (NET + "[region]\nbackground=1\n", "pjreddie"),                # pjreddie-only keys neither
])
def test_dialect_detection(text, dialect):
    assert parse(text).dialect == dialect


def test_explicit_dialect_and_bad_dialect():
    assert parse(NET, "alexeyab").dialect == "alexeyab"
    raises_cfg(NET, "unknown dialect 'darknet'; expected 'auto' or one of "
                    "('pjreddie', 'alexeyab')", None, dialect="darknet")


# ------------------------------------------------------------------ broken cfgs

def test_line_without_equals():
    raises_cfg(NET + "[convolutional]\nfilters 16\n", "expected 'key=value', got 'filters 16'", 6)


def test_option_before_any_section():
    raises_cfg("# header\nbatch=1\n[net]\n", "option 'batch=1' appears before any [section]", 2)


def test_empty_key_and_empty_value():
    raises_cfg(NET + "=3\n", "'=3' has no key before '='", 5)
    raises_cfg(NET + "hue=\n", "hue= has no value (darknet skips such a line with "
                               "'Config file error')", 5)


def test_unknown_section():
    raises_cfg(NET + "\n[convolution]\nfilters=1\n", "unknown section [convolution]", 6)


def test_section_of_the_other_dialect():
    raises_cfg(NET + "[sam]\nfrom=-1\n", "unknown section [sam] for pjreddie darknet (only "
                                         "alexeyab's parser knows it)", 5, dialect="pjreddie")
    raises_cfg(NET + "[deconvolutional]\n", "unknown section [deconvolutional] for alexeyab "
                                            "darknet (only pjreddie's parser knows it)", 5,
               dialect="alexeyab")


@pytest.mark.parametrize("line,message", [
    ("filters=sixteen", "[convolutional] filters=sixteen: expected an integer"),
    ("filters=0x10", "[convolutional] filters=0x10: expected an integer"),
    ("filters=inf", "[convolutional] filters=inf: expected an integer"),
    ("dot=1.2.3", "[convolutional] dot=1.2.3: expected a number"),
    ("dot=1_000", "[convolutional] dot=1_000: expected a number"),
])
def test_unparsable_numbers(line, message):
    raises_cfg(NET + f"[convolutional]\nsize=1\n{line}\n", message, 7)


@pytest.mark.parametrize("line,message", [
    ("layers=-1,,-3", "[route] layers=-1,,-3: expected a comma-separated list of integers"),
    ("layers=-1;-3", "[route] layers=-1;-3: expected a comma-separated list of integers"),
    ("layers=,", "[route] layers=,: expected a comma-separated list of integers"),
])
def test_unparsable_int_lists(line, message):
    raises_cfg(NET + f"[route]\n{line}\n", message, 6)


def test_unparsable_float_list():
    raises_cfg(NET + "[yolo]\nmask=0\nanchors=10,14,a,27\n",
               "[yolo] anchors=10,14,a,27: expected a comma-separated list of numbers", 7)


def test_no_net_section():
    raises_cfg("[convolutional]\nfilters=1\n", "the first section must be [net] (or [network]), "
                                               "got [convolutional]", 1)
    raises_cfg("# only comments\n\n", "no sections: a cfg starts with [net]", 1)


def test_net_not_first():
    raises_cfg(NET + "[convolutional]\n[net]\nwidth=1\n", "[net] may only be the first section", 6)


def test_unclosed_and_trailing_headers():
    raises_cfg(NET + "[convolutional\nfilters=1\n", "section header '[convolutional' is not "
                                                    "closed with ']'", 5)
    raises_cfg(NET + "[convolutional] # conv\n", "section header '[convolutional] # conv' has "
                                                 "text after ']' (darknet would not recognise "
                                                 "the section)", 5)


def test_unknown_activation():
    raises_cfg(NET + "[convolutional]\nactivation=leakyy\n",
               "[convolutional] activation=leakyy: unknown activation for pjreddie darknet "
               "(known: elu, hardtan, leaky, lhtan, linear, loggy, logistic, plse, ramp, relie, "
               "relu, selu, stair, tanh)", 6)
    err = raises_cfg(NET + "[shortcut]\nfrom=-1\nactivation=mish\n", re.sub(
        r"\s+", " ", """[shortcut] activation=mish: unknown activation for pjreddie darknet
        (known: elu, hardtan, leaky, lhtan, linear, loggy, logistic, plse, ramp, relie, relu,
        selu, stair, tanh)"""), 7, dialect="pjreddie")
    assert "mish" in str(err)


def test_net_input_size_and_steps_policy():
    raises_cfg("[net]\nwidth=32\nheight=32\n", "[net]: no input size: set width, height and "
               "channels (or inputs) (darknet: 'No input parameters supplied')", 1)
    assert parse("[net]\ninputs=256\n").net["inputs"] == 256
    raises_cfg(NET + "policy=steps\nsteps=100\n", "[net]: policy=steps needs both steps= and "
               "scales= (darknet: 'STEPS policy must have steps and scales in cfg file')", 5)


def test_missing_file():
    with pytest.raises(CfgError, match=r"^no/such/file\.cfg: cannot read cfg: No such file"):
        parse_cfg("no/such/file.cfg")


CONV = "[convolutional]\nfilters={}\nsize=1\nactivation=linear\n"


def test_route_and_shortcut_outside_the_network():
    text = NET + CONV.format(4) + "\n[route]\nlayers=-3\n"
    raises_build(text, CfgError, r"\[route\]: layers=-3 refers to layer -2, outside layers 0\.\.0", 11)
    text = NET + CONV.format(4) + "\n[route]\nlayers=1\n"
    raises_build(text, CfgError, r"layers=1 refers to layer 1, outside layers 0\.\.0", 11)
    text = NET + CONV.format(4) + "\n[shortcut]\nfrom=-4\n"
    raises_build(text, CfgError, r"\[shortcut\]: from=-4 refers to layer -3, outside", 11)


def test_yolo_whose_mask_and_classes_do_not_match_the_conv():
    text = NET + CONV.format(20) + "\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nnum=3\nclasses=2\n"
    msg = raises_build(text, CfgError, r"layer 1 \[yolo\] needs 21 = 3 masks x \(4\+1\+2 classes\) "
                       r"input channels, but layer 0 \[convolutional\] at t\.cfg:5 gives 20 "
                       r"\(filters=20\)", 10)
    assert "[yolo]" in msg and "[convolutional]" in msg


def test_region_whose_num_and_classes_do_not_match_the_conv():
    text = NET + CONV.format(20) + "\n[region]\nanchors=1,2,3,4,5,6\nnum=3\nclasses=2\ncoords=4\n"
    raises_build(text, CfgError, r"layer 1 \[region\] needs 21 = num=3 x \(4 coords\+1\+2 classes\) "
                 r"input channels, but layer 0 \[convolutional\] at t\.cfg:5 gives 20", 10)


# ------------------------------------------------------------------ records and writing

def test_section_record():
    cfg = parse(NET + "\n[conv]\nfilters=8\nfoo=1\n")
    conv = cfg.layers[0]
    assert isinstance(conv, Section)
    assert (conv.type, conv.name, conv.line, conv.file) == ("convolutional", "conv", 6, "t.cfg")
    assert conv.given == {"filters": 7, "foo": 8} and conv.unused == {"foo": "1"}
    assert "filters" in conv and "size" not in conv and conv["size"] == 1
    assert conv.get("nope", 5) == 5
    err = conv.error("bad filters", "filters")
    assert isinstance(err, CfgError) and str(err) == "t.cfg:7: [conv]: bad filters"
    assert str(conv.error("bad")) == "t.cfg:6: [conv]: bad"


def test_writer_text():
    text = ("[net]\nwidth = 32\nheight=32\nchannels=3\nlearning_rate=.001\nscales=.1,.1\n"
            "policy=steps\nsteps=10,20\n\n[conv]\nfilters=8\nfoo=bar\nfilters=9\n")
    assert write_cfg(parse(text)) == (
        "[net]\nwidth=32\nheight=32\nchannels=3\nlearning_rate=0.001\nscales=0.1,0.1\n"
        "policy=steps\nsteps=10,20\n\n[conv]\nfilters=8\nfoo=bar\nfilters=9\n")


def test_writer_keeps_options_changed_in_code(tmp_path):
    cfg = parse(NET + "[maxpool]\nsize=2\n[convolutional]\nfilters=4\n", "alexeyab")
    cfg.net.options["width"] = 64          # given in the file
    cfg.layers[1].options["dilation"] = 2  # not given: appended
    cfg.layers[0].options["stride"] = 2    # not given; size stays as given
    path = tmp_path / "out.cfg"
    save_cfg(cfg, path)
    again = parse_cfg(path, dialect="alexeyab", warn_unused=False)
    assert again.net["width"] == 64 and again.layers[1]["dilation"] == 2
    pool = again.layers[0]
    assert (pool["stride"], pool["stride_x"], pool["padding"]) == (2, 2, 1)  # derived again
    assert [p.name for p in tmp_path.iterdir()] == ["out.cfg"]  # no temp file left
