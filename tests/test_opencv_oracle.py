"""OpenCV's darknet importer (``cv2.dnn.readNetFromDarknet``) as a second oracle.

OpenCV is an independent reading of the same cfg and weights.  Its importer
hard-codes one batch-norm convention, ``(x - mean) / sqrt(var + 1e-6)``, for
both dialects (pjreddie divides by ``sqrt(var) + 1e-6``, AlexeyAB by
``sqrt(var + 1e-5)``), so before comparing we give our model the rolling
variances that make its formula equal OpenCV's; everything else (cfg reading,
weights order, layers, head decoding) is compared as is:

* the input of every head (OpenCV's ``permute_<head>``) against our network's
  output of the layer before it;
* OpenCV's decoded head rows ``[x, y, w, h, objectness, class scores]`` (boxes
  relative to the network input) against our decoder on our head outputs;
* for a network without heads (alexnet) the final output.

Cfgs OpenCV cannot load are listed in ``OPENCV_CANNOT_LOAD`` with the reason
(asserted, so a newer OpenCV that loads them makes the test say so).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import manifest_or_empty
from tests.opencv_util import compare_with_opencv as _compare
from tests.opencv_util import load_for_opencv as _load


MANIFEST = manifest_or_empty()
CASES = sorted(MANIFEST.get("cases", {}))
#: case -> the reason OpenCV's importer gives up (part of its error message)
OPENCV_CANNOT_LOAD = {"pj_yolov1_narrow16": "Unknown layer type: local"}


@pytest.mark.parametrize("name", CASES)
def test_conformance_case_agrees_with_opencv(conformance, manifest, name):
    case = manifest["cases"][name]
    cfg, weights = str(conformance / case["cfg"]), str(conformance / case["weights"])
    try:
        net = cv2.dnn.readNetFromDarknet(cfg, weights)
    except cv2.error as exc:
        assert name in OPENCV_CANNOT_LOAD, f"OpenCV cannot load {name}: {exc}"
        assert OPENCV_CANNOT_LOAD[name] in str(exc)
        return
    assert name not in OPENCV_CANNOT_LOAD, f"OpenCV now loads {name}: compare it"
    model = _load(cfg, weights, case["implementation"].lower())
    x = torch.from_numpy(np.load(conformance / case["arrays"])["input"])
    tol = max(1e-4, case["tolerances"]["recommended"]["end_to_end_relative_to_layer_max_abs"])
    assert _compare(model, net, x, tol, name) > 0


def test_official_yolov3_tiny_agrees_with_opencv(conformance, manifest):
    real = manifest["real"]
    cfg, weights = str(conformance / real["cfg"]), str(conformance / real["weights"]["file"])
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    model = _load(cfg, weights, "pjreddie")
    entry = next(im for im in real["images"] if im["key"] == "dog")
    x = torch.from_numpy(np.load(conformance / entry["arrays"])["letterbox"])[None]
    assert _compare(model, net, x, 1e-4, "official yolov3-tiny") > 0
