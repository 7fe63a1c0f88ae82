"""Container formats: damaged files, checksums, non-finite parameters, missing optional modules,
and a seeded, time-bounded fuzz of .pt / .safetensors files.

Oracles: files written in the test and damaged at byte ranges found independently of
darknet_py (Python's zipfile for the .pt archive, the safetensors header for its tensors),
hand-built .weights files (struct / numpy), and the model the file was written from.
"""
from __future__ import annotations

import json
import random
import re
import struct
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from darknet_py import ConvertError, Darknet, DarknetError
from darknet_py import convert as C
from darknet_py import formats as F
from darknet_py.cfg import write_cfg
from darknet_py.cli import main as cli
from darknet_py.errors import MissingDependencyError, WeightsError
from tests.test_weights import H020, TINY, TINY_FLOATS


def _random_tiny(seed: int = 0) -> Darknet:
    """TINY with finite parameters in [0.5, 1.5) (no accidental zeros or NaNs)."""
    model = Darknet(TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    return model


def _save(model: Darknet, path) -> None:
    {".pt": C.save_pt, ".safetensors": C.save_safetensors}[path.suffix](model, path)


def tensor_ranges(path) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the tensor data in a .pt or .safetensors file."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        (n,) = struct.unpack_from("<Q", data)
        head = json.loads(data[8:8 + n])
        return [(8 + n + a, 8 + n + b) for k, (a, b) in
                ((k, v["data_offsets"]) for k, v in head.items() if k != "__metadata__") if b > a]
    ranges = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename:   # torch's storages; data.pkl holds the rest
                name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
                start = info.header_offset + 30 + name_len + extra_len
                ranges.append((start, start + info.file_size))
    return ranges


def _only_in(changed: list[int], ranges) -> bool:
    return bool(changed) and all(any(a <= i < b for a, b in ranges) for i in changed)


# ------------------------------------------------------------------ damaged tensors (issue 13.3)

@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_overwritten_tensor_bytes_are_refused(conformance, manifest, tmp_path, capsys, fmt):
    """100 bytes of a converted yolov3-tiny overwritten inside a tensor: one error, no output."""
    case = manifest["cases"]["pj_yolov3-tiny_narrow8"]
    mid = tmp_path / f"m{fmt}"
    C.convert(conformance / case["weights"], mid, cfg=conformance / case["cfg"])
    start, end = max(tensor_ranges(mid), key=lambda r: r[1] - r[0])
    assert end - start > 300
    data = bytearray(mid.read_bytes())
    data[start + 200:start + 300] = b"\xff" * 100     # 25 float32 NaNs
    mid.write_bytes(bytes(data))
    out = tmp_path / "out.weights"
    assert cli(["convert", str(mid), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.fullmatch(rf"darknet-py convert: error: {re.escape(str(mid))}: layer \d+ \[convolutional\] "
                        rf"\(.*\), tensor 'weights' \(module_list\.\d+\.weights\) does not match its "
                        rf"checksum: the file is damaged\n", err), err
    assert not out.exists()


def test_tensors_without_checksums_are_still_checked_for_nan(tmp_path, capsys):
    """A checkpoint without checksums (older, or hand-made) holding NaNs: refused by default,
    naming layer and tensor; --allow-nonfinite converts it, NaNs and all."""
    model = _random_tiny()
    with torch.no_grad():
        model.module_list[2].biases[1] = float("nan")
    src = tmp_path / "n.pt"
    C.save_pt(model, src)
    ckpt = torch.load(src, weights_only=True)
    del ckpt["checksums"]
    torch.save(ckpt, src)
    out = tmp_path / "n.weights"
    with pytest.raises(ConvertError, match=r"n\.pt: layer 2 \[connected\] \(.*n\.pt \(embedded cfg\):\d+\), "
                                           r"tensor 'biases' \(module_list\.2\.biases\): 1 of 4 values are "
                                           r"not finite \(the first, at index 1, is nan\); pass "
                                           r"allow_nonfinite=True \(--allow-nonfinite\) to load it anyway"):
        C.convert(src, out)
    assert not out.exists()
    assert cli(["convert", "--allow-nonfinite", str(src), str(out)]) == 0
    body = np.frombuffer(out.read_bytes()[20:], dtype="<f4")
    assert np.isnan(body[TINY_FLOATS[0] + 1]) and np.isfinite(np.delete(body, TINY_FLOATS[0] + 1)).all()


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_nonfinite_parameters_with_valid_checksums(tmp_path, fmt):
    """The checksum proves the file is as written; an infinite value is still refused."""
    model = _random_tiny()
    with torch.no_grad():
        model.module_list[0].rolling_variance[2] = float("inf")
    path = tmp_path / f"x{fmt}"
    _save(model, path)
    with pytest.raises(ConvertError, match=r"layer 0 \[convolutional\] .*tensor 'rolling_variance' "
                                           r"\(module_list\.0\.rolling_variance\): 1 of 3 values are "
                                           r"not finite \(the first, at index 2, is inf\)"):
        F.load_model(path)
    back, info = F.load_model(path, allow_nonfinite=True)
    assert info.checksum_verified and back.module_list[0].rolling_variance[2] == float("inf")


def test_nonfinite_weights_file_names_layer_tensor_and_offset(tmp_path):
    """A hand-built .weights file: layer 2's biases start at byte 20 + 4*18 = 92."""
    floats = np.linspace(0.5, 1.5, sum(TINY_FLOATS)).astype("<f4")
    floats[TINY_FLOATS[0] + 2] = np.nan
    path = tmp_path / "nan.weights"
    path.write_bytes(H020 + floats.tobytes())
    model = Darknet(TINY)
    with pytest.raises(WeightsError, match=r"nan\.weights: layer 2 \[connected\] \(<string>:19\), tensor "
                                           r"'biases' at byte offset 92: 1 of 4 values are not finite "
                                           r"\(the first, at index 2, is nan\); pass allow_nonfinite=True"):
        model.load_weights(path)
    floats[TINY_FLOATS[0] + 2] = 1.0
    floats[TINY_FLOATS[0] + 4 + 7] = -np.inf                  # weights of layer 2, float 7
    path.write_bytes(H020 + floats.tobytes())
    with pytest.raises(WeightsError, match=r"tensor 'weights' at byte offset 108: 1 of 48 values are not "
                                           r"finite \(the first, at index 7, is -inf\)"):
        C.load_model(path, cfg=TINY)
    report = model.load_weights(path, allow_nonfinite=True)
    assert report.floats_read == sum(TINY_FLOATS)
    assert model.module_list[2].weights.reshape(-1)[7] == -np.inf


def test_huge_finite_values_are_finite(tmp_path):
    """Values near float32's maximum overflow any sum; they are still finite and load."""
    floats = np.full(sum(TINY_FLOATS), 3.0e38, dtype="<f4")     # any two of them sum to inf
    path = tmp_path / "big.weights"
    path.write_bytes(H020 + floats.tobytes())
    report = Darknet(TINY).load_weights(path)
    assert report.floats_read == floats.size


def test_checksums_are_verified_and_reported(tmp_path):
    """Written files carry a digest per tensor and of the metadata; older files load unverified."""
    path = tmp_path / "c.pt"
    C.save_pt(_random_tiny(), path)
    ckpt = torch.load(path, weights_only=True)
    assert sorted(ckpt["checksums"]["tensors"]) == sorted(ckpt["state_dict"])
    _, info = F.load_model(path)
    assert info.checksum_verified and info.format == ".pt" and info.cutoff is None
    ckpt["header"]["seen"] = 12345                              # a hand edit the digest sees
    torch.save(ckpt, path)
    with pytest.raises(ConvertError, match=r"c\.pt: the metadata \(cfg, header, sizes\) does not match "
                                           r"its checksum: the file is damaged"):
        F.load_model(path)
    del ckpt["checksums"]
    torch.save(ckpt, path)
    model, info = F.load_model(path)
    assert not info.checksum_verified and model.seen == info.header.seen == 12345


# ------------------------------------------------------------------ optional modules (issue 13.4)

def test_onnx_without_onnx_names_the_extra(tmp_path, monkeypatch, capsys):
    src = tmp_path / "t.pt"
    C.save_pt(_random_tiny(), src)
    monkeypatch.setitem(sys.modules, "onnx", None)              # as if not installed
    with pytest.raises(MissingDependencyError, match=r"^ONNX export needs the module 'onnx', which is "
                                                     r"not installed: pip install 'darknet_py\[onnx\]'$"):
        C.convert(src, tmp_path / "m.onnx")
    assert cli(["convert", str(src), str(tmp_path / "m.onnx")]) == 1
    assert capsys.readouterr().err == ("darknet-py convert: error: ONNX export needs the module 'onnx', "
                                       "which is not installed: pip install 'darknet_py[onnx]'\n")
    assert list(tmp_path.iterdir()) == [src]


def test_onnx_without_onnxruntime_says_unchecked_and_how_to_check(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    src = tmp_path / "t.pt"
    C.save_pt(_random_tiny(), src)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli(["convert", str(src), str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "not checked: onnxruntime is not installed (pip install 'darknet_py[onnx]')" in out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_safetensors_module_missing_is_one_error(tmp_path, monkeypatch):
    src = tmp_path / "t.pt"
    C.save_pt(_random_tiny(), src)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependencyError, match=r"writing \.safetensors needs the module "
                                                     r"'safetensors\.torch', which is not installed: "
                                                     r"pip install safetensors"):
        C.convert(src, tmp_path / "t.safetensors")
    with pytest.raises(ImportError):                           # still an ImportError for callers
        C.load_model(tmp_path / "x.safetensors")


# ------------------------------------------------------------------ fuzz (issue 13.11)

FUZZ_SECONDS = 3.0   # per format: enough for ~1000 files here, bounded on a loaded machine


def _mutate(rng: random.Random, orig: bytes, ranges) -> bytes:
    data = bytearray(orig)
    kind = rng.randrange(4)
    if kind == 0:                                   # truncated
        return bytes(data[:rng.randrange(len(data))])
    if kind == 1:                                   # one bit
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:                                   # inside one tensor's bytes
        a, b = rng.choice(ranges)
        i = rng.randrange(a, b)
        k = rng.randint(1, b - i)
    else:                                           # 1..100 bytes anywhere
        i, k = rng.randrange(len(data)), rng.randint(1, 100)
    data[i:i + k] = bytes(rng.randrange(256) for _ in range(len(data[i:i + k])))
    return bytes(data)


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_fuzzed_checkpoints_fail_cleanly(tmp_path, fmt):
    """Seeded mutations and truncations of a written file: each load either raises a
    DarknetError or gives exactly the model that was written; any change confined to tensor
    bytes is caught by the checksum."""
    model = _random_tiny()
    good = tmp_path / f"good{fmt}"
    _save(model, good)
    orig, ranges = good.read_bytes(), tensor_ranges(good)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    cfg_text = write_cfg(model.cfg)
    rng = random.Random(20260313)
    path = tmp_path / f"fuzz{fmt}"
    counts = {"error": 0, "same": 0, "tensor_bytes_caught": 0}
    deadline = time.monotonic() + FUZZ_SECONDS
    n = 0
    while n < 100 or (time.monotonic() < deadline and n < 5000):
        n += 1
        data = _mutate(rng, orig, ranges)
        path.write_bytes(data)
        changed = [i for i, (x, y) in enumerate(zip(data, orig)) if x != y]
        only_tensors = len(data) == len(orig) and _only_in(changed, ranges)
        try:
            back, info = F.load_model(path, cfg=TINY if n % 2 else None)   # embedded cfg or given
        except DarknetError as exc:
            counts["error"] += 1
            if only_tensors:
                assert "does not match its checksum: the file is damaged" in str(exc), (n, str(exc))
                counts["tensor_bytes_caught"] += 1
            continue
        except Exception as exc:   # the bug this test is for: name the mutation that caused it
            pytest.fail(f"mutation {n} (seed 20260313): {type(exc).__name__}: {exc}")
        assert not only_tensors, f"mutation {n}: changed tensor bytes {changed[:5]} loaded"
        state = back.state_dict()
        assert all(torch.equal(state[k], v) for k, v in ref.items()), f"mutation {n}: other tensors"
        assert write_cfg(back.cfg) == cfg_text and back.header == model.header, f"mutation {n}"
        counts["same"] += 1
    assert counts["tensor_bytes_caught"] >= 10 and counts["error"] >= n // 2, counts


# fields of a checkpoint without checksums (hand-made or older) that no darknet_py writes
HAND_MADE = [
    ("width", -5, r"checkpoint width=-5 is not a network size"),
    ("height", 1 << 40, r"checkpoint height=1099511627776 is not a network size"),
    ("cutoff", 7, r"checkpoint cutoff=7 does not lie in 0\.\.3 \(the layers of its cfg\)"),
    ("format_version", 0, r"checkpoint format_version 0 is not a version darknet_py writes \(1\.\.1\)"),
    ("dialect", 3, r"checkpoint field 'dialect' has type int"),
    ("header", {"major": -1, "minor": 2, "revision": 0, "seen": 0, "seen_width": 8},
     r"darknet header record has version -1\.2\.0, which no darknet writes"),
    ("header", {"major": 0, "minor": 1, "revision": 0, "seen": 1 << 32, "seen_width": 4},
     r"darknet header record has seen=4294967296, which does not fit its 32-bit field"),
]


@pytest.mark.parametrize("key,value,message", HAND_MADE, ids=[f"{k}={v}"[:24] for k, v, _ in HAND_MADE])
def test_hand_made_checkpoint_fields_are_checked(tmp_path, key, value, message):
    path = tmp_path / "h.pt"
    C.save_pt(_random_tiny(), path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["checksums"]
    ckpt[key] = value
    torch.save(ckpt, path)
    with pytest.raises(ConvertError if key != "header" else WeightsError, match=rf"h\.pt: {message}"):
        C.convert(path, tmp_path / "out.weights")
    assert not (tmp_path / "out.weights").exists()
