"""Detections equal darknet's.

Oracles: the conformance data produced by the C darknets -- the ``decode_*``
cases (hand-made head outputs), every ``dets_*`` array of the random-weight
cases (pre-NMS rows, post-NMS rows in darknet's order, the canonical
``_list`` forms, AlexeyAB's cfg NMS), and the official yolov3-tiny on real
photos (darknet's detections and printed lines) -- plus small cases worked
out by hand from darknet's formulas.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import darknet_py
from darknet_py import Darknet
from darknet_py.cli import detect as cli_detect
from darknet_py.cli import main as cli_main
from darknet_py.detect import Detector
from darknet_py.errors import ConvertError
from darknet_py.fuse import FusedConvolutional, fuse, inference_model
from darknet_py.postprocess import (DecodeContext, Detections, get_network_boxes, nms_kind_of,
                                    nms_sort)
from tests.conftest import manifest_or_empty
from tests.golden import first_difference

MANIFEST = manifest_or_empty()
DECODE_CASES = sorted(MANIFEST.get("decode_cases", {}))
DET_ENTRIES = [(name, key) for name, c in sorted(MANIFEST.get("cases", {}).items())
               for key, e in sorted(c["detections"]["entries"].items()) if e["stage"] == "pre"]
REAL = MANIFEST.get("real", {}).get("images", [])


# ----------------------------------------------------------------- helpers
def _model(conformance, cfg, dialect, weights=None):
    m = Darknet(conformance / cfg, dialect=dialect)
    if weights:
        m.load_weights(conformance / weights)
    return m.eval()


def canonical_list(d: Detections) -> np.ndarray:
    """The conformance ``_list`` form: [class, prob, x, y, w, h, objectness] for
    every prob > 0, by class then descending prob."""
    i, c = np.nonzero(d.prob > 0)
    rows = np.stack([c.astype(np.float32), d.prob[i, c], *d.boxes[i].T, d.objectness[i]], 1) \
        if len(i) else np.zeros((0, 7), np.float32)
    return rows[np.lexsort((-rows[:, 1], rows[:, 0]))]


def assert_rows(ours: np.ndarray, ref: np.ndarray, what: str, rtol: float = 1e-6):
    assert ours.shape == ref.shape, f"{what}: {ours.shape[0]} rows, darknet {ref.shape[0]}"
    if ref.size:
        tol = rtol * max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(ours.astype(np.float64) - ref).max())
        assert diff <= tol, f"{what}: {first_difference(ours, ref, tol)}"


def _letter(model) -> bool:
    return model.dialect == "pjreddie" or bool(model.net.options.get("letter_box", 0))


# ------------------------------------------------------ decode_* cases
@pytest.mark.parametrize("name", DECODE_CASES)
@pytest.mark.parametrize("t", [25, 10])
def test_decode_case(conformance, manifest, name, t):
    dc = manifest["decode_cases"][name]
    dialect = dc["implementation"].lower()
    model = _model(conformance, dc["cfg"], dialect)
    z = np.load(conformance / dc["arrays"])
    heads = [model.module_list[h["index"]] for h in dc["head_layers"]]
    outs = [torch.from_numpy(z[h["key"]]) for h in dc["head_layers"]]
    assert model.width, model.height == tuple(dc["net_size"])
    ctx = DecodeContext(*dc["image_size"], *dc["net_size"], thresh=t / 100, hier_thresh=dc["hier_thresh"],
                        letter=_letter(model), dialect=dialect)
    pre = get_network_boxes(heads, outs, ctx)
    assert_rows(pre.rows(), z[f"dets_t{t}_pre"], f"{name} t{t} pre")
    post = nms_sort(pre, dc["nms"], "default", dialect=dialect)
    assert_rows(post.rows(), z[f"dets_t{t}_nms"], f"{name} t{t} nms (darknet's order)")
    assert_rows(canonical_list(post), z[f"dets_t{t}_nms_list"], f"{name} t{t} nms list")
    if dc["cfg_nms"]:
        kind, beta = nms_kind_of(model)
        assert (kind, beta) == (dc["cfg_nms"]["kind"], pytest.approx(dc["cfg_nms"]["beta_nms"]))
        post = nms_sort(pre, dc["nms"], kind, beta, dialect)
        assert_rows(post.rows(), z[f"dets_t{t}_cfgnms"], f"{name} t{t} cfg nms")
        assert_rows(canonical_list(post), z[f"dets_t{t}_cfgnms_list"], f"{name} t{t} cfg nms list")


# ------------------------------------------------- every conformance case
@pytest.mark.parametrize("name,key", DET_ENTRIES)
def test_case_detections(conformance, manifest, name, key):
    """Decode darknet's stored head outputs of the case: pre-NMS rows, post-NMS
    rows and lists, and (AlexeyAB) the cfg's nms_kind, equal darknet's."""
    case = manifest["cases"][name]
    dialect = case["implementation"].lower()
    model = _model(conformance, case["cfg"], dialect)
    z = np.load(conformance / case["arrays"])
    entry = case["detections"]["entries"][key]
    det = case["detections"]
    size = det["t25_image_size"] if entry["tag"] == "t25" else det["net_tag_image_size"]
    heads = [model.module_list[i] for i in model.heads]
    outs = [torch.from_numpy(z[f"out_{i:03d}"]) for i in model.heads]
    ctx = DecodeContext(*size, model.width, model.height, thresh=det["thresh"], hier_thresh=det["hier_thresh"],
                        letter=_letter(model), dialect=dialect)
    pre = get_network_boxes(heads, outs, ctx, entry["image"])
    assert_rows(pre.rows(), z[key], f"{name} {key}")
    post = nms_sort(pre, det["nms"], "default", dialect=dialect)
    nkey = key.replace("_pre", "_nms")
    assert_rows(post.rows(), z[nkey], f"{name} {nkey}")
    assert_rows(canonical_list(post), z[nkey + "_list"], f"{name} {nkey}_list")
    ckey = key.replace("_pre", "_cfgnms")
    if ckey in z:
        kind, beta = nms_kind_of(model)
        post = nms_sort(pre, det["nms"], kind, beta, dialect)
        assert_rows(post.rows(), z[ckey], f"{name} {ckey} ({kind})")
        if ckey + "_list" in z:
            assert_rows(canonical_list(post), z[ckey + "_list"], f"{name} {ckey}_list")


# ------------------------------------------------------ real yolov3-tiny
@pytest.fixture(scope="module")
def real_model(conformance, manifest):
    real = manifest["real"]
    return _model(conformance, real["cfg"], "pjreddie", real["weights"]["file"])


def _darknet_corners(d: dict, width: int, height: int) -> list[float]:
    """darknet's box corners in float pixels (its printed ones are these, truncated)."""
    x, y, w, h = d["box_rel_xywh"]
    c = [(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height]
    c = [max(c[0], 0.0), max(c[1], 0.0), min(c[2], width - 1.0), min(c[3], height - 1.0)]
    assert [int(v) for v in c] == d["box_pixels_left_top_right_bot"]
    return c


def _match(ours: list[dict], theirs: list[dict], thresh: float, size, what: str, prob_tol=0.01, px=1.0):
    """Same (class, box) set; probabilities within prob_tol; corners within px.
    Entries within prob_tol of the threshold may be missing on either side."""
    left = list(ours)
    for d in theirs:
        ref = _darknet_corners(d, *size)
        best = None
        for o in left:
            if o["class_id"] != d["cls"]:
                continue
            gap = max(abs(a - b) for a, b in zip(o["box"], ref))
            if best is None or gap < best[0]:
                best = (gap, o)
        if best is None:
            assert d["prob"] - thresh < prob_tol, f"{what}: darknet's {d['name']} {d['prob']:.3f} is missing"
            continue
        gap, o = best
        assert gap <= px, f"{what}: {d['name']} box {o['box']} vs darknet {ref}"
        assert abs(o["prob"] - d["prob"]) <= prob_tol, f"{what}: {d['name']} prob {o['prob']} vs {d['prob']}"
        left.remove(o)
    for o in left:
        assert o["prob"] - thresh < prob_tol, f"{what}: extra detection {o}"


@pytest.mark.parametrize("thresh", [0.1, 0.25, 0.5])
def test_cli_on_photo_files_equals_darknet(conformance, manifest, tmp_path, thresh):
    real = manifest["real"]
    folder = conformance / "real_yolov3-tiny"
    out = tmp_path / "dets.json"
    argv = ["detect", str(conformance / real["cfg"]), str(conformance / real["weights"]["file"]),
            *[str(folder / im["file"]) for im in real["images"]],
            "--names", str(conformance / real["names"]), "--thresh", str(thresh), "--json", str(out)]
    assert cli_main(argv) == 0
    got = json.loads(out.read_text())
    assert [g["image"] for g in got] == [str(folder / im["file"]) for im in real["images"]]
    names = (conformance / real["names"]).read_text().split("\n")
    for g, im in zip(got, real["images"]):
        assert set(g) == {"image", "width", "height", "detections"}  # sizes: issue 13 item 9
        assert (g["width"], g["height"]) == (im["width"], im["height"])
        for d in g["detections"]:
            assert set(d) == {"class_id", "name", "prob", "box"} and d["name"] == names[d["class_id"]]
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= im["width"] - 1 and 0 <= y1 <= y2 <= im["height"] - 1
        theirs = [d for d in im["detections"] if d["thresh"] == thresh]
        _match(g["detections"], theirs, thresh, (im["width"], im["height"]), f"{im['key']} @ {thresh}")
        if im["file"].endswith(".png"):  # decoded exactly: darknet's printed lines too
            lines = [f"{d['name']}: {d['prob'] * 100:.0f}%" for d in g["detections"]]
            assert lines == im["darknet_detect_stdout"][str(thresh)]


@pytest.mark.parametrize("key", [im["key"] for im in REAL])
def test_pipeline_on_darknets_decoded_image(conformance, manifest, real_model, key):
    """From darknet's own decoded pixels the only gap left is the network's
    float rounding: pre- and post-NMS rows equal darknet's within the end-to-end rule
    of the same network (yolov3-tiny, pjreddie) in the manifest; the decoding after the
    heads is element-wise (logistic, exp, a scale), so it carries that relative error over."""
    entry = next(im for im in manifest["real"]["images"] if im["key"] == key)
    tol = manifest["cases"]["pj_yolov3-tiny_narrow8"]["tolerances"]["recommended"][
        "end_to_end_relative_to_layer_max_abs"]
    z = np.load(conformance / entry["arrays"])
    det = Detector(real_model, nms=0)
    image = z["image_uint8_hwc"]
    x = torch.stack([det_prepare(image, det)])
    # letterbox: a bilinear resize of values in [0, 1], a few float32 operations per value
    # (< 8 ulp of 1.0 = 4.8e-7)
    assert float((x[0] - torch.from_numpy(z["letterbox"])).abs().max()) <= 1e-6
    with torch.inference_mode():
        outs = det.model(x)
    for t in ("10", "25", "50"):
        pre = det.post.with_(thresh=int(t) / 100)(outs, [(image.shape[1], image.shape[0])])[0]
        assert_rows(pre.rows(), z[f"dets_t{t}_pre"], f"{key} t{t} pre", rtol=tol)
        post = nms_sort(pre, 0.45)
        assert_rows(post.rows(), z[f"dets_t{t}_nms"], f"{key} t{t} nms", rtol=tol)


def det_prepare(image, det):
    from darknet_py.image import prepare, to_float
    return prepare(to_float(image), det.net_w, det.net_h, det.resize)


def test_python_api_detect(conformance, manifest):
    real = manifest["real"]
    folder = conformance / "real_yolov3-tiny"
    res = darknet_py.detect(conformance / real["cfg"], [folder / "dog.jpg", folder / "missing.jpg"],
                            weights=conformance / real["weights"]["file"], names=conformance / real["names"])
    assert res[0].ok and not res[1].ok and "missing.jpg" in res[1].error
    got = sorted((d.name, round(d.prob, 2)) for d in res[0].detections)
    dog = next(im for im in real["images"] if im["key"] == "dog")
    want = sorted((d["name"], round(d["prob"], 2)) for d in dog["detections"] if d["thresh"] == 0.25)
    assert [g[0] for g in got] == [w[0] for w in want]
    assert all(abs(a[1] - b[1]) <= 0.011 for a, b in zip(got, want))


# ------------------------------------------------------------------- CLI
def test_cli_reports_bad_images_and_goes_on(conformance, manifest, tmp_path, capsys):
    real = manifest["real"]
    folder = conformance / "real_yolov3-tiny"
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(folder / "dog.jpg", imgs / "dog.jpg")
    shutil.copy(folder / "chelsea.png", imgs / "chelsea.png")
    (imgs / "broken.jpg").write_bytes(b"not a jpeg at all")
    (imgs / "notes.txt").write_text("not an image, skipped by folder expansion")
    save = tmp_path / "annotated"
    argv = ["detect", str(conformance / real["cfg"]), str(conformance / real["weights"]["file"]),
            str(imgs), str(tmp_path / "nowhere.png"), "--names", str(conformance / real["names"]),
            "--save-dir", str(save)]
    rc = cli_main(argv)
    cap = capsys.readouterr()
    assert rc == 1
    assert "broken.jpg" in cap.err and "nowhere.png" in cap.err and "2 of 4 images failed" in cap.err
    # darknet-style lines for the two good images
    assert f"{imgs / 'dog.jpg'}: Predicted in" in cap.out and f"{imgs / 'chelsea.png'}: Predicted in" in cap.out
    lines = cap.out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(str(imgs / "dog.jpg")))
    dog = next(im for im in real["images"] if im["key"] == "dog")
    theirs = dog["darknet_detect_stdout"]["0.25"]  # darknet's own lines (stb_image decode)
    ours = lines[i + 1:i + 1 + len(theirs)]
    assert [o.split(":")[0] for o in ours] == [t.split(":")[0] for t in theirs]
    # the JPEG decoders differ slightly: percentages within 1
    assert all(abs(int(o.split()[-1][:-1]) - int(t.split()[-1][:-1])) <= 1 for o, t in zip(ours, theirs))
    import cv2
    for name in ("dog.jpg", "chelsea.png"):
        drawn = cv2.imread(str(save / name))
        assert drawn is not None and drawn.shape[:2] == cv2.imread(str(imgs / name)).shape[:2]
    assert not any(p.name.startswith(".") for p in save.iterdir())  # atomic writes left no temp files
    orig = cv2.imread(str(imgs / "dog.jpg"))
    assert np.abs(cv2.imread(str(save / "dog.jpg")).astype(int) - orig).max() > 100  # boxes were drawn


def test_cli_globs_and_stdout_json(conformance, manifest, capsys):
    real = manifest["real"]
    folder = conformance / "real_yolov3-tiny"
    argv = ["detect", str(conformance / real["cfg"]), str(conformance / real["weights"]["file"]),
            str(folder / "*.png"), "--json", "-", "--thresh", "0.1"]
    assert cli_main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert [os.path.basename(g["image"]) for g in got] == ["astronaut.png", "chelsea.png"]
    ast = got[0]["detections"]
    astronaut = next(im for im in real["images"] if im["key"] == "astronaut")
    want = [(d["cls"], str(d["cls"])) for d in astronaut["detections"] if d["thresh"] == 0.1]
    assert want and [(d["class_id"], d["name"]) for d in ast] == want  # no --names: the class index
    assert cli_detect.expand_images([str(folder / "*.nothing")]) == [str(folder / "*.nothing")]


def test_cli_alexeyab_prints_its_own_lines(conformance, manifest, capsys):
    """An AlexeyAB cfg prints AlexeyAB's header (milli-seconds) and its order
    (draw_detections_v3: by left edge, best class first), the JSON in the same order."""
    case = manifest["cases"]["ab_yolov4-tiny_narrow8"]
    photo = conformance / "real_yolov3-tiny" / "astronaut.png"
    argv = ["detect", str(conformance / case["cfg"]), str(conformance / case["weights"]),
            str(photo), "--thresh", "0.1"]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{photo}: Predicted in ") and lines[0].endswith(" milli-seconds.")
    model = Darknet(conformance / case["cfg"])
    model.load_weights(conformance / case["weights"])
    det = Detector(model, thresh=0.1)
    res = det([str(photo)])[0]
    assert len(res.detections) > 1 and lines[1:] == [f"{d.name}: {d.prob * 100:.0f}%" for d in res.detections]
    # firsts of each box (its best class) come in order of the box's left edge
    seen, lefts = set(), []
    for d in res.detections:
        if d.box not in seen:
            seen.add(d.box)
            lefts.append(d.box[0])
            assert d.prob == max(e.prob for e in res.detections if e.box == d.box)
    assert lefts == sorted(lefts)


def test_cli_bad_cfg_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[bogus]\n")
    assert cli_main(["detect", str(cfg), str(tmp_path / "w.weights"), "x.jpg"]) == 1
    err = capsys.readouterr().err
    assert "bad.cfg:5" in err and len(err.strip().splitlines()) == 1


def test_names_file_with_a_blank_line_keeps_class_indices(tmp_path, capsys):
    """darknet's get_labels: line k names class k, a blank line too.  Class 1 of a
    names file "\\nbee\\n" is "bee" in detect, as in map and training."""
    from darknet_py.data.datafile import read_names
    from tests.tiny_files import tiny_model_files
    cfg, weights, image = tiny_model_files(tmp_path)
    names = tmp_path / "two.names"
    names.write_bytes(b"\nbee\r\n")
    assert read_names(names) == ["", "bee"]
    argv = ["detect", str(cfg), str(weights), str(image), "--names", str(names), "--thresh", "0",
            "--json", "-"]
    assert cli_main(argv) == 0
    dets = json.loads(capsys.readouterr().out)[0]["detections"]
    assert {d["class_id"] for d in dets} == {0, 1}
    assert all(d["name"] == ["", "bee"][d["class_id"]] for d in dets)


def test_cli_reads_the_model_files_convert_writes(tmp_path, capsys):
    """detect MODEL.pt / MODEL.safetensors (cfg inside) and CFG MODEL.pt give the
    detections of CFG WEIGHTS (the conformance-tested path), image sizes included."""
    from tests.tiny_files import tiny_model_files
    cfg, weights, image = tiny_model_files(tmp_path)
    for ext in (".pt", ".safetensors"):
        assert cli_main(["convert", "--cfg", str(cfg), str(weights), str(tmp_path / f"m{ext}")]) == 0
    capsys.readouterr()

    def run(*files: str) -> list:
        assert cli_main(["detect", *files, str(image), "--thresh", "0.2", "--json", "-"]) == 0
        return json.loads(capsys.readouterr().out)

    want = run(str(cfg), str(weights))
    assert want[0]["width"] == 40 and want[0]["height"] == 24 and want[0]["detections"]
    assert run(str(tmp_path / "m.pt")) == want
    assert run(str(tmp_path / "m.safetensors")) == want
    assert run(str(cfg), str(tmp_path / "m.pt")) == want
    # a .weights without its cfg is a usage error saying so
    with pytest.raises(SystemExit) as stop:
        cli_main(["detect", str(weights), str(image)])
    assert stop.value.code == 2
    assert "a darknet .weights file needs its cfg before it" in capsys.readouterr().err
    # the Python API takes the same files
    ours = darknet_py.detect(str(tmp_path / "m.pt"), str(image), thresh=0.2)[0].to_json()
    assert json.loads(json.dumps(ours)) == want[0] | {"image": str(image)}


# --------------------------------------------------------------- fusion
# one case per kind of network (the deep pjreddie yolov3 / AlexeyAB yolov4 add time, not coverage)
FUSE_CASES = [n for n in ("pj_yolov3-tiny_narrow8", "pj_yolov2-tiny_narrow8", "pj_yolov1_narrow16",
                          "ab_yolov4-tiny_narrow8", "ab_yolov4-csp_narrow16") if n in MANIFEST.get("cases", {})]


@pytest.mark.parametrize("name", FUSE_CASES)
def test_fused_equals_unfused(conformance, manifest, name):
    """Every folded convolution equals conv + BN on the same input to 1e-5
    (relative to the layer's max: folding changes the rounding of one float32 dot
    product of K <= 4608 terms, about sqrt(K) * 2**-24 = 4e-6 of its scale); whole
    networks to 1e-5 where rounding is
    not amplified (the deep random AlexeyAB mish networks amplify any ulp change,
    see the case's end-to-end tolerance)."""
    case = manifest["cases"][name]
    model = _model(conformance, case["cfg"], case["implementation"].lower(), case["weights"])
    x = torch.from_numpy(np.load(conformance / case["arrays"])["input"])
    fused = fuse(model)
    convs = [i for i, m in enumerate(fused.module_list) if isinstance(m, FusedConvolutional)]
    assert convs
    inputs: dict[int, torch.Tensor] = {}
    hooks = [model.module_list[i].register_forward_hook(
        lambda mod, inp, out, i=i: inputs.__setitem__(i, (inp[0], out))) for i in convs]
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for i in convs:
            inp, want = inputs[i]
            got = fused.module_list[i](inp.clone())
            assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max())), f"layer {i}"
        out = fused(x)
        out_cl = out
        if "tiny" in name:  # channels_last: same numbers, another memory layout
            out_cl = inference_model(model, channels_last=True)(x.contiguous(memory_format=torch.channels_last))
    rtol = max(1e-5, case["tolerances"]["recommended"]["end_to_end_relative_to_layer_max_abs"] / 10)
    for a, b, c in zip(out, ref, out_cl):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= rtol * scale
        assert float((c - b).abs().max()) <= rtol * scale
    with pytest.raises(ConvertError, match="fused model cannot be saved"):
        fused.module_list[convs[0]].darknet_tensors()


def test_fused_official_weights(real_model, conformance, manifest):
    z = np.load(conformance / manifest["real"]["images"][3]["arrays"])
    x = torch.from_numpy(z["letterbox"])[None]
    tol = manifest["cases"]["pj_yolov3-tiny_narrow8"]["tolerances"]["recommended"][
        "end_to_end_relative_to_layer_max_abs"]   # the same network's end-to-end rule
    with torch.inference_mode():
        outs = inference_model(real_model)(x)
    for o, k in zip(outs, ("out_016", "out_023")):
        ref = torch.from_numpy(z[k])
        assert float((o - ref).abs().max()) <= tol * max(1.0, float(ref.abs().max()))


# --------------------------------------------------- worked by hand
def _yolo_model(extra: str = "", dialect: str = "alexeyab") -> Darknet:
    cfg = f"""[net]
width=64
height=32
channels=3
{extra}
[convolutional]
filters=14
size=1
activation=linear

[yolo]
mask=0,1
anchors=8,16, 32,8
classes=2
num=2
"""
    return Darknet(cfg, dialect=dialect).eval()


def test_yolo_decode_by_hand():
    """One 1x1 [yolo] cell, anchors (8,16), (32,8) on a 64x32 network, image 64x32."""
    model = _yolo_model()
    head = model.module_list[1]
    out = torch.zeros(1, 14, 1, 1)
    # anchor 0: x=.25 y=.75 w=log 2 h=0 obj=.9 classes .5 .2
    out[0, 0:7, 0, 0] = torch.tensor([0.25, 0.75, math.log(2.0), 0.0, 0.9, 0.5, 0.2])
    out[0, 7:14, 0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.2, 0.9, 0.9])  # obj .2 <= thresh .25
    ctx = DecodeContext(64, 32, 64, 32, thresh=0.25, letter=False, dialect="alexeyab")
    d = get_network_boxes([head], [out], ctx)
    assert len(d) == 1
    assert np.allclose(d.boxes[0], [0.25, 0.75, 2 * 8 / 64, 16 / 32])
    assert np.allclose(d.prob[0], [0.45, 0.0])  # .9*.2 = .18 <= .25 -> 0
    assert d.corners(0, 64, 32) == pytest.approx((16 - 8, 24 - 8, 16 + 8, 31.0))  # bottom clipped to h-1


def test_letterbox_correction_by_hand():
    """Image 200x100 into 64x64: new size 64x32, offset 16 rows; a box centred
    in the net at y=.5 stays at .5, one at y=16/64 maps to the image top edge."""
    model = _yolo_model("letter_box=1")
    model = Darknet(model.cfg, 64, 64)
    head = model.module_list[1]
    out = torch.zeros(1, 14, 1, 1)
    out[0, 0:7, 0, 0] = torch.tensor([0.5, 0.25, 0.0, 0.0, 0.9, 0.9, 0.0])
    ctx = DecodeContext(200, 100, 64, 64, thresh=0.25, letter=True, dialect="alexeyab")
    d = get_network_boxes([head], [out], ctx)
    assert d.boxes[0] == pytest.approx([0.5, 0.0, 8 / 64, 16 / 64 * 2], abs=1e-6)
    plain = get_network_boxes([head], [out], DecodeContext(200, 100, 64, 64, letter=False, dialect="alexeyab"))
    assert plain.boxes[0] == pytest.approx([0.5, 0.25, 8 / 64, 16 / 64], abs=1e-6)


def _dets(boxes, probs, obj=None):
    boxes = np.asarray(boxes, np.float32)
    probs = np.asarray(probs, np.float32)
    n = len(boxes)
    obj = np.ones(n, np.float32) if obj is None else np.asarray(obj, np.float32)
    return Detections(boxes, obj, probs, np.zeros(n, np.int64), np.ones(n, bool), probs.shape[1])


def test_nms_by_hand():
    """a, b: IoU .6 (same size, b shifted by a quarter width); c far away; dd has
    objectness 0 and is moved to the end untouched."""
    from darknet_py.boxes import box_iou_cxcywh
    a, b = [0.5, 0.5, 0.4, 0.4], [0.6, 0.5, 0.4, 0.4]
    c, dd = [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.4, 0.4]
    d = _dets([b, a, c, dd], [[0.6, 0.0], [0.8, 0.3], [0.7, 0.9], [0.0, 0.0]], obj=[1, 1, 1, 0])
    out = nms_sort(d, 0.5)
    # class 0 sorted a(.8) c(.7) b(.6): b suppressed by a; class 1 sorted c(.9) a(.3) b(0)
    assert out.boxes[:, 0].tolist() == pytest.approx([0.1, 0.5, 0.6, 0.5])
    assert out.prob.tolist() == [pytest.approx([0.7, 0.9]), pytest.approx([0.8, 0.3]), [0, 0], [0, 0]]
    assert out.sort_class.tolist() == [1, 1, 1, 0]
    # strict '>': a threshold equal to the IoU suppresses nothing
    iou = float(box_iou_cxcywh(torch.tensor(a), torch.tensor(b)))
    assert iou == pytest.approx(0.6)
    assert nms_sort(d, iou).prob[:, 0].tolist() == pytest.approx([0.7, 0.8, 0.6, 0.0])
    # greedynms: DIoU = IoU - (d^2/c^2)^0.6 with d = .1, c^2 = .5^2 + .4^2 -> .49 < .5 kept
    assert 0.6 - (0.01 / 0.41) ** 0.6 < 0.5
    assert nms_sort(d, 0.5, "greedynms").prob[:, 0].tolist() == pytest.approx([0.7, 0.8, 0.6, 0.0])
    # diounms with beta_nms=2: the distance term is .0006 -> suppressed like plain IoU
    assert nms_sort(d, 0.5, "diounms", beta=2.0).prob[:, 0].tolist() == pytest.approx([0.7, 0.8, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown nms_kind"):
        nms_sort(d, 0.45, "soft")


def test_print_order_pjreddie_and_alexeyab_by_hand():
    """pjreddie prints detections in array order, classes ascending.  AlexeyAB
    (draw_detections_v3) sorts the kept detections by left edge x - w/2, prints
    the best class first, then the others above thresh ascending; a class named
    dont_show* cannot select a detection but is still printed beside another."""
    boxes = [[0.6, 0.5, 0.2, 0.2],    # left .5
             [0.5, 0.5, 0.6, 0.2],    # left .2
             [0.3, 0.5, 0.1, 0.1],    # left .25, only dont_show above thresh
             [0.9, 0.5, 0.1, 0.1]]    # left .85, nothing above thresh
    probs = [[0.3, 0.9, 0.0], [0.6, 0.4, 0.8], [0.0, 0.0, 0.7], [0.2, 0.1, 0.0]]
    d = _dets(boxes, probs)
    pj = [(i, c) for i, c, _ in d.pairs(0.25)]
    assert pj == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 2)]
    ab = [(i, c) for i, c, _ in d.pairs(0.25, "alexeyab", ["a", "b", "dont_show_c"])]
    assert ab == [(1, 0), (1, 1), (1, 2), (0, 1), (0, 0)]
    ab_all = [(i, c) for i, c, _ in d.pairs(0.25, "alexeyab", ["a", "b", "c"])]
    assert ab_all == [(1, 2), (1, 0), (1, 1), (2, 2), (0, 1), (0, 0)]
    # equal maxima: the first class wins; probs equal to thresh are not above it
    tie = _dets([[0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.25]])
    assert [c for _, c, _ in tie.pairs(0.25, "alexeyab")] == [0, 1]


def test_alexeyab_region_activation_and_decode_by_hand():
    """AlexeyAB [region]: only objectness (logistic) and classes (softmax) are
    activated in the output; x, y get the logistic when decoded; objectness 1."""
    cfg = """[net]
width=32
height=32
channels=3
[convolutional]
filters=7
size=1
activation=linear
[region]
anchors=2,1
classes=2
num=1
softmax=1
"""
    for dialect in ("alexeyab", "pjreddie"):
        model = Darknet(cfg, dialect=dialect).eval()
        head = model.module_list[1]
        raw = torch.tensor([0.0, 2.0, 0.0, math.log(3.0), 1.0, 0.0, math.log(3.0)]).view(1, 7, 1, 1)
        out = head(raw)[0, :, 0, 0]
        sig = torch.sigmoid(torch.tensor([0.0, 2.0, 1.0]))
        if dialect == "alexeyab":
            assert torch.allclose(out, torch.tensor([0.0, 2.0, 0.0, math.log(3.0), float(sig[2]), 0.25, 0.75]))
        else:
            assert torch.allclose(out, torch.tensor([0.5, float(sig[1]), 0.0, math.log(3.0), float(sig[2]),
                                                     0.25, 0.75]))
        ctx = DecodeContext(32, 32, 32, 32, thresh=0.1, letter=False, dialect=dialect)
        d = get_network_boxes([head], [head(raw)], ctx)
        assert d.boxes[0] == pytest.approx([0.5, float(sig[1]), 2.0, 3.0], abs=1e-6)  # anchors in grid units
        obj = float(sig[2])
        assert d.objectness[0] == pytest.approx(1.0 if dialect == "alexeyab" else obj)
        assert d.prob[0] == pytest.approx([obj * 0.25, obj * 0.75], abs=1e-6)


def test_pjreddie_region_without_softmax_is_logistic():
    cfg = """[net]
width=32
height=32
channels=3
[convolutional]
filters=7
size=1
activation=linear
[region]
anchors=1,1
classes=2
num=1
"""
    model = Darknet(cfg, dialect="pjreddie").eval()
    raw = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]).view(1, 7, 1, 1)
    out = model.module_list[1](raw)[0, 5:, 0, 0]
    assert torch.allclose(out, torch.sigmoid(torch.tensor([1.0, -1.0])))


def test_gaussian_yolo_decode_by_hand():
    cfg = """[net]
width=64
height=64
channels=3
[convolutional]
filters=11
size=1
activation=linear
[Gaussian_yolo]
mask=0
anchors=16,32
classes=2
num=1
"""
    model = Darknet(cfg, dialect="alexeyab").eval()
    head = model.module_list[1]
    # activated output: x=.5 sx=.2 y=.25 sy=.2 w=0 sw=.2 h=log2 sh=.2 obj=.8 classes .5 .9
    out = torch.tensor([0.5, 0.2, 0.25, 0.2, 0.0, 0.2, math.log(2.0), 0.2, 0.8, 0.5, 0.9]).view(1, 11, 1, 1)
    ctx = DecodeContext(64, 64, 64, 64, thresh=0.25, letter=False, dialect="alexeyab")
    d = get_network_boxes([head], [out], ctx)
    assert d.boxes[0] == pytest.approx([0.5, 0.25, 16 / 64, 64 / 64], abs=1e-6)
    assert d.prob[0] == pytest.approx([0.8 * 0.5 * 0.8, 0.8 * 0.9 * 0.8], abs=1e-6)  # * (1 - mean sigma)


def test_nms_kind_comes_from_the_last_layer():
    assert nms_kind_of(_yolo_model()) == ("default", pytest.approx(0.6))
    m = _yolo_model().cfg
    text = darknet_py.write_cfg(m).replace("num=2", "num=2\nnms_kind=diounms\nbeta_nms=0.7")
    model = Darknet(text, dialect="alexeyab")
    assert nms_kind_of(model) == ("diounms", pytest.approx(0.7))
    model = Darknet(text, dialect="pjreddie")
    assert nms_kind_of(model)[0] == "default"
