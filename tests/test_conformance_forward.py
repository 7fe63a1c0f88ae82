"""Every layer of every conformance case equals darknet's stored output.

Two comparisons, as the conformance README recommends:
* per layer, teacher-forced: each layer is fed darknet's stored outputs of the
  layers it reads; within the case's ``per_layer_teacher_forced`` tolerance
  (|ours - darknet| <= atol * max(1, max|darknet|) + rtol * |darknet|);
* end to end: the whole network on the stored input, every layer's output
  captured with forward hooks on ``module_list``, within the case's
  recommended end-to-end tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from darknet_py import Darknet
from tests.conftest import manifest_or_empty
from tests.golden import first_difference, rel_diff

CASES = sorted(manifest_or_empty().get("cases", {}))
# cases that store every layer's output (the crossimpl case stores only heads: end to end only)
FULL_CASES = sorted(n for n, c in manifest_or_empty().get("cases", {}).items()
                    if c.get("layer_outputs_stored") == "all")


def per_layer_tolerance(case: dict) -> tuple[float, float]:
    """(rtol, atol relative to the layer's max |value|) of the manifest for this case."""
    t = case["tolerances"]["recommended"]["per_layer_teacher_forced"]
    return t["rtol"], t["atol_relative_to_layer_max_abs"]


def end_to_end_tolerance(case: dict) -> float:
    return case["tolerances"]["recommended"]["end_to_end_relative_to_layer_max_abs"]


def _load_case(conformance, manifest, name):
    case = manifest["cases"][name]
    model = Darknet(conformance / case["cfg"], dialect=case["implementation"].lower())
    model.load_weights(conformance / case["weights"])
    model.eval()
    arrays = np.load(conformance / case["arrays"])
    return case, model, arrays


def _stored_outputs(case, arrays) -> dict[int, torch.Tensor]:
    outs = {-1: torch.from_numpy(arrays[case["input_key"]])}
    for layer in case["layers"]:
        if layer["key"] and layer["key"] in arrays:
            outs[layer["index"]] = torch.from_numpy(arrays[layer["key"]])
    return outs


@pytest.mark.parametrize("name", CASES)
def test_shapes_match_darknet(conformance, manifest, name):
    case = manifest["cases"][name]
    model = Darknet(conformance / case["cfg"], dialect=case["implementation"].lower())
    assert len(model.module_list) == len(case["layers"]) == case["net"]["n"]
    for layer in case["layers"]:
        mod = model.module_list[layer["index"]]
        assert mod.section.type == layer["section"], f"layer {layer['index']}"
        ours = list(mod.out_shape)
        if len(layer["out_shape"]) == 1:  # darknet reports flat layers by their output count
            ours = [int(np.prod(ours))]
        assert ours == layer["out_shape"], \
            f"layer {layer['index']} [{layer['section']}]: shape {mod.out_shape} != darknet {layer['out_shape']}"


@pytest.mark.parametrize("name", FULL_CASES)
def test_per_layer_teacher_forced(conformance, manifest, name):
    case, model, arrays = _load_case(conformance, manifest, name)
    outs = _stored_outputs(case, arrays)
    rtol, atol = per_layer_tolerance(case)
    compared = 0
    with torch.no_grad():
        for layer in case["layers"]:
            i = layer["index"]
            mod = model.module_list[i]
            if i not in outs or not all(s in outs for s in mod.sources):
                continue
            ours = model.run_layer(i, *(outs[s] for s in mod.sources))
            ref = outs[i].double()
            err = (ours.double().reshape(ref.shape) - ref).abs() - rtol * ref.abs()
            excess = err.max().item() if ref.numel() else 0.0
            diff, scale = rel_diff(ours, outs[i])
            tol = atol * scale
            assert excess <= tol, (f"{name}: layer {i} [{layer['section']}] differs from darknet by "
                                 f"{diff:.3g} (tolerance {tol:.3g}); "
                                 f"{first_difference(ours, outs[i], tol)}")
            compared += 1
    assert compared >= 2


@pytest.mark.parametrize("name", CASES)
def test_end_to_end_every_layer(conformance, manifest, name):
    case, model, arrays = _load_case(conformance, manifest, name)
    outs = _stored_outputs(case, arrays)
    rtol = end_to_end_tolerance(case)
    captured: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, out))
             for i, m in enumerate(model.module_list)]
    try:
        with torch.no_grad():
            heads = model(outs[-1])
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == len(model.module_list)
    for i, layer in enumerate(case["layers"]):
        if i not in outs:
            continue
        diff, scale = rel_diff(captured[i], outs[i])
        tol = rtol * scale
        assert diff <= tol, (f"{name}: first diverging layer {i} [{layer['section']}]: "
                             f"{diff:.3g} > {tol:.3g}; {first_difference(captured[i], outs[i], tol)}")
    for j, h in zip(model.heads, heads):  # forward() returns the head outputs themselves
        assert torch.equal(h, captured[j])


def test_dialects_differ_as_darknet_does(conformance, manifest):
    """The same cfg/weights/input in both dialects: each matches its own darknet,
    and the pjreddie model does NOT match AlexeyAB's numbers (BN epsilon)."""
    pj = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    ab = manifest["cases"]["ab_yolov3-tiny_narrow8_crossimpl"]
    ab_arrays = np.load(conformance / ab["arrays"])
    x = torch.from_numpy(ab_arrays["input"])
    tol_pj, tol_ab = end_to_end_tolerance(pj), end_to_end_tolerance(ab)
    results = {}
    for dialect in ("pjreddie", "alexeyab"):
        model = Darknet(conformance / pj["cfg"], dialect=dialect)
        model.load_weights(conformance / pj["weights"])
        with torch.no_grad():
            results[dialect] = model.eval()(x)
    for k, idx in enumerate((16, 23)):
        ref = ab_arrays[f"out_{idx:03d}"]
        diff, scale = rel_diff(results["alexeyab"][k], ref)
        assert diff <= tol_ab * scale
        stored_gap = next(L for L in ab["layers"] if L["index"] == idx)
        gap, _ = rel_diff(results["pjreddie"][k], ref)
        assert gap > tol_ab * scale, "the dialects should differ on this case"
        key = next(k for k in stored_gap if k.startswith("max_abs_diff_vs"))
        # our AlexeyAB output is within tol_ab of darknet's and our pjreddie output within
        # tol_pj of pjreddie darknet's, so the gap can move by at most the sum of the two
        assert abs(gap - stored_gap[key]) <= (tol_ab + tol_pj) * scale


REAL = manifest_or_empty().get("real", {}).get("images", [])


@pytest.mark.parametrize("image", [im["key"] for im in REAL])
def test_official_yolov3_tiny_heads(conformance, manifest, image):
    real = manifest["real"]
    entry = next(im for im in real["images"] if im["key"] == image)
    model = Darknet(conformance / real["cfg"])
    report = model.load_weights(conformance / real["weights"]["file"])
    assert report.header.seen == real["weights"]["seen"]
    arrays = np.load(conformance / entry["arrays"])
    x = torch.from_numpy(arrays["letterbox"])[None]
    # the official weights have no tolerance of their own in the manifest: the rule of the
    # same network (yolov3-tiny, pjreddie) with random weights applies
    tol = end_to_end_tolerance(manifest["cases"]["pj_yolov3-tiny_narrow8"])
    with torch.no_grad():
        outs = model.eval()(x)
    for k, layer in enumerate(entry["yolo_layers"]):
        assert model.heads[k] == layer["index"]
        diff, scale = rel_diff(outs[k], arrays[layer["key"]])
        assert diff <= tol * scale, f"{image}: yolo layer {layer['index']} differs by {diff:.3g}"
