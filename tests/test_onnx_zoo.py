"""Zoo cfgs exported to ONNX, and the graphs run by OpenCV 5 (``cv2.dnn.readNetFromONNX``).

OpenCV 5 has no darknet importer: its users need an ONNX graph computing what
darknet computes.  The suite runs a representative subset of the zoo (every
kind of layer the small zoo networks hold: recurrent cells at time_steps=4,
route groups, darknet's asymmetric maxpool padding, scale_channels, [region]
and [yolo] heads); ``benchmarks/onnx_zoo.py`` runs the whole zoo and prints the
counts (see its docstring).

OpenCV 5 runs in its own interpreter (the OpenCV 4 oracle tests keep
``opencv-python-headless<5`` in the main one): ``DARKNET_PY_OPENCV5_PYTHON`` names
a python with ``numpy`` and ``opencv-python-headless>=5`` (``.ci/run`` makes one);
unset, these tests skip, except under ``CI=true`` where they fail.
"""
from __future__ import annotations

import collections
import os
import subprocess

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from darknet_py import onnx_export as X

from tests.conftest import CONFORMANCE, needs_shared
from tests.onnx_zoo import END_TO_END, export_one, run_opencv

pytest.importorskip("onnxruntime")

#: small zoo networks covering the layer kinds (seconds each at 96x96)
SUBSET = ["alexeyab/tiny.cfg",               # avgpool, softmax, leaky/linear convs
          "alexeyab/crnn.train.cfg",         # [crnn] unrolled over time_steps
          "alexeyab/gru.cfg",                # [gru]
          "alexeyab/lstm.train.cfg",         # [lstm]
          "alexeyab/enet-coco.cfg",          # scale_channels, dropout, depthwise convs
          "alexeyab/yolov3-tiny-prn.cfg",    # shortcut of partial channels, maxpool 2/1 padding
          "alexeyab/yolov4-tiny.cfg",        # route groups=2 group_id=1, scale_x_y
          "pjreddie/yolov2-tiny.cfg"]        # [region]

_COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not _COUNTS or reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for what, counts in _COUNTS.items():
            reporter.write_line(f"onnx zoo subset ({what}): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                + f" of {len(SUBSET)} (the whole zoo: benchmarks/onnx_zoo.py)")


def opencv5_python() -> str:
    python = os.environ.get("DARKNET_PY_OPENCV5_PYTHON")
    if not python:
        msg = ("DARKNET_PY_OPENCV5_PYTHON is not set: it names a python with numpy and "
               "opencv-python-headless>=5 (python3 -m venv V && V/bin/pip install numpy "
               "'opencv-python-headless>=5')")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        out = subprocess.run([python, "-c", "import cv2; print(cv2.__version__)"], capture_output=True,
                             text=True, timeout=120)
    except OSError as exc:
        pytest.fail(f"DARKNET_PY_OPENCV5_PYTHON={python}: cannot run: {exc}")
    version = out.stdout.strip()
    assert out.returncode == 0 and version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 5, (
        f"DARKNET_PY_OPENCV5_PYTHON={python} has no OpenCV >= 5: {version or out.stderr.strip()[-200:]}")
    return python


def _zoo_cfg(key: str):
    """The zoo cfg ``key``; the shipped subset has no zoo (darknet's own cfg text)."""
    path = CONFORMANCE / "zoo" / key
    if not path.is_file():
        needs_shared(f"zoo/{key} (the shipped subset has no zoo)")
    return path


@pytest.mark.parametrize("key", SUBSET)
def test_zoo_cfg_exports_and_every_layer_equals_torch(conformance, tmp_path, key):
    """export_onnx's own check, then every layer teacher-forced within the manifest's
    per-layer rule (onnxruntime vs torch)."""
    res = export_one(_zoo_cfg(key), tmp_path / "m.onnx", size=96, steps=4)
    _COUNTS["onnxruntime"][res.outcome] += 1
    assert res.outcome == "exported", f"{key}: {res.outcome}: {res.detail}"


@pytest.mark.parametrize("key", SUBSET)
def test_opencv5_runs_zoo_cfg(conformance, tmp_path, key):
    python = opencv5_python()
    res = export_one(_zoo_cfg(key), tmp_path / "m.onnx", size=96, steps=4, layers=False,
                     opencv_python=python)
    _COUNTS["opencv 5"][res.opencv.split(" (")[0].split(":")[0] or res.outcome] += 1
    assert res.outcome == "exported", f"{key}: {res.outcome}: {res.detail}"
    assert res.opencv.startswith("ok"), f"{key}: OpenCV 5: {res.opencv}"


def test_opencv5_real_yolov3_tiny_equals_darknet(conformance, manifest, tmp_path):
    """The official yolov3-tiny on darknet's own letterboxed photos (a batch of 4: the
    batch axis is dynamic): OpenCV 5's head outputs equal darknet's stored ones within
    the manifest's end-to-end rule (1e-4 relative to the layer's max |value|)."""
    python = opencv5_python()
    real = manifest["real"]
    model = Darknet(conformance / real["cfg"], dialect="pjreddie")
    model.load_weights(conformance / real["weights"]["file"])
    report = X.export_onnx(model.eval(), tmp_path / "y.onnx")
    arrays = [np.load(conformance / im["arrays"]) for im in real["images"]]
    x = torch.from_numpy(np.stack([z["letterbox"] for z in arrays]))
    got = run_opencv(python, tmp_path / "y.onnx", x)
    assert isinstance(got, dict), f"OpenCV 5 cannot run the graph: {got}"
    for name, layer in zip(report.outputs, model.heads):
        ref = np.concatenate([z[f"out_{layer:03d}"] for z in arrays])
        out = got[name].reshape(ref.shape)
        diff = float(np.abs(out - ref).max()) / float(np.abs(ref).max())
        assert diff <= END_TO_END, f"{name}: {diff:.3g}"


def test_opencv5_runs_the_nms_graph(conformance, manifest, tmp_path):
    """--nms: ONNX NonMaxSuppression in OpenCV 5 keeps what onnxruntime keeps on darknet's
    letterboxed photos (test_onnx_deploy checks onnxruntime's rows against darknet's)."""
    import onnxruntime as ort

    python = opencv5_python()
    real = manifest["real"]
    model = Darknet(conformance / real["cfg"], dialect="pjreddie")
    model.load_weights(conformance / real["weights"]["file"])
    X.export_onnx(model.eval(), tmp_path / "n.onnx", nms=X.DEFAULT_NMS)
    sess = ort.InferenceSession(str(tmp_path / "n.onnx"), providers=["CPUExecutionProvider"])
    total = 0
    for im in real["images"]:
        x = torch.from_numpy(np.load(conformance / im["arrays"])["letterbox"][None])
        got = run_opencv(python, tmp_path / "n.onnx", x)
        assert isinstance(got, dict), f"OpenCV 5 cannot run the NMS graph: {got}"
        (want,) = sess.run(None, {"input": x.numpy()})
        rows = got["detections"].reshape(-1, 7)
        assert rows.shape == want.shape, im["key"]
        np.testing.assert_allclose(rows, want, rtol=1e-4, atol=1e-4 * 416)
        total += len(rows)
    assert total > 0
