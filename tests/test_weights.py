"""Darknet .weights reading and writing, proven against darknet-written files.

Oracles: every weights file of the conformance data (written or verified by
the C darknets, see manifest ``weights_format``), the byte sizes darknet saved
for full-size cfgs, and small files built here with ``struct.pack`` whose
layout is worked out by hand from darknet's load/save functions.
"""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest
import torch

from darknet_py import Darknet, DarknetError, WeightsError
from darknet_py import weights as W
from darknet_py.weights import Header, PartialWeightsWarning, check_weights, seen_bytes
from tests.conftest import manifest_or_empty

MANIFEST = manifest_or_empty()

# which conformance case's cfg each weights_format file belongs to (by file name prefix)
_WF_CASE = {"yolov3-tiny_narrow8": "pj_yolov3-tiny_narrow8", "alexnet_narrow16": "pj_alexnet_narrow16"}


def _wf_dialects(entry: dict) -> list[str]:
    """The dialect(s) whose darknet reads ``entry`` back to the same bytes (from the manifest)."""
    verified = entry.get("verified")
    if verified:
        return [d for d, v in verified.items()
                if v.get("resaved_body_identical", v.get("resaved_body_identical_to_normal_layout"))]
    return ["alexeyab" if entry["written_by"].lower().startswith("alexeyab") else "pjreddie"]


def _all_weight_files() -> list[tuple[str, str, str]]:
    """(cfg, weights, dialect) for every weights file in the conformance data."""
    m = MANIFEST
    out = []
    for c in m.get("cases", {}).values():
        out.append((c["cfg"], c["weights"], c["implementation"].lower()))
    for name, f in m.get("weights_format", {}).get("files", {}).items():
        case = m["cases"][_WF_CASE[name.split(".")[0]]]
        for d in _wf_dialects(f):
            out.append((case["cfg"], f["file"], d))
    if m.get("real"):
        out.append((m["real"]["cfg"], m["real"]["weights"]["file"], m["real"]["implementation"]))
    return out


ALL_FILES = _all_weight_files()


def _quiet_load(model, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialWeightsWarning)
        return model.load_weights(path, **kw)


# ------------------------------------------------------------------ header rule

@pytest.mark.parametrize("major,minor,dialect,width", [
    (0, 0, "pjreddie", 4), (0, 1, "pjreddie", 4), (0, 2, "pjreddie", 8), (0, 1, "alexeyab", 4),
    (0, 2, "alexeyab", 8), (1, 0, "pjreddie", 8),            # 1*10+0 >= 2
    (0, 999, "pjreddie", 8), (0, 1000, "pjreddie", 4),        # pjreddie: minor must be < 1000
    (0, 1001, "pjreddie", 4), (0, 1001, "alexeyab", 8),       # AlexeyAB has no < 1000 check
    (1000, 0, "pjreddie", 4), (1000, 0, "alexeyab", 8),
])
def test_seen_width_rule(major, minor, dialect, width):
    assert seen_bytes(major, minor, dialect) == width
    h = Header.new((major, minor, 0), 7, dialect)
    assert h.size == 12 + width and len(h.pack()) == 12 + width


@pytest.mark.parametrize("major,minor,transposed", [(0, 2, False), (0, 1000, False), (0, 1001, True),
                                                     (1001, 0, True), (1000, 1000, False)])
def test_transposed_rule(major, minor, transposed):
    assert Header(major, minor, 0).transposed is transposed


def test_header_pack_layout():
    # worked out by hand: three little-endian int32 then seen
    assert Header(0, 2, 0, 5_000_000_000, 8).pack() == (b"\0\0\0\0\2\0\0\0\0\0\0\0"
                                                         + (5_000_000_000).to_bytes(8, "little"))
    assert Header(0, 1, 0, 12345, 4).pack() == struct.pack("<iiiI", 0, 1, 0, 12345)
    with pytest.raises(WeightsError, match=r"seen=4294967296 does not fit the 32-bit field"):
        Header(0, 1, 0, 2 ** 32, 4).pack()


# ------------------------------------------------------------------ every conformance file

@pytest.mark.parametrize("cfg,weights,dialect", ALL_FILES,
                         ids=[f"{w.split('/')[-1]}-{d}" for _, w, d in ALL_FILES])
def test_load_then_save_is_byte_identical(conformance, tmp_path, cfg, weights, dialect):
    model = Darknet(conformance / cfg, dialect=dialect)
    report = _quiet_load(model, conformance / weights)
    out = tmp_path / "resaved.weights"
    model.save_weights(out, cutoff=report.layers_loaded if report.partial else None)
    original = (conformance / weights).read_bytes()
    resaved = out.read_bytes()
    assert len(resaved) == len(original)
    assert resaved == original, f"first differing byte {np.argmax(np.frombuffer(resaved, np.uint8) != np.frombuffer(original, np.uint8))}"


@pytest.mark.parametrize("name", sorted(MANIFEST.get("cases", {})))
def test_case_files_match_manifest_size_and_layout(conformance, manifest, name):
    case = manifest["cases"][name]
    model = Darknet(conformance / case["cfg"], dialect=case["implementation"].lower())
    chk = check_weights(model, conformance / case["weights"])
    assert chk.exact, chk.summary()
    assert chk.file_bytes == case["weights_bytes"]
    assert chk.header.size + 4 * chk.floats_needed == case["weights_bytes"]


@pytest.mark.parametrize("name", sorted(MANIFEST.get("weights_format", {}).get("files", {})))
def test_weights_format_headers(conformance, manifest, name):
    f = manifest["weights_format"]["files"][name]
    for dialect in _wf_dialects(f):
        h = W.read_header(conformance / f["file"], dialect)
        assert list(h.version) == f["header"]
        assert h.seen == f["seen"]
        if "header_bytes" in f:
            assert h.size == f["header_bytes"]


def test_seen32_file_resaved_with_darknets_own_header(conformance, manifest, tmp_path):
    """Darknet re-saves the 0.1.0 file with its own header and the same body (manifest 'verified')."""
    f = manifest["weights_format"]["files"]["yolov3-tiny_narrow8.hdr_0.1.0_seen32.weights"]
    cfg = conformance / manifest["cases"]["pj_yolov3-tiny_narrow8"]["cfg"]
    data = (conformance / f["file"]).read_bytes()
    for dialect, v in f["verified"].items():
        model = Darknet(cfg, dialect=dialect)
        model.load_weights(conformance / f["file"])
        assert model.seen == v["loaded_seen"]
        out = tmp_path / f"{dialect}.weights"
        h = model.save_weights(out, version=W.DEFAULT_VERSION[dialect])
        assert list(h.version) == v["resaved_header"] and h.seen_width == 8
        resaved = out.read_bytes()
        assert struct.unpack_from("<iiiQ", resaved) == (*v["resaved_header"], v["loaded_seen"])
        assert resaved[20:] == data[16:]   # body identical


def _normal_alexnet(conformance, manifest, dialect):
    case = manifest["cases"]["pj_alexnet_narrow16"]
    model = Darknet(conformance / case["cfg"], dialect=dialect)
    model.load_weights(conformance / case["weights"])
    return model, (conformance / case["weights"]).read_bytes()


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_transposed_file_of_own_dialect(conformance, manifest, tmp_path, dialect):
    name = f"alexnet_narrow16.transposed_{dialect}.weights"
    f = manifest["weights_format"]["files"][name]
    ref, normal = _normal_alexnet(conformance, manifest, dialect)
    model = Darknet(conformance / manifest["cases"]["pj_alexnet_narrow16"]["cfg"], dialect=dialect)
    model.load_weights(conformance / f["file"])
    assert model.seen == f["verified"][dialect]["loaded_seen"]
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    # saved in the normal layout, the body equals darknet's normal file (resaved_body_identical_to_normal_layout)
    out = tmp_path / "normal.weights"
    model.save_weights(out, version=(0, 2, 0), seen=0)
    assert out.read_bytes()[20:] == normal[20:]
    # the manifest's per-layer layout of the transposed file
    records = {r.index: r for r in W.layout(model, 0, transposed=True)}
    for L in f["layout"]:
        r = records[L["layer"]]
        assert (r.offset // 4, r.type) == (L["offset_floats"], L["type"])
        counts = dict(r.tensors)
        assert counts["biases"] == L["biases"]
        if L["type"] == "connected":
            assert counts["weights"] == L["inputs"] * L["outputs"]
            assert r.entries[1].matrix == (L["inputs"], L["outputs"])
        else:
            assert counts["weights"] == L["weights"]


def test_transposed_pjreddie_file_read_by_alexeyab(conformance, manifest):
    """AlexeyAB reads a 64-bit seen for 0.1001 (manifest: loaded_seen 13678110273725006601); its body
    is then 4 bytes short, so the last layer does not fit."""
    f = manifest["weights_format"]["files"]["alexnet_narrow16.transposed_pjreddie.weights"]
    assert W.read_header(conformance / f["file"], "alexeyab").seen == f["verified"]["alexeyab"]["loaded_seen"]
    model = Darknet(conformance / manifest["cases"]["pj_alexnet_narrow16"]["cfg"], dialect="alexeyab")
    last = f["layout"][-1]
    need = last["biases"] + last["inputs"] * last["outputs"]
    with pytest.raises(WeightsError, match=rf"file ends inside layer {last['layer']} \[connected\] "
                                           rf"at byte offset {20 + 4 * last['offset_floats']}: the layer "
                                           rf"needs {need} floats, {need - 1} are left"):
        model.load_weights(conformance / f["file"])


def test_transposed_alexeyab_file_read_by_pjreddie(conformance, manifest, tmp_path):
    """pjreddie reads a 32-bit seen (777) from the 20-byte header: one float is left over, and with
    allow_trailing the body is shifted (manifest: resaved body not identical)."""
    f = manifest["weights_format"]["files"]["alexnet_narrow16.transposed_alexeyab.weights"]
    model = Darknet(conformance / manifest["cases"]["pj_alexnet_narrow16"]["cfg"], dialect="pjreddie")
    with pytest.raises(WeightsError, match=r"1 floats \(4 bytes\) are left after the last layer \(13\)"):
        model.load_weights(conformance / f["file"])
    report = model.load_weights(conformance / f["file"], allow_trailing=True)
    assert report.header.seen == f["verified"]["pjreddie"]["loaded_seen"]
    assert report.trailing_floats == 1
    _, normal = _normal_alexnet(conformance, manifest, "pjreddie")
    out = tmp_path / "x.weights"
    model.save_weights(out, version=(0, 2, 0))
    assert out.read_bytes()[20:] != normal[20:]


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_partial_file_loads_first_layers_and_says_so(conformance, manifest, dialect):
    f = manifest["weights_format"]["files"][f"yolov3-tiny_narrow8.partial10_{dialect}.weights"]
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    full = Darknet(conformance / case["cfg"], dialect=dialect)
    full.load_weights(conformance / case["weights"])
    model = Darknet(conformance / case["cfg"], dialect=dialect)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-7.0)   # a sentinel: layers not in the file must keep it
    with pytest.warns(PartialWeightsWarning, match=r"loaded 10/24 layers.*layers 10\.\.23 keep their "
                                                   r"initial values"):
        report = model.load_weights(conformance / f["file"])
    assert report.partial and report.layers_loaded == f["N"] == 10
    assert report.floats_read == report.floats_in_file == f["body_floats"]
    assert report.header.seen == f["seen"]
    for i, (m, ref) in enumerate(zip(model.module_list, full.module_list)):
        for (name, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
            if i < 10:
                assert torch.equal(a, b), f"layer {i} {name}"
            else:
                assert bool((a == -7.0).all()), f"layer {i} {name} was changed"
    # the body is a byte prefix of the full body (body_is_prefix_of_full)
    body = (conformance / f["file"]).read_bytes()[20:]
    assert (conformance / case["weights"]).read_bytes()[20:20 + len(body)] == body
    with pytest.raises(WeightsError, match=r"partial file: it holds only layers 0\.\.9 of 24 "
                                           rf"\({f['body_floats']} of \d+ floats\)"):
        model.load_weights(conformance / f["file"], allow_partial=False)


def test_cutoff_loads_and_saves_first_layers(conformance, manifest, tmp_path):
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    full = Darknet(conformance / case["cfg"])
    full.load_weights(conformance / case["weights"])
    model = Darknet(conformance / case["cfg"])
    report = model.load_weights(conformance / case["weights"], cutoff=3)   # rest of the file skipped
    assert report.layers_loaded == 3 and not report.partial
    assert torch.equal(model.module_list[2].weights, full.module_list[2].weights)
    assert not torch.equal(model.module_list[4].weights, full.module_list[4].weights)
    out = tmp_path / "cut.weights"
    full.save_weights(out, cutoff=10)
    partial = manifest["weights_format"]["files"]["yolov3-tiny_narrow8.partial10_pjreddie.weights"]
    assert out.read_bytes() == (conformance / partial["file"]).read_bytes()


@pytest.mark.parametrize("entry", MANIFEST.get("weights_format", {}).get("full_size_darknet_saved", []),
                         ids=lambda e: f"{e['implementation']}-{e['cfg']}")
def test_full_size_layout_matches_darknet_saved_bytes(conformance, entry):
    folder = "pjreddie" if entry["implementation"] == "pjreddie" else "alexeyab"
    model = Darknet(conformance / "zoo" / folder / entry["cfg"], dialect=entry["implementation"])
    h = entry["header"]
    records = W.layout(model, 12 + h["seen_bytes"])
    assert sum(r.floats for r in records) == entry["parameters"]
    assert records[-1].end == entry["bytes"]


# ------------------------------------------------------------------ header versions

def test_write_chosen_header_version(conformance, manifest, tmp_path):
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    model = Darknet(conformance / case["cfg"])
    model.load_weights(conformance / case["weights"])
    body = (conformance / case["weights"]).read_bytes()[20:]
    model.seen = 12345
    h1 = model.save_weights(tmp_path / "v01.weights", version=W.parse_version("0.1"))
    data = (tmp_path / "v01.weights").read_bytes()
    assert (h1.size, data[:16], data[16:]) == (16, struct.pack("<iiiI", 0, 1, 0, 12345), body)
    model.seen = 5_000_000_000
    model.save_weights(tmp_path / "v02.weights", version=W.parse_version("0.2"))
    data = (tmp_path / "v02.weights").read_bytes()
    assert data[:20] == struct.pack("<iiiQ", 0, 2, 0, 5_000_000_000) and data[20:] == body
    with pytest.raises(WeightsError, match=r"seen=5000000000 does not fit the 32-bit field"):
        model.save_weights(tmp_path / "bad.weights", version=(0, 1, 0))
    assert not (tmp_path / "bad.weights").exists()
    with pytest.raises(WeightsError, match=r"header version '0\.x': expected MAJOR\.MINOR"):
        W.parse_version("0.x")


# ------------------------------------------------------------------ hand-made files

TINY = """
[net]
width=4
height=4
channels=2

[convolutional]
batch_normalize=1
filters=3
size=1
stride=1
pad=0
activation=leaky

[maxpool]
size=2
stride=2

[connected]
output=4
activation=linear
"""
# by hand: layer 0 = biases 3, scales 3, mean 3, variance 3, weights 3*2 = 18 floats;
# layer 1 maxpool: none (-> 3x2x2); layer 2 connected: biases 4, weights 4*12 = 52 floats
TINY_FLOATS = [18, 0, 52]


def _tiny(dialect="pjreddie", text=TINY):
    return Darknet(text, dialect=dialect)


def _write(path, header: bytes, floats) -> str:
    path.write_bytes(header + np.asarray(floats, dtype="<f4").tobytes())
    return str(path)


H020 = struct.pack("<iiiQ", 0, 2, 0, 99)


def test_tiny_layout_by_hand():
    recs = W.layout(_tiny(), 20)
    assert [r.floats for r in recs] == TINY_FLOATS
    assert [r.offset for r in recs] == [20, 92, 92]
    assert recs[0].tensors == [("biases", 3), ("scales", 3), ("rolling_mean", 3),
                               ("rolling_variance", 3), ("weights", 6)]
    assert recs[2].tensors == [("biases", 4), ("weights", 48)]


def test_tiny_values_land_where_darknet_puts_them(tmp_path):
    vals = np.arange(70, dtype=np.float32)
    m = _tiny()
    m.load_weights(_write(tmp_path / "t.weights", H020, vals))
    conv, fc = m.module_list[0], m.module_list[2]
    assert conv.biases.tolist() == [0, 1, 2] and conv.scales.tolist() == [3, 4, 5]
    assert conv.rolling_mean.tolist() == [6, 7, 8] and conv.rolling_variance.tolist() == [9, 10, 11]
    assert conv.weights.flatten().tolist() == list(range(12, 18))
    assert conv.weights[1, :, 0, 0].tolist() == [14, 15]          # [n][c][size][size]
    assert fc.biases.tolist() == [18, 19, 20, 21]
    assert fc.weights[0, :3].tolist() == [22, 23, 24]              # [outputs][inputs]
    assert fc.weights[1, 0].item() == 22 + 12
    assert m.seen == 99


def test_tiny_transposed_connected(tmp_path):
    """major or minor > 1000: the [connected] matrix is stored [inputs][outputs]."""
    vals = np.arange(70, dtype=np.float32)
    m = _tiny()
    m.load_weights(_write(tmp_path / "t.weights", struct.pack("<iiiI", 0, 1001, 0, 5), vals))
    fc = m.module_list[2]
    assert fc.weights[:, 0].tolist() == [22, 23, 24, 25]   # first file row = input 0 of every output
    assert fc.weights[0, 1].item() == 26
    m.save_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == (tmp_path / "t.weights").read_bytes()


BROKEN = [
    # (name, file bytes, exact message fragment)
    ("empty", b"", r"file has 0 bytes, too short for a darknet header"),
    ("eight_bytes", struct.pack("<ii", 0, 2), r"file has 8 bytes, too short for a darknet header"),
    ("header_cut", struct.pack("<iiiI", 0, 2, 0, 0),
     r"file ends inside the header: 16 bytes, but version 0\.2\.0 needs 20 \(8-byte seen\)"),
    ("negative_major", struct.pack("<iiiQ", -1, 2, 0, 0) + b"\0" * 280,
     r"header version -1\.2\.0 is not a darknet weights header"),
    ("huge_revision", struct.pack("<iiiQ", 0, 2, 1 << 24, 0) + b"\0" * 280,
     r"header version 0\.2\.16777216 is not a darknet weights header"),
    ("zip", b"PK\x03\x04" + b"\0" * 300, r"zip archive \(a torch \.pt checkpoint\?\)"),
    ("safetensors", struct.pack("<Q", 30) + b'{"__metadata__":{}}' + b" " * 300,
     r"looks like a \.safetensors file"),
    ("cfg_text", b"[net]\nwidth=4\n" + b"#" * 300, r"text file \(a cfg\?\)"),
    ("ends_in_first_layer", H020 + np.zeros(10, "<f4").tobytes(),
     r"file ends inside layer 0 \[convolutional\] at byte offset 20: the layer needs 18 floats, 10 "
     r"are left \(in its 'rolling_variance', float 1 of 3\)"),
    ("ends_in_connected", H020 + np.zeros(67, "<f4").tobytes(),
     r"file ends inside layer 2 \[connected\] at byte offset 92: the layer needs 52 floats, 49 are "
     r"left \(in its 'weights', float 45 of 48\)"),
    ("trailing_floats", H020 + np.zeros(72, "<f4").tobytes(),
     r"2 floats \(8 bytes\) are left after the last layer \(2\); the cfg does not match"),
    ("stray_bytes", H020 + np.zeros(70, "<f4").tobytes() + b"\1\2",
     r"the body is not a whole number of float32 values: 2 stray bytes"),
    ("seen32_shifts_body", struct.pack("<iiiI", 0, 1, 0, 0) + np.zeros(70, "<f4").tobytes()[4:],
     r"file ends inside layer 2 \[connected\] at byte offset 88: the layer needs 52 floats, 51 are left"),
]


@pytest.mark.parametrize("name,data,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_weights_files(tmp_path, name, data, message):
    path = tmp_path / f"{name}.weights"
    path.write_bytes(data)
    m = _tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(WeightsError, match=message) as info:
        m.load_weights(path)
    assert isinstance(info.value, DarknetError)
    assert str(info.value).startswith(f"{path}: ")          # names the file
    for k, v in m.state_dict().items():                       # and the model is untouched
        assert torch.equal(v, before[k]), k


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match=r"nope\.weights: cannot read: No such file or directory"):
        _tiny().load_weights(tmp_path / "nope.weights")


def test_partial_file_refused_when_not_allowed(tmp_path):
    path = _write(tmp_path / "p.weights", H020, np.zeros(18))
    m = _tiny()
    with pytest.raises(WeightsError, match=r"partial file: it holds only layers 0\.\.1 of 3 \(18 of 70 floats\)"):
        m.load_weights(path, allow_partial=False)
    with pytest.warns(PartialWeightsWarning):
        rep = m.load_weights(path)
    assert (rep.layers_loaded, rep.partial) == (2, True)


def test_trailing_allowed_when_asked(tmp_path):
    path = _write(tmp_path / "t.weights", H020, np.arange(75))
    rep = _tiny().load_weights(path, allow_trailing=True)
    assert (rep.floats_read, rep.floats_in_file, rep.trailing_floats) == (70, 75, 5)


# ------------------------------------------------------------------ darknet's per-layer flags

def _cfg_with(extra: str, dialect: str = "pjreddie") -> Darknet:
    return Darknet(TINY.replace("activation=leaky", "activation=leaky\n" + extra, 1), dialect=dialect)


def test_dontload_skips_the_layer_in_the_file(tmp_path):
    m = _cfg_with("dontload=1")
    before = m.module_list[0].weights.detach().clone()
    path = _write(tmp_path / "d.weights", H020, np.arange(52))      # only the connected layer
    m.load_weights(path)
    assert m.module_list[2].biases.tolist() == [0, 1, 2, 3]
    assert torch.equal(m.module_list[0].weights, before)


def test_dontloadscales_reads_no_bn_but_saves_it(tmp_path):
    m = _cfg_with("dontloadscales=1")
    conv = m.module_list[0]
    scales = conv.scales.detach().clone()
    path = _write(tmp_path / "d.weights", H020, np.arange(61))      # 3 biases + 6 weights + 52
    m.load_weights(path)
    assert conv.biases.tolist() == [0, 1, 2] and conv.weights.flatten().tolist() == [3, 4, 5, 6, 7, 8]
    assert torch.equal(conv.scales, scales)
    m.save_weights(tmp_path / "s.weights")
    assert (tmp_path / "s.weights").stat().st_size == 20 + 4 * 70


def test_numload_pjreddie_reads_first_filters(tmp_path):
    m = _cfg_with("numload=1")
    conv = m.module_list[0]
    init = {k: v.detach().clone() for k, v in conv.named_parameters()}
    init.update({k: v.clone() for k, v in conv.named_buffers()})
    # biases[0], scales[0], mean[0], var[0], weights of filter 0 (2 floats), then the connected layer
    path = _write(tmp_path / "n.weights", H020, np.arange(6 + 52) + 1)
    m.load_weights(path)
    for name, first in [("biases", 1), ("scales", 2), ("rolling_mean", 3), ("rolling_variance", 4)]:
        t = getattr(conv, name)
        assert t[0].item() == first and torch.equal(t[1:], init[name][1:]), name
    w = conv.weights.flatten()
    assert w[:2].tolist() == [5, 6] and torch.equal(w[2:], init["weights"].flatten()[2:])
    assert m.module_list[2].biases.tolist() == [7, 8, 9, 10]


def test_flipped_convolution_weights_are_transposed_on_load(tmp_path):
    m = _cfg_with("flipped=1")
    vals = np.arange(70, dtype=np.float32)
    m.load_weights(_write(tmp_path / "f.weights", H020, vals))
    # file rows are the 2 inputs (c*size*size), columns the 3 filters
    assert m.module_list[0].weights[:, :, 0, 0].tolist() == [[12, 15], [13, 16], [14, 17]]


def test_dontsave_is_pjreddie_only(tmp_path):
    pj = _cfg_with("dontsave=1", "pjreddie")
    assert [r.floats for r in W.layout(pj, 20, for_load=False)] == [0, 0, 52]
    ab = _cfg_with("dontsave=1", "alexeyab")
    assert [r.floats for r in W.layout(ab, 20, for_load=False)] == TINY_FLOATS


BN_CFG = """
[net]
width=2
height=2
channels=3

[batchnorm]
"""


def test_batchnorm_layer_per_dialect(tmp_path):
    """pjreddie stores scales, mean, variance; AlexeyAB biases first, then the same three."""
    pj = Darknet(BN_CFG, dialect="pjreddie")
    pj.load_weights(_write(tmp_path / "pj.weights", H020, np.arange(9)))
    assert pj.module_list[0].scales.tolist() == [0, 1, 2]
    assert pj.module_list[0].rolling_variance.tolist() == [6, 7, 8]
    ab = Darknet(BN_CFG, dialect="alexeyab")
    ab.load_weights(_write(tmp_path / "ab.weights", H020, np.arange(12)))
    assert ab.module_list[0].biases.tolist() == [0, 1, 2]
    assert ab.module_list[0].scales.tolist() == [3, 4, 5]
    assert ab.module_list[0].rolling_variance.tolist() == [9, 10, 11]


SHORTCUT_CFG = """
[net]
width=2
height=2
channels=2

[convolutional]
filters=2
size=1
activation=linear

[convolutional]
filters=2
size=1
activation=linear

[shortcut]
from=0
weights_type=per_channel
activation=linear
"""


def test_alexeyab_shortcut_weights(tmp_path):
    m = Darknet(SHORTCUT_CFG, dialect="alexeyab")
    # each conv: 2 biases + 2x2 weights; shortcut per_channel: (previous + 1 from) x 2 channels
    assert [r.floats for r in W.layout(m, 20)] == [6, 6, 4]
    m.load_weights(_write(tmp_path / "s.weights", H020, np.arange(16)))
    assert m.module_list[2].weights.tolist() == [[12, 13], [14, 15]]


# ------------------------------------------------------------------ other devices / dtypes, atomicity

def test_float64_model_loads_and_saves_the_same_bytes(conformance, manifest, tmp_path):
    case = manifest["cases"]["pj_alexnet_narrow16"]
    m = Darknet(conformance / case["cfg"]).double()
    m.load_weights(conformance / case["weights"])
    m.save_weights(tmp_path / "d.weights")
    assert (tmp_path / "d.weights").read_bytes() == (conformance / case["weights"]).read_bytes()


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    m = _tiny()
    target = tmp_path / "out.weights"
    real_writev = os.writev

    def failing(fd, buffers):   # half the data reaches the temp file, then the process is interrupted
        real_writev(fd, buffers[: len(buffers) // 2])
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(os, "writev", failing)
    with pytest.raises(KeyboardInterrupt):
        m.save_weights(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []             # no temporary left behind either
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        m.save_weights(target)
    assert target.read_bytes() == b"old"               # an existing file is never half-replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.weights"]


def test_short_writes_are_resumed(tmp_path, monkeypatch):
    """The kernel may write less than asked: every byte still lands, in order."""
    m = _tiny()
    whole = tmp_path / "whole.weights"
    m.save_weights(whole)
    real_writev = os.writev
    calls = []

    def stingy(fd, buffers):
        calls.append(len(buffers))
        first = bytes(buffers[0])[:7]          # at most 7 bytes of the first buffer per call
        return real_writev(fd, [first])

    monkeypatch.setattr(os, "writev", stingy)
    m.save_weights(tmp_path / "short.weights")
    assert (tmp_path / "short.weights").read_bytes() == whole.read_bytes()
    assert len(calls) >= whole.stat().st_size // 7


def test_full_disk_is_one_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    import darknet_py.files as dio
    target = tmp_path / "out.weights"
    target.write_bytes(b"old")

    def no_space(fd, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dio, "preallocate", no_space)
    with pytest.raises(WeightsError, match=r"out\.weights: cannot write: No space left on device"):
        _tiny().save_weights(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.weights"]


def test_overwrite_replaces_the_file_and_keeps_its_mode(tmp_path):
    m = _tiny()
    fresh = tmp_path / "fresh.weights"
    m.save_weights(fresh)
    target = tmp_path / "out.weights"
    target.write_bytes(b"x" * 100_000)               # longer than the new file
    os.chmod(target, 0o640)
    m.save_weights(target)
    assert target.read_bytes() == fresh.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o640     # like darknet's fopen("wb") over a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.weights", "out.weights"]
