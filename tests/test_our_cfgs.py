"""Our own cfg files (written by tools/make_cfgs.py from the architectures)
describe exactly darknet's networks: every section and every typed option
equals darknet's own cfg in conformance/zoo."""
from __future__ import annotations

import importlib.util

import pytest

from darknet_py import Darknet
from darknet_py.cfg import parse_cfg
from tests.conftest import REPO

ORIGINALS = {
    "yolov3.cfg": "pjreddie/yolov3.cfg",
    "yolov3-tiny.cfg": "pjreddie/yolov3-tiny.cfg",
    "yolov4-tiny.cfg": "alexeyab/yolov4-tiny.cfg",
    "yolov2-tiny.cfg": "pjreddie/yolov2-tiny.cfg",
}


def _generator():
    spec = importlib.util.spec_from_file_location("make_cfgs", REPO / "tools" / "make_cfgs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cfg_folder_is_what_the_generator_writes():
    gen = _generator()
    for name, fn in gen.CFGS.items():
        assert (REPO / "cfg" / name).read_text() == fn().text(), f"cfg/{name} is stale: run tools/make_cfgs.py"


@pytest.mark.parametrize("ours", sorted(ORIGINALS))
def test_equals_darknet_original(conformance, ours):
    a = parse_cfg(REPO / "cfg" / ours)
    b = parse_cfg(conformance / "zoo" / ORIGINALS[ours])
    assert a.dialect == b.dialect
    assert len(a.sections) == len(b.sections)
    for i, (x, y) in enumerate(zip(a.sections, b.sections)):
        assert x.type == y.type, f"section {i}"
        diff = {k for k in x.options.keys() | y.options.keys() if x.options.get(k) != y.options.get(k)}
        assert not diff, f"{ours} section {i} [{x.type}] differs in {sorted(diff)}"


def test_tiny_shapes_builds():
    model = Darknet(REPO / "cfg" / "tiny-shapes.cfg")
    assert model.input_shape == (3, 160, 160)
    assert [model.shapes[i] for i in model.heads] == [(27, 5, 5), (27, 10, 10)]
