"""Hierarchical softmax (``tree=``, yolo9000 / darknet9000) against values worked
out by hand and literal transcriptions of darknet's C loops (``read_tree``,
``softmax_tree``, ``hierarchy_predictions``, ``hierarchy_top_prediction``,
``get_region_detections`` / ``get_region_boxes``, ``forward_region_layer``'s
tree loss), in float32 like the C code.

The hand-made tree (line index, name, parent)::

    0 animal -1     group 0 (offset 0, size 2)
    1 plant  -1
    2 dog     0     group 1 (offset 2, size 3)
    3 cat     0
    4 bird    0
    5 tree    1     group 2 (offset 5, size 2)
    6 flower  1
    7 terrier 2     group 3 (offset 7, size 2)
    8 poodle  2
    9 rose    6     group 4 (offset 9, size 1)
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from darknet_py.cfg import parse_cfg
from darknet_py.detect import Detector
from darknet_py.errors import CfgError, DataError
from darknet_py.postprocess import DecodeContext, Postprocessor, get_network_boxes
from darknet_py.loss import region_loss
from darknet_py.tree import (hierarchy_predictions, hierarchy_top_prediction, last_above, parse_tree)

from tests.conftest import CONFORMANCE

F32, F64 = np.float32, np.float64
FLT_MAX = F32(np.finfo(np.float32).max)

TREE = """animal -1
plant -1
dog 0
cat 0
bird 0
tree 1
flower 1
terrier 2
poodle 2
rose 6
"""
NAMES = ["animal", "plant", "dog", "cat", "bird", "tree", "flower", "terrier", "poodle", "rose"]
C = 10

#: per-group probabilities (each group sums to 1) of two predictions
ROW_A = [.7, .3, .6, .3, .1, .5, .5, .9, .1, 1.0]   # animal > dog > terrier
ROW_B = [.2, .8, .5, .3, .2, .1, .9, .5, .5, 1.0]   # plant > flower > rose


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def build(text: str, dialect: str, name: str = "<string>") -> Darknet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Darknet(parse_cfg(text, dialect=dialect, name=name)).eval()


# ------------------------------------------------------------------ transcriptions (C loops)
def read_tree_loop(text: str) -> dict:
    """``read_tree`` (pjreddie, with ``child``), line by line."""
    last_parent, group_size, groups, n = -1, 0, 0, 0
    t = {"parent": [], "child": [], "group": [], "group_offset": [], "group_size": []}
    for line in text.split("\n")[:-1]:
        name, parent = line.split()
        parent = int(parent)
        t["parent"].append(parent)
        t["child"].append(-1)
        if parent != last_parent:
            groups += 1
            t["group_offset"].append(n - group_size)
            t["group_size"].append(group_size)
            group_size = 0
            last_parent = parent
        t["group"].append(groups)
        if parent >= 0:
            t["child"][parent] = groups
        n += 1
        group_size += 1
    groups += 1
    t["group_offset"].append(n - group_size)
    t["group_size"].append(group_size)
    t["leaf"] = [1] * n
    for i in range(n):
        if t["parent"][i] >= 0:
            t["leaf"][t["parent"][i]] = 0
    t["groups"], t["n"] = groups, n
    return t


def softmax_loop(x, temp=1.0):
    """darknet's ``softmax``: float sums, ``exp`` in double of the float difference."""
    temp = F32(temp)
    largest = -FLT_MAX
    for v in x:
        if v > largest:
            largest = F32(v)
    out, total = [], F32(0)
    for v in x:
        e = F32(math.exp(F64(F32(F32(v) / temp) - F32(largest / temp))))
        total = F32(total + e)
        out.append(e)
    return [F32(e / total) for e in out]


def softmax_tree_loop(x, sizes, temp=1.0):
    """``softmax_tree`` over one vector: each group's softmax, groups in order."""
    out, count = [], 0
    for size in sizes:
        out.extend(softmax_loop(x[count:count + size], temp))
        count += size
    return np.array(out, F32)


def hierarchy_predictions_loop(p, parent):
    p = [F32(v) for v in p]
    for j in range(len(p)):
        if parent[j] >= 0:
            p[j] = F32(p[j] * p[parent[j]])
    return p


def top_prediction_loop(pred, t, thresh):
    """pjreddie's ``hierarchy_top_prediction`` (stride 1)."""
    p, group, thresh = F32(1), 0, F32(thresh)
    while True:
        mx, max_i = F32(0), 0
        for i in range(t["group_size"][group]):
            index = i + t["group_offset"][group]
            val = pred[index]
            if val > mx:
                max_i, mx = index, val
        if F32(p * mx) > thresh:
            p = F32(p * mx)
            group = t["child"][max_i]
            if t["child"][max_i] < 0:
                return max_i
        elif group == 0:
            return max_i
        else:
            return t["parent"][t["group_offset"][group]]


def logistic(x):
    return F32(1.0 / (1.0 + math.exp(-F64(x))))


def logits(probs):
    return np.log(np.asarray(probs, F64)).astype(F32)


# ------------------------------------------------------------------ (a) read_tree
def test_read_tree_by_hand_and_against_the_c_loop():
    t = parse_tree(TREE)
    assert t.n == 10 and t.groups == 5
    assert t.names == tuple(NAMES)
    assert t.parent.tolist() == [-1, -1, 0, 0, 0, 1, 1, 2, 2, 6]
    assert t.group.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 4]
    assert t.group_offset.tolist() == [0, 2, 5, 7, 9]
    assert t.group_size.tolist() == [2, 3, 2, 2, 1]
    assert t.child.tolist() == [1, 2, 3, -1, -1, -1, 4, -1, -1, -1]
    assert t.leaf.tolist() == [False, False, False, True, True, True, False, True, True, True]
    assert t.depth.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    assert t.path[7].tolist() == [7, 2, 0] and t.path[9].tolist() == [9, 6, 1]
    assert t.members[1].tolist() == [2, 3, 4] and t.members[4].tolist() == [9, -1, -1]
    ref = read_tree_loop(TREE)
    assert (t.n, t.groups) == (ref["n"], ref["groups"])
    for key in ("parent", "child", "group", "group_offset", "group_size", "leaf"):
        assert [int(v) for v in getattr(t, key)] == ref[key], key


def test_read_tree_siblings_split_in_two_runs_and_no_trailing_newline():
    # dog's children in two runs: two groups, child[] names the later one (darknet's overwrite)
    text = "a -1\nb 0\nc 0\nd 1\ne 0\r\nf   3"
    t = parse_tree(text)
    ref = read_tree_loop(text.replace("\r", "") + "\n")
    assert t.group.tolist() == ref["group"] == [0, 1, 1, 2, 3, 4]
    assert t.group_offset.tolist() == ref["group_offset"] and t.group_size.tolist() == ref["group_size"]
    assert t.child.tolist() == ref["child"] == [3, 2, -1, 4, -1, -1]


# ------------------------------------------------------------------ (b) forward
@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_softmax_layer_tree_against_loop(tmp_path, dialect):
    tree = write(tmp_path, "t.tree", TREE)
    # 5 channels x 1 x 2: the tree covers the flat (channel-major) input of each image
    m = build(f"[net]\nwidth=2\nheight=1\nchannels=5\n\n[softmax]\ntemperature=2\ntree={tree}\n", dialect)
    x = (np.random.default_rng(0).standard_normal((3, 5, 1, 2)) * 3).astype(F32)
    with torch.no_grad():
        y = m.run_layer(0, torch.from_numpy(x)).numpy()
    sizes = [2, 3, 2, 2, 1]
    for b in range(3):
        ref = softmax_tree_loop(x[b].reshape(-1), sizes, temp=2.0)
        np.testing.assert_allclose(y[b].reshape(-1), ref, rtol=0, atol=2e-7)


def test_softmax_tree_groups_must_still_divide_and_tree_must_fit(tmp_path):
    tree = write(tmp_path, "t.tree", TREE)
    with pytest.raises(CfgError, match=r"groups=3 does not divide the 10 inputs"):
        build(f"[net]\nwidth=1\nheight=1\nchannels=10\n\n[softmax]\ngroups=3\ntree={tree}\n", "pjreddie")
    with pytest.raises(CfgError, match=r"the tree has 10 entries but the layer has 12 inputs"):
        build(f"[net]\nwidth=1\nheight=1\nchannels=12\n\n[softmax]\ntree={tree}\n", "pjreddie")


def region_cfg(tree: Path, dialect_extra: str = "", w: int = 2, h: int = 2, num: int = 2) -> str:
    return (f"[net]\nwidth={w}\nheight={h}\nchannels={num * (5 + C)}\n\n[region]\nclasses={C}\n"
            f"num={num}\ncoords=4\nsoftmax=1\nanchors=1,1.5,2,1\ntree={tree}\n{dialect_extra}")


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
def test_region_tree_forward_against_loop(tmp_path, dialect):
    """AlexeyAB's CPU forward: per prediction, logistic objectness and ``softmax_tree``
    (temperature 1) on its class entries.  pjreddie (GPU build; its CPU call is broken):
    the same group softmax at every location of every anchor plane, plus the logistic
    on x, y."""
    tree = write(tmp_path, "t.tree", TREE)
    m = build(region_cfg(tree), dialect)
    x = (np.random.default_rng(1).standard_normal((2, 2 * 15, 2, 2)) * 4).astype(F32)
    with torch.no_grad():
        y = m.run_layer(0, torch.from_numpy(x)).numpy().reshape(2, 2, 15, 4)
    v = x.reshape(2, 2, 15, 4)
    for b in range(2):
        for a in range(2):
            for loc in range(4):
                ref = softmax_tree_loop(v[b, a, 5:, loc], [2, 3, 2, 2, 1])
                np.testing.assert_allclose(y[b, a, 5:, loc], ref, rtol=0, atol=2e-7)
                assert abs(y[b, a, 4, loc] - logistic(v[b, a, 4, loc])) < 1e-7
                xy = [logistic(t) for t in v[b, a, :2, loc]] if dialect == "pjreddie" else v[b, a, :2, loc]
                np.testing.assert_allclose(y[b, a, :2, loc], xy, rtol=0, atol=1e-7)
                np.testing.assert_array_equal(y[b, a, 2:4, loc], v[b, a, 2:4, loc])


# ------------------------------------------------------------------ (c) hierarchy
def test_hierarchy_predictions_against_loop():
    t = parse_tree(TREE)
    rows = np.random.default_rng(2).random((6, C)).astype(F32)
    cum = hierarchy_predictions(rows, t)
    for r in range(6):
        assert cum[r].tolist() == [float(v) for v in hierarchy_predictions_loop(rows[r], t.parent.tolist())]
    np.testing.assert_allclose(hierarchy_predictions(np.array([ROW_A], F32), t)[0],
                               [.7, .3, .42, .21, .07, .15, .15, .378, .042, .15], rtol=1e-6)


@pytest.mark.parametrize("thresh, a, b", [
    (0.95, 0, 1),   # group 0's best: p*max > thresh fails in group 0 -> the best of group 0
    (0.6, 0, 1),    # A: .7 -> dog: .7*.42 = .294 fails -> parent of group 1 = animal; B: .8*.72 = .576 fails -> plant
    (0.5, 0, 6),    # B: .576 ok -> rose: .576*.72 = .415 fails -> parent of group 4 = flower
    (0.25, 2, 9),   # A: .294 ok -> terrier: .294*.378 = .111 fails -> dog; B: .415 ok, rose is a leaf
    (0.1, 7, 9),    # A: .111 ok and terrier is a leaf
    (0.0, 7, 9),
])
def test_hierarchy_top_prediction_by_hand(thresh, a, b):
    t = parse_tree(TREE)
    cum = hierarchy_predictions(np.array([ROW_A, ROW_B], F32), t)
    assert hierarchy_top_prediction(cum, t, thresh).tolist() == [a, b]


def test_hierarchy_top_prediction_against_loop_and_alexeyab_rule():
    t = parse_tree(TREE)
    ref = read_tree_loop(TREE)
    rng = np.random.default_rng(3)
    rows = rng.random((200, C)).astype(F32)
    rows[:5] = 0                      # nothing > 0: max_i stays 0
    rows[5:10, 2:5] = 0               # a group of zeros below a chosen node
    rows[10, 0] = np.nan              # NaN never wins ("val > max" is false)
    cum = hierarchy_predictions(rows, t)
    for thresh in (0.0, 0.05, 0.2, 0.5, 0.9):
        ours = hierarchy_top_prediction(cum, t, thresh)
        assert ours.tolist() == [top_prediction_loop(cum[r], ref, thresh) for r in range(200)], thresh
    # AlexeyAB: from the last class down, the first path probability > .5 is kept
    found = last_above(cum, 0.5)
    for r in range(200):
        hits = [j for j in range(C - 1, -1, -1) if cum[r, j] > .5]
        assert found[r] == (hits[0] if hits else -1)
    assert last_above(hierarchy_predictions(np.array([ROW_A, ROW_B], F32), t), .5).tolist() == [0, 9]


# ------------------------------------------------------------------ (d) decode
def two_slot_model(tmp_path, dialect, obj=(0.8, 0.3)):
    """One anchor on a 1x2 grid: location 0 predicts ROW_A, location 1 ROW_B."""
    tree = write(tmp_path, "t.tree", TREE)
    m = build(region_cfg(tree, w=2, h=1, num=1), dialect)
    x = np.zeros((1, 15, 1, 2), F32)
    x[0, 4, 0] = [math.log(o / (1 - o)) for o in obj]
    x[0, 5:, 0, 0], x[0, 5:, 0, 1] = logits(ROW_A), logits(ROW_B)
    with torch.no_grad():
        out = m(torch.from_numpy(x))
    return m, out


def decode(m, out, hier, thresh=0.25):
    ctx = DecodeContext(2, 1, 2, 1, thresh=thresh, hier_thresh=hier, dialect=m.dialect)
    return get_network_boxes([m.module_list[0]], out, ctx)


def region_probs_loop(out: np.ndarray, t: dict, dialect: str, thresh: float, hier: float) -> np.ndarray:
    """The class probabilities of pjreddie's ``get_region_detections`` / AlexeyAB's
    ``get_region_boxes`` (tree, no map) for one anchor: ``out`` [15, locations]."""
    probs = np.zeros((out.shape[1], C), F32)
    for i in range(out.shape[1]):
        scale = out[4, i]
        pred = hierarchy_predictions_loop(out[5:, i], t["parent"])
        if dialect == "pjreddie":
            j = top_prediction_loop(pred, t, hier)
            probs[i, j] = scale if scale > F32(thresh) else 0
        else:
            found = False
            for j in range(C - 1, -1, -1):
                if not found and pred[j] > .5:
                    found = True
                else:
                    pred[j] = F32(0)
                probs[i, j] = pred[j] if scale > F32(thresh) else 0
    return probs


@pytest.mark.parametrize("hier, a, b", [(0.5, 0, 6), (0.25, 2, 9), (0.1, 7, 9)])
def test_pjreddie_decode_by_hand(tmp_path, hier, a, b):
    m, out = two_slot_model(tmp_path, "pjreddie")
    d = decode(m, out, hier)
    expected = np.zeros((2, C), F32)
    expected[0, a], expected[1, b] = 0.8, 0.3
    np.testing.assert_allclose(d.prob, expected, rtol=1e-6)
    np.testing.assert_allclose(d.objectness, [0.8, 0.3], rtol=1e-6)
    ref = region_probs_loop(out[0][0].numpy().reshape(15, 2), read_tree_loop(TREE), "pjreddie", .25, hier)
    np.testing.assert_array_equal(d.prob, ref)
    # the objectness of location 1 is not above thresh=0.35: no class, objectness 0
    d = decode(m, out, hier, thresh=0.35)
    assert d.prob[1].max() == 0 and d.objectness[1] == 0 and d.prob[0, a] == F32(0.8)


def test_alexeyab_decode_by_hand_ignores_hier_thresh(tmp_path):
    m, out = two_slot_model(tmp_path, "alexeyab")
    expected = np.zeros((2, C), F32)
    expected[0, 0], expected[1, 9] = 0.7, 0.72   # the path probability, not times objectness
    for hier in (0.5, 0.1):
        d = decode(m, out, hier)
        np.testing.assert_allclose(d.prob, expected, rtol=1e-6)
        np.testing.assert_array_equal(d.objectness, [1, 1])
        ref = region_probs_loop(out[0][0].numpy().reshape(15, 2), read_tree_loop(TREE), "alexeyab", .25, hier)
        np.testing.assert_array_equal(d.prob, ref)
    assert decode(m, out, 0.5, thresh=0.35).prob[1].max() == 0


def test_detector_hier_thresh_changes_the_class(tmp_path):
    """End to end: a 1x1 convolution whose biases are the head input, on a 32x32 image."""
    tree = write(tmp_path, "t.tree", TREE)
    cfg = (f"[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=15\nsize=1\nstride=32\n"
           f"activation=linear\n\n[region]\nclasses={C}\nnum=1\nsoftmax=1\nanchors=1,1\ntree={tree}\n")
    m = build(cfg, "pjreddie")
    with torch.no_grad():
        m.module_list[0].weights.zero_()
        bias = np.zeros(15, F32)
        bias[4], bias[5:] = math.log(.8 / .2), logits(ROW_A)
        m.module_list[0].biases.copy_(torch.from_numpy(bias))
    image = np.zeros((32, 32, 3), np.uint8)
    found = {}
    for hier in (0.5, 0.25, 0.1):
        (dets,) = Detector(m, names=NAMES, hier_thresh=hier, nms=0).run([image])
        found[hier] = [NAMES[c] for c in np.nonzero(dets.prob[0])[0]]
    assert found == {0.5: ["animal"], 0.25: ["dog"], 0.1: ["terrier"]}


# ------------------------------------------------------------------ (e) errors
def test_missing_tree_file_is_one_cfg_error_with_file_line_and_paths(tmp_path, monkeypatch):
    cfg = write(tmp_path, "cfgs/net.cfg", "[net]\nwidth=1\nheight=1\nchannels=10\n\n[softmax]\n"
                                         "tree=data/none.tree\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    with pytest.raises(CfgError) as info:
        Darknet(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{cfg}:7: [softmax]: tree=data/none.tree: file not found")
    assert str(run_dir / "data" / "none.tree") in msg and str(tmp_path / "cfgs" / "data" / "none.tree") in msg
    assert info.value.file == str(cfg) and info.value.line == 7


def test_tree_found_in_cwd_first_then_beside_the_cfg(tmp_path, monkeypatch):
    cfg = write(tmp_path, "cfgs/net.cfg", "[net]\nwidth=1\nheight=1\nchannels=10\n\n[softmax]\ntree=t.tree\n")
    write(tmp_path, "cfgs/t.tree", TREE)
    write(tmp_path, "run/t.tree", "a -1\nb -1\nc -1\nd -1\ne -1\nf -1\ng -1\nh -1\ni -1\nj 0\n")
    monkeypatch.chdir(tmp_path / "run")
    assert Darknet(cfg).module_list[0].tree.groups == 2              # the current directory's
    monkeypatch.chdir(tmp_path)
    assert Darknet(cfg).module_list[0].tree.groups == 5              # beside the cfg


@pytest.mark.parametrize("text, line, what", [
    ("a -1\nb 2\nc 0\n", 2, r"parent 2 of 'b' must be an earlier line \(0\.\.0 or -1\)"),
    ("a 0\n", 1, r"parent 0 of 'a' must be an earlier line \(-1 \(the first line is a root\)\)"),
    ("a -1\n\nb 0\n", 2, r"expected 'name parent_index', got ''"),
    ("a -1\nb x\n", 2, r"expected 'name parent_index', got 'b x'"),
    ("a -1\nb -2\n", 2, r"parent -2"),
    ("", 1, r"the tree has no entries"),
])
def test_malformed_tree_names_the_tree_line(tmp_path, text, line, what):
    tree = write(tmp_path, "bad.tree", text)
    with pytest.raises(CfgError, match=rf"^net\.cfg:7: \[softmax\]: tree={tree}: {tree}:line {line}: {what}"):
        build(f"[net]\nwidth=1\nheight=1\nchannels=3\n\n[softmax]\ntree={tree}\n", "pjreddie", "net.cfg")


def test_region_tree_size_map_and_background_errors(tmp_path):
    tree = write(tmp_path, "t.tree", TREE)
    with pytest.raises(CfgError, match=r"the tree has 10 entries but the layer has 12 classes"):
        build(region_cfg(tree).replace(f"classes={C}", "classes=12").replace("channels=30", "channels=34"),
              "pjreddie")
    with pytest.raises(CfgError, match=r"map=.*: file not found"):
        build(region_cfg(tree, "map=nothere.map\n"), "alexeyab")
    bad_map = write(tmp_path, "bad.map", "3\n10\n")
    with pytest.raises(CfgError, match=r"bad\.map:line 2: class 10 is outside 0\.\.9"):
        build(region_cfg(tree, f"map={bad_map}\n"), "pjreddie")
    with pytest.raises(CfgError, match=r"tree= with background=1 is not supported"):
        build(region_cfg(tree, "background=1\n"), "pjreddie")


# ------------------------------------------------------------------ (f) zoo cfgs
def synthetic_9k(tmp_path: Path) -> None:
    """data/9k.tree with 9418 entries (10 roots, then runs of 5 siblings) and data/coco9k.map."""
    lines = [f"n{i:08d} -1" for i in range(10)]
    lines += [f"n{i:08d} {(i - 10) // 5}" for i in range(10, 9418)]
    write(tmp_path, "data/9k.tree", "\n".join(lines) + "\n")
    write(tmp_path, "data/coco9k.map", "".join(f"{(i * 97) % 9418}\n" for i in range(80)))


@pytest.mark.parametrize("key, dialect", [("pjreddie/yolo9000.cfg", "pjreddie"),
                                          ("alexeyab/yolo9000.cfg", "alexeyab"),
                                          ("pjreddie/darknet9000.cfg", "pjreddie")])
def test_zoo_tree_cfgs_build_and_run(tmp_path, monkeypatch, conformance, key, dialect):
    synthetic_9k(tmp_path)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = Darknet(CONFORMANCE / "zoo" / key, 64, 64, dialect).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (out,) = m(x)
    assert torch.isfinite(out).all()
    head = next(layer for layer in m.module_list if layer.type in ("softmax", "region"))
    tree = head.tree
    assert tree.n == 9418
    group = torch.from_numpy(tree.group)
    if "darknet" in key:
        probs = out.reshape(9418)
    else:
        assert head.class_map.shape == (80,)
        probs = out.reshape(3, 5 + 9418, 2, 2)[1, 5:, 1, 0]
        dets = Postprocessor.for_model(m, thresh=0.0, nms=0).__call__([out], [(64, 64)])[0]
        assert len(dets) == 3 * 2 * 2 and ((dets.prob > 0).sum(1) <= 1).all()
    sums = torch.zeros(tree.groups, dtype=torch.float64).index_add_(0, group, probs.double())
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ (g) loss
def box_iou_loop(a, b):
    def overlap(x1, w1, x2, w2):
        l1, l2 = F32(x1 - F32(w1 / F32(2))), F32(x2 - F32(w2 / F32(2)))
        r1, r2 = F32(x1 + F32(w1 / F32(2))), F32(x2 + F32(w2 / F32(2)))
        return F32(min(r1, r2) - max(l1, l2))
    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = F32(0) if w < 0 or h < 0 else F32(w * h)
    union = F32(F32(F32(a[2] * a[3]) + F32(b[2] * b[3])) - inter)
    return F32(inter / union)


def region_tree_delta_loop(x, truths, t, dialect, anchors, cmap, scales, seen):
    """``forward_region_layer``'s delta with a tree, both forks (coords=4, no rescore,
    bias_match=1, classfix=0).  ``x``: raw input [N, A, 15, H, W]; ``truths``: per image
    a list of (x, y, w, h, class) in buffer order.  Returns delta [N, A, 15, H, W]."""
    N, A, _, H, W = x.shape
    ab = dialect == "alexeyab"
    coord_s, obj_s, noobj_s, cls_s, thresh = (F32(v) for v in scales)
    o = x.copy()
    for b, a, hh, ww in np.ndindex(N, A, H, W):
        o[b, a, 4, hh, ww] = logistic(x[b, a, 4, hh, ww])
        o[b, a, 5:, hh, ww] = softmax_tree_loop(x[b, a, 5:, hh, ww], t["group_size"])
        if not ab:
            o[b, a, 0, hh, ww], o[b, a, 1, hh, ww] = logistic(x[b, a, 0, hh, ww]), logistic(x[b, a, 1, hh, ww])
    d = np.zeros_like(o)
    sig = (lambda v: logistic(v)) if ab else (lambda v: v)

    def grad(y):
        return F32(F32(1 - y) * y)

    def get_box(b, a, j, i):
        return [F32(F32(i + sig(o[b, a, 0, j, i])) / W), F32(F32(j + sig(o[b, a, 1, j, i])) / H),
                F32(math.exp(F64(o[b, a, 2, j, i])) * F64(anchors[a][0]) / W),
                F32(math.exp(F64(o[b, a, 3, j, i])) * F64(anchors[a][1]) / H)]

    def delta_box(truth, b, a, j, i, scale):
        pred = get_box(b, a, j, i)
        iou = box_iou_loop(pred, truth)
        tx, ty = F32(F32(truth[0] * W) - i), F32(F32(truth[1] * H) - j)
        tw = F32(math.log(F64(F32(F32(truth[2] * W) / anchors[a][0]))))
        th = F32(math.log(F64(F32(F32(truth[3] * H) / anchors[a][1]))))
        for e, tv in enumerate((tx, ty)):
            s = sig(o[b, a, e, j, i])
            d[b, a, e, j, i] = F32(F32(scale * F32(tv - s)) * grad(s)) if ab else F32(scale * F32(tv - s))
        d[b, a, 2, j, i] = F32(scale * F32(tw - o[b, a, 2, j, i]))
        d[b, a, 3, j, i] = F32(scale * F32(th - o[b, a, 3, j, i]))
        return iou

    def delta_class(b, a, j, i, c, scale):
        while c >= 0:
            g = t["group"][c]
            for k in range(t["group_offset"][g], t["group_offset"][g] + t["group_size"][g]):
                d[b, a, 5 + k, j, i] = F32(scale * F32(0 - o[b, a, 5 + k, j, i]))
            d[b, a, 5 + c, j, i] = F32(scale * F32(1 - o[b, a, 5 + c, j, i]))
            c = t["parent"][c]

    def path_prob(b, a, j, i, c):
        p = F32(1)
        while c >= 0:
            p = F32(p * o[b, a, 5 + c, j, i])
            c = t["parent"][c]
        return p

    for b in range(N):
        only = None
        for tr in truths[b]:
            if tr[0] == 0:
                break
            if tr[0] > 100000 and tr[1] > 100000:
                only = tr[4]
                break
        if only is not None:
            scan = ([(a, loc) for loc in range(H * W) for a in range(A)] if ab
                    else [(a, loc) for a in range(A) for loc in range(H * W)])
            maxp, maxi = F32(0), scan[0]
            for a, loc in scan:
                j, i = divmod(loc, W)
                if not ab:
                    d[b, a, 4, j, i] = F32(noobj_s * F32(0 - o[b, a, 4, j, i]))
                p = F32(o[b, a, 4, j, i] * path_prob(b, a, j, i, only))
                if p > maxp:
                    maxp, maxi = p, (a, loc)
            a, (j, i) = maxi[0], divmod(maxi[1], W)
            delta_class(b, a, j, i, only, cls_s)
            if not ab:
                d[b, a, 4, j, i] = 0
            continue
        for j, i, a in np.ndindex(H, W, A):
            pred = get_box(b, a, j, i)
            best = F32(0)
            for tr in truths[b]:
                if ab and tr[4] >= C:
                    continue
                if tr[0] == 0:
                    break
                best = max(best, box_iou_loop(pred, tr[:4]))
            y = o[b, a, 4, j, i]
            d[b, a, 4, j, i] = F32(noobj_s * F32(F32(0 - y) * grad(y))) if ab else F32(noobj_s * F32(0 - y))
            if best > thresh:
                d[b, a, 4, j, i] = 0
            if seen < 12800:
                prior = [F32((i + .5) / W), F32((j + .5) / H), F32(anchors[a][0] / F32(W)), F32(anchors[a][1] / F32(H))]
                delta_box(prior, b, a, j, i, F32(.01))
        for tr in truths[b]:
            if ab and tr[4] >= C:
                continue
            if tr[0] == 0:
                break
            i, j = int(F32(tr[0] * W)), int(F32(tr[1] * H))
            best_iou, best_n = F32(0), 0
            for a in range(A):
                shape = [0, 0, F32(anchors[a][0] / F32(W)), F32(anchors[a][1] / F32(H))]
                iou = box_iou_loop(shape, [0, 0, tr[2], tr[3]])
                if iou > best_iou:
                    best_iou, best_n = iou, a
            scale = coord_s if ab else F32(coord_s * F32(2 - F32(tr[2] * tr[3])))
            delta_box(tr[:4], b, best_n, j, i, scale)
            y = o[b, best_n, 4, j, i]
            d[b, best_n, 4, j, i] = F32(F32(obj_s * F32(1 - y)) * grad(y)) if ab else F32(obj_s * F32(1 - y))
            delta_class(b, best_n, j, i, cmap[tr[4]], cls_s)
    return d


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab"])
@pytest.mark.parametrize("seen", [0, 12800])
def test_region_tree_loss_against_loop(tmp_path, dialect, seen):
    tree = write(tmp_path, "t.tree", TREE)
    cmap = [7, 3, 5, 9, 1, 6]                                  # label class -> tree class
    mp = write(tmp_path, "l.map", "".join(f"{c}\n" for c in cmap))
    extra = (f"map={mp}\nbias_match=1\ncoord_scale=1.5\nobject_scale=5\nnoobject_scale=0.5\n"
             f"class_scale=2\nthresh=0.3\n")
    m = build(region_cfg(tree, extra, w=3, h=2), dialect)
    head = m.module_list[0]
    head.seen = seen
    A, H, W = 2, 2, 3
    truths = [
        # truths 0 and 3 share a prediction: the later one rewrites only its own path's groups
        [(0.2, 0.3, 0.3, 0.4, 0), (0.7, 0.8, 0.2, 0.5, 3), (0.25, 0.35, 0.5, 0.2, 5),
         (0.1, 0.2, 0.3, 0.45, 1)],
        [(0.5, 0.5, 0.4, 0.4, 2), (200000.0, 200000.0, 0.1, 0.1, 8), (0.1, 0.1, 0.1, 0.1, 1)],
        [(200000.0, 200000.0, 0.0, 0.0, 4)],                   # class-only: tree class 4 (bird)
        [],
    ]
    rows = [(b, *tr[4:], *tr[:4]) for b, ts in enumerate(truths) for tr in ts]
    targets = torch.tensor(rows, dtype=torch.float32)
    x = (np.random.default_rng(5).standard_normal((4, A * 15, H, W)) * 1.5).astype(F32)
    xt = torch.from_numpy(x).requires_grad_(True)
    loss, stats = region_loss(head, xt, targets, (H, W))
    loss.backward()
    # class-only rows carry a tree class; mapped rows a label class: the loop maps only the latter
    ref = region_tree_delta_loop(x.reshape(4, A, 15, H, W), truths, read_tree_loop(TREE), dialect,
                                 [(F32(1), F32(1.5)), (F32(2), F32(1))], cmap,
                                 (1.5, 5, 0.5, 2, 0.3), seen)
    got = -xt.grad.numpy().reshape(4, A, 15, H, W)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert stats["count"] == 4   # images 1 and 2 only get their class-only delta
    np.testing.assert_allclose(float(loss.detach()), float((ref.astype(F64) ** 2).sum()), rtol=1e-5)


def test_region_tree_loss_label_outside_the_map(tmp_path):
    tree = write(tmp_path, "t.tree", TREE)
    mp = write(tmp_path, "l.map", "7\n3\n")
    m = build(region_cfg(tree, f"map={mp}\n"), "pjreddie")
    x = torch.zeros(1, 30, 2, 2, requires_grad=True)
    with pytest.raises(DataError, match=r"has class 2, outside 0\.\.1 \(map= has 2 entries\)"):
        region_loss(m.module_list[0], x, torch.tensor([[0, 2, .5, .5, .2, .2]]), (2, 2))
    with pytest.raises(DataError, match=r"class-only truth of image 0 has class 12"):
        region_loss(m.module_list[0], x, torch.tensor([[0, 12, 2e5, 2e5, .2, .2]]), (2, 2))


def test_decoded_box_export_refuses_tree_heads(tmp_path):
    from darknet_py.convert import BoxDecoder
    from darknet_py.errors import ConvertError
    m, _ = two_slot_model(tmp_path, "pjreddie")
    with pytest.raises(ConvertError, match=r"layer 0 \[region\]: decoded-box export does not do the "
                                           r"tree= \(hierarchical\) class decode"):
        BoxDecoder(m)
