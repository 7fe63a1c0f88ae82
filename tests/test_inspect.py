"""The layer table: darknet's shapes and BFLOPs, file offsets, header and size checks.

Oracles: BFLOPs printed by the darknets themselves (quoted below from their
output as posted in the two projects' issue trackers), the conformance
manifest (layer shapes, byte sizes darknet saved, the transposed file's
per-layer offsets, header fields), and files cut in the test.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from darknet_py.cli import main as cli
from darknet_py.layer_table import format_table, inspect, to_json
from tests.conftest import manifest_or_empty

MANIFEST = manifest_or_empty()


# darknet's printed BFLOPs. pjreddie/darknet issue #1039 (yolov3.cfg at 416, pjreddie's table):
#   0 conv 32 3x3/1 416x416x3 -> 416x416x32 0.299; 1 conv 64 3x3/2 -> 208x208x64 1.595;
#   2 conv 32 1x1/1 208x208x64 -> 208x208x32 0.177; 105 conv 255 1x1/1 52x52x256 0.353
#   and a darknet printing "Total BFLOPS 65.864" for yolov3 (conv layers only);
# AlexeyAB's darknet, which also counts pooling and shortcuts: yolov3.cfg "Total BFLOPS 65.879",
# yolov4.cfg at 608 "Total BFLOPS 128.459" (159 conv 1024 3x3/1 19x19x512 3.407, 160 conv 255
# 1x1/1 19x19x1024 0.189), yolov4-tiny.cfg at 416 "Total BFLOPS 6.910" (35 conv 256 3x3/1
# 26x26x384 1.196, 36 conv 255 1x1/1 26x26x256 0.088).
PRINTED = [
    ("pjreddie", "yolov3.cfg", 416, 65.864, {0: 0.299, 1: 1.595, 2: 0.177, 105: 0.353}),
    ("alexeyab", "yolov3.cfg", 416, 65.879, {0: 0.299, 1: 1.595, 105: 0.353}),
    ("alexeyab", "yolov4.cfg", 608, 128.459, {159: 3.407, 160: 0.189}),
    ("alexeyab", "yolov4-tiny.cfg", 416, 6.910, {35: 1.196, 36: 0.088}),
]


@pytest.mark.parametrize("dialect,cfg,size,total,layers", PRINTED,
                         ids=[f"{d}-{c}-{s}" for d, c, s, _, _ in PRINTED])
def test_bflops_equal_darknets_printout(conformance, dialect, cfg, size, total, layers):
    insp = inspect(conformance / "zoo" / dialect / cfg, dialect=dialect, width=size, height=size)
    assert round(insp.totals["bflops"], 3) == total
    for i, bf in layers.items():
        assert round(insp.rows[i].bflops, 3) == bf, f"layer {i}"


@pytest.mark.parametrize("name", sorted(MANIFEST.get("cases", {})))
def test_shapes_are_darknets(conformance, manifest, name):
    case = manifest["cases"][name]
    insp = inspect(conformance / case["cfg"], dialect=case["implementation"])
    assert len(insp.rows) == len(case["layers"])
    prev = (case["net"]["c"], case["net"]["h"], case["net"]["w"])
    for row, L in zip(insp.rows, case["layers"]):
        out = list(row.output) if len(L["out_shape"]) == 3 else [int(np.prod(row.output))]
        assert out == L["out_shape"], f"layer {row.index}"
        assert row.type == L["section"]
    assert insp.rows[0].input == prev


def test_offsets_match_the_transposed_file_layout(conformance, manifest):
    f = manifest["weights_format"]["files"]["alexnet_narrow16.transposed_alexeyab.weights"]
    insp = inspect(conformance / manifest["cases"]["pj_alexnet_narrow16"]["cfg"],
                   conformance / f["file"], dialect="alexeyab")
    rows = {r.index: r for r in insp.rows}
    for L in f["layout"]:
        assert rows[L["layer"]].offset == f["header_bytes"] + 4 * L["offset_floats"]
    assert insp.header.transposed and insp.header.seen == f["seen"] and insp.status == "exact"
    # rows tile the file: each starts where the previous ends
    for a, b in zip(insp.rows, insp.rows[1:]):
        assert b.offset == a.offset + a.nbytes and a.nbytes == 4 * a.floats


@pytest.mark.parametrize("entry", [e for e in MANIFEST.get("weights_format", {}).get("full_size_darknet_saved", [])
                                   if e["cfg"] in ("yolov3-tiny.cfg", "yolov4-tiny.cfg")],
                         ids=lambda e: f"{e['implementation']}-{e['cfg']}")
def test_totals_equal_darknet_saved_size(conformance, entry):
    folder = "pjreddie" if entry["implementation"] == "pjreddie" else "alexeyab"
    insp = inspect(conformance / "zoo" / folder / entry["cfg"], dialect=entry["implementation"])
    assert insp.totals["bytes"] == entry["bytes"] and insp.totals["floats"] == entry["parameters"]
    assert list(insp.header.version) == [entry["header"][k] for k in ("major", "minor", "revision")]


def test_params_worked_out_by_hand(conformance, manifest):
    insp = inspect(conformance / manifest["real"]["cfg"])
    # yolov3-tiny layer 0: 16 filters 3x3x3 + BN (biases, scales) = 16*27 + 2*16
    assert insp.rows[0].params == 16 * 27 + 32 and insp.rows[0].floats == 16 * 27 + 4 * 16
    # layer 15: 255 filters 1x1x512 with biases, no BN
    assert insp.rows[15].params == insp.rows[15].floats == 255 * 512 + 255
    assert insp.rows[1].params == insp.rows[1].floats == 0


def test_real_weights_exact(conformance, manifest):
    real = manifest["real"]
    insp = inspect(conformance / real["cfg"], conformance / real["weights"]["file"])
    assert insp.status == "exact"
    assert insp.header.seen == real["weights"]["seen"]
    assert list(insp.header.version) == real["weights"]["header"]
    assert insp.check.file_bytes == insp.totals["bytes"] == real["weights"]["bytes"]
    text = format_table(insp)
    assert f"seen {real['weights']['seen']} (64-bit)" in text
    assert "size matches the cfg exactly: 35434956 bytes = 20 header + 35434936 body" in text


def test_partial_truncated_trailing(conformance, manifest, tmp_path):
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    cfg = conformance / case["cfg"]
    full = (conformance / case["weights"]).read_bytes()
    p10 = manifest["weights_format"]["files"]["yolov3-tiny_narrow8.partial10_pjreddie.weights"]
    insp = inspect(cfg, conformance / p10["file"])
    assert (insp.status, insp.check.layers_in_file) == ("partial", 10)
    layer4 = inspect(cfg).rows[4]
    cut = tmp_path / "cut.weights"
    cut.write_bytes(full[:layer4.offset + 8])           # two floats into layer 4
    j = to_json(inspect(cfg, cut))
    assert j["file"]["status"] == "truncated"
    assert j["file"]["ends_inside"] == {"layer": 4, "type": "convolutional", "offset": layer4.offset,
                                        "floats_needed": layer4.floats, "floats_left": 2}
    assert j["file"]["expected_bytes"] == len(full)
    long = tmp_path / "long.weights"
    long.write_bytes(full + b"\0" * 12)
    j = to_json(inspect(cfg, long))
    assert (j["file"]["status"], j["file"]["trailing_floats"]) == ("trailing", 3)


def test_cli_table_and_json(conformance, manifest, tmp_path, capsys):
    case = manifest["cases"]["ab_yolov4-tiny_narrow8"]
    cfg, w = str(conformance / case["cfg"]), str(conformance / case["weights"])
    assert cli(["inspect", cfg, w]) == 0
    text = capsys.readouterr().out
    assert "header: version 0.2.5, seen 0 (64-bit), 20 bytes" in text
    assert text.count("\n") == len(case["layers"]) + 6
    assert cli(["inspect", cfg, w, "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert len(j["layers"]) == case["net"]["n"] and j["file"]["status"] == "exact"
    assert j["header"]["revision"] == 5 and j["dialect"] == "alexeyab"
    assert j["totals"]["bytes"] == case["weights_bytes"]
    route = j["layers"][3]
    assert route["type"] == "route" and route["note"] == "layers 2 group 1/2"
    cut = tmp_path / "cut.weights"
    cut.write_bytes((conformance / case["weights"]).read_bytes()[:1000])
    assert cli(["inspect", cfg, str(cut)]) == 1
    assert "file ends inside layer" in capsys.readouterr().out
    bad = tmp_path / "bad.weights"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert cli(["inspect", cfg, str(bad)]) == 1
    assert "zip archive" in capsys.readouterr().err
