"""One zoo cfg -> ONNX, checked: shared by tests/test_onnx_zoo.py and benchmarks/onnx_zoo.py.

A cfg is built at a small size with tests/test_zoo.py's random weights
(recurrent cfgs at ``[net] time_steps=steps``) and exported with
``export_onnx(check=True)``.  Then:

* every layer, teacher-forced (fed torch's outputs of its sources), run by
  onnxruntime, must equal torch's layer under the manifest's per-layer rule
  ``|onnx - torch| <= 1e-5 |torch| + 1e-5 max|torch|``;
* optionally the exported graph is run by OpenCV (another interpreter, e.g. a
  venv with OpenCV 5, through tools/opencv_onnx_runner.py) on a random batch of
  two sequences and compared with torch end to end: within the manifest's
  ``1e-4`` relative to the output's max |value|, or, where two float32 programs
  part by more (a deep network amplifying rounding), no further from float64
  torch than torch's own float32 forward (test_convert's rule).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from darknet_py import Darknet, parse_cfg
from darknet_py.errors import DarknetError
from darknet_py.onnx_export import (TeacherForced, _Outputs, _onnx_bytes, _ort_run, batch_unit,
                                    exact_arithmetic_gaps, export_onnx)

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tools" / "opencv_onnx_runner.py"
RECURRENT = {"rnn", "gru", "lstm", "crnn", "conv_lstm", "history"}
#: manifest "per_layer_teacher_forced": rtol 1e-5, atol 1e-5 x the layer's max |value|
LAYER_RTOL = LAYER_ATOL = 1e-5
#: manifest "end_to_end_relative_to_layer_max_abs"
END_TO_END = 1e-4


@dataclasses.dataclass
class ZooResult:
    key: str
    outcome: str          # "exported", "no build", "inexpressible", "layer differs", "skipped"
    detail: str = ""
    opencv: str = ""      # "", "ok", "cannot run: ...", "differs: ..."
    seconds: float = 0.0


def build_small(path: Path, size: int, steps: int) -> Darknet:
    """The cfg at ``size`` x ``size`` (its own size when it has none, e.g. inputs=, or
    cannot take another, e.g. [local]), tests/test_zoo.py's random weights, recurrent
    layers at ``time_steps=steps``."""
    from tests.test_zoo import _BlockZeros, _randomize

    cfg = parse_cfg(path, warn_unused=False)
    if any(s.type in RECURRENT for s in cfg.layers):
        cfg.net.options["time_steps"] = steps
    net = cfg.net
    own = bool(net["width"] and net["height"])
    with warnings.catch_warnings(), _BlockZeros():
        warnings.simplefilter("ignore")
        try:
            model = Darknet(cfg, width=size if own else None, height=size if own else None)
        except (DarknetError, RuntimeError):
            if not own:
                raise
            model = Darknet(cfg)
    _randomize(model)
    return model.eval()


FLT_MIN = float(np.finfo(np.float32).tiny)


def layer_ratio(got: np.ndarray, ref: torch.Tensor) -> float:
    """max |got - ref| / (rtol |ref| + atol max|ref|): <= 1 passes the per-layer rule."""
    r = ref.detach().double().numpy()
    g = np.asarray(got, dtype=np.float64).reshape(r.shape)
    if r.size == 0:
        return 0.0
    scale = float(np.abs(r).max())
    # plus the smallest normal float32: below it values are denormal, spaced 2^-149 apart,
    # and kernels that flush them to zero (oneDNN) or keep them are both right
    bound = LAYER_RTOL * np.abs(r) + LAYER_ATOL * scale + FLT_MIN
    diff = np.abs(g - r)
    same = (g == r) | (np.isnan(g) & np.isnan(r))
    ratio = np.where(same, 0.0, diff / np.where(bound > 0, bound, np.inf))
    ratio = np.where(same | (bound > 0), ratio, np.inf)   # ref all zeros: only equality passes
    return float(np.nan_to_num(ratio, nan=np.inf).max())


def rel_to_max(got: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.detach().double().numpy()
    g = np.asarray(got, dtype=np.float64).reshape(r.shape)
    scale = float(np.abs(r).max()) if r.size else 0.0
    d = float(np.abs(g - r).max()) if r.size else 0.0
    return d / scale if scale > 0 else (0.0 if d == 0 else float("inf"))


def check_layers(model: Darknet, seed: int = 1) -> tuple[float, int]:
    """Teacher-forced: (worst ratio, its layer) of onnxruntime vs torch over all layers."""
    c, h, w = model.input_shape
    x = torch.rand(batch_unit(model), c, h, w, generator=torch.Generator().manual_seed(seed))
    model.reset_state()
    with torch.no_grad():
        outs = model.forward_all(x, keep=range(len(model.module_list)))
    outs[-1] = x
    probe = TeacherForced(model)
    names = [f"in_{s}" for s in probe.feeds]
    feeds = tuple(outs[s] for s in probe.feeds)
    data = _onnx_bytes(probe, feeds, names, [f"out_{i}" for i in probe.layers], 17)
    got = _ort_run(data, dict(zip(names, feeds)))
    ratios = [layer_ratio(g, outs[i]) for g, i in zip(got, probe.layers)]
    worst = int(np.argmax(ratios))
    return ratios[worst], probe.layers[worst]


def run_opencv(python: str, onnx: Path | bytes, x: torch.Tensor | dict[str, torch.Tensor],
               timeout: float = 300) -> dict | str:
    """The graph (a file or its bytes) run by cv2.dnn in ``python`` on ``x`` (or on named
    inputs): {output name: array}, or the error text."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "y.npz"
        if isinstance(onnx, bytes):
            (Path(tmp) / "g.onnx").write_bytes(onnx)
            onnx = Path(tmp) / "g.onnx"
        job: dict = {"onnx": str(onnx), "output": str(out)}
        feeds = x if isinstance(x, dict) else {"": x}
        paths = {}
        for i, (name, t) in enumerate(feeds.items()):
            paths[name] = str(Path(tmp) / f"x{i}.npy")
            np.save(paths[name], t.detach().numpy())
        if isinstance(x, dict):
            job["inputs"] = paths
        else:
            job["input"] = paths[""]
        jobs = Path(tmp) / "jobs.json"
        jobs.write_text(json.dumps([job]))
        try:
            proc = subprocess.run([python, str(RUNNER), str(jobs)], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f}s"
        if out.exists():
            with np.load(out) as z:
                return {k: z[k] for k in z.files}
        err = Path(str(out) + ".err")
        if err.exists():
            return err.read_text().splitlines()[0]
        return f"the runner exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}"


def check_opencv(python: str, model: Darknet, onnx: Path, outputs: list[str], seed: int = 2) -> str:
    """'ok' or what went wrong, OpenCV's run of ``onnx`` against torch (batch of 2 sequences)."""
    c, h, w = model.input_shape
    x = torch.rand(2 * batch_unit(model), c, h, w, generator=torch.Generator().manual_seed(seed))
    got = run_opencv(python, onnx, x)
    if isinstance(got, str):
        return f"cannot run: {got}"
    if set(got) != set(outputs):
        return f"cannot run: outputs {sorted(got)} instead of {outputs}"
    module = _Outputs(model)
    with torch.no_grad():
        ref = module(x)
    arrays = [got[n] for n in outputs]
    if any(a.size != r.numel() for a, r in zip(arrays, ref)):
        return f"differs: shapes {[a.shape for a in arrays]} vs {[tuple(r.shape) for r in ref]}"
    diff = max(rel_to_max(a, r) for a, r in zip(arrays, ref))
    if diff <= END_TO_END:
        return "ok"
    cv_gap, torch_gap = exact_arithmetic_gaps(module, arrays, x, ref)
    if cv_gap <= max(END_TO_END, torch_gap):
        return f"ok (deep: {diff:.2g} from torch, float64 gaps opencv {cv_gap:.2g} torch {torch_gap:.2g})"
    # a network that amplifies rounding (xnor's sign flips): judged layer by layer instead
    ratio, at = opencv_layers(python, model)
    if isinstance(at, str):
        return f"differs: {diff:.3g} end to end; teacher-forced graph: {at}"
    if ratio <= 1:
        return (f"ok (deep: {diff:.2g} from torch end to end; every layer teacher-forced within "
                f"{ratio:.2g} of the per-layer rule)")
    return (f"differs: layer {at} [{model.module_list[at].type}] teacher-forced at {ratio:.3g} x the "
            f"per-layer rule")


def opencv_layers(python: str, model: Darknet, seed: int = 1) -> tuple[float, int | str]:
    """Every layer teacher-forced in OpenCV: (worst per-layer ratio, its layer) or (inf, error)."""
    c, h, w = model.input_shape
    x = torch.rand(batch_unit(model), c, h, w, generator=torch.Generator().manual_seed(seed))
    model.reset_state()
    with torch.no_grad():
        outs = model.forward_all(x, keep=range(len(model.module_list)))
    outs[-1] = x
    probe = TeacherForced(model)
    names = [f"in_{s}" for s in probe.feeds]
    feeds = {n: outs[s] for n, s in zip(names, probe.feeds)}
    data = _onnx_bytes(probe, tuple(feeds.values()), names, [f"out_{i}" for i in probe.layers], 17)
    got = run_opencv(python, data, feeds)
    if isinstance(got, str):
        return float("inf"), got
    ratios = [layer_ratio(got[f"out_{i}"], outs[i]) if f"out_{i}" in got else float("inf")
              for i in probe.layers]
    worst = int(np.argmax(ratios))
    return ratios[worst], probe.layers[worst]


def export_one(path: Path, out: Path, size: int = 96, steps: int = 4, max_params: int | None = None,
               opencv_python: str | None = None, layers: bool = True) -> ZooResult:
    import time

    t0 = time.time()
    key = f"{path.parent.name}/{path.name}"
    res = ZooResult(key, "exported")
    try:
        try:
            model = build_small(path, size, steps)
        except DarknetError as exc:
            res.outcome, res.detail = "no build", str(exc).splitlines()[0][:200]
            return res
        n = sum(p.numel() for p in model.parameters())
        if max_params is not None and n > max_params:
            res.outcome, res.detail = "skipped", f"{n / 1e6:.0f}M parameters"
            return res
        try:
            report = export_onnx(model, out, check=True)
        except DarknetError as exc:
            res.outcome, res.detail = "inexpressible", str(exc).splitlines()[0][:300]
            return res
        res.detail = f"e2e {report.end_to_end_diff:.2g}" + ("; deep" if report.note else "")
        if layers:
            ratio, at = check_layers(model)
            res.detail += f"; per-layer {ratio:.2g} of the rule"
            if not ratio <= 1:
                res.outcome = "layer differs"
                res.detail += f" at layer {at} [{model.module_list[at].type}]"
        if opencv_python:
            res.opencv = check_opencv(opencv_python, model, out, report.outputs)
        return res
    finally:
        res.seconds = time.time() - t0
