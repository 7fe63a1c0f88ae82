"""Seeded fuzz: damaged input files are rejected with a DarknetError, never a crash.

Every case is a real file (cfg, ``.weights``, ``.data``, label file) damaged by
a few random edits drawn from a seeded generator, then read by the code a
command would run on it.  The oracle is the project's promise: the read either
succeeds or raises one :class:`DarknetError`; any other exception is a bug and
the failure lists the case's seed and edits so it can be replayed.

The counts are fixed (300 cfgs, 100 weights files, 100 .data files, 100 label
files) and chosen to run in a few seconds; ``DARKNET_PY_FUZZ_SCALE=k``
multiplies them for a deeper run.  Each case has its own seed
(``[base seed, case index]``), so one case replays without the others.
"""
from __future__ import annotations

import os
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

from darknet_py import Darknet, DarknetError
from darknet_py.cfg import parse_cfg
from tests.tiny_files import TINY_CFG

SCALE = max(1, int(os.environ.get("DARKNET_PY_FUZZ_SCALE", "1")))
SEED = int(os.environ.get("DARKNET_PY_FUZZ_SEED", "0"))  # added to every base seed
REPO = Path(__file__).resolve().parents[1]

#: small networks covering the builders (conv, BN, pools, route/shortcut,
#: upsample, reorg, connected, dropout, softmax and every head family)
CFG_SOURCES = ["pj_yolov2-tiny_narrow8/pj_yolov2-tiny_narrow8.cfg",
               "ab_yolov4-tiny_narrow8/ab_yolov4-tiny_narrow8.cfg",
               "pj_yolov3-tiny_narrow8/pj_yolov3-tiny_narrow8.cfg",
               "pj_yolov1_narrow16/pj_yolov1_narrow16.cfg",
               "pj_alexnet_narrow16/pj_alexnet_narrow16.cfg"]
RESIZABLE = set(CFG_SOURCES[:3])  # fully convolutional: any multiple of 32 works

EXTRA_CFGS = {"tiny": TINY_CFG, "recurrent": """[net]
width=1
height=1
channels=16
batch=4
time_steps=2

[rnn]
output=8
hidden=8
activation=leaky
batch_normalize=1

[gru]
output=8

[connected]
output=16
activation=linear

[softmax]
"""}

#: values that break darknet's expectations in different ways
TOKENS = ["0", "-1", "1", "2", "3", "5", "-7", "64", "999", "1.5", "-0.5", "1e3", "", " ", "x",
          "nan", "inf", "-inf", "1,2", "3,,", ",", "1,2,3,4,5,6,7,8,9", "linear", "leaky", "mish",
          "logistic", "0x10", "+2", "２", "\x00", "-100", "1 2", "99999999999", "2147483648",
          "-2147483649", "1e40", "-0", "0.0", "1,-1", "-1,-2", "0,0,0", "9,9", "-1,-4,-9"]
SECTIONS = ["net", "convolutional", "maxpool", "route", "shortcut", "upsample", "yolo", "region",
            "detection", "connected", "reorg", "avgpool", "softmax", "dropout", "rnn", "gru", "lstm",
            "local", "crop", "cost", "sam", "scale_channels", "Gaussian_yolo", "bogus", ""]


class Failures:
    """Cases that raised something other than a DarknetError."""

    def __init__(self, what: str):
        self.what = what
        self.cases: list[str] = []
        self.accepted = self.rejected = 0

    def run(self, label: str, fn) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
            self.accepted += 1
        except DarknetError:
            self.rejected += 1
        except Exception as exc:  # noqa: BLE001  (the bug this test hunts)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.cases.append(f"{label}: {type(exc).__name__}: {str(exc)[:160]} "
                              f"(at {Path(where.filename).name}:{where.lineno})")

    def check(self) -> None:
        print(f"{self.what}: {self.accepted} read, {self.rejected} rejected, {len(self.cases)} crashed")
        assert not self.cases, (f"{len(self.cases)} damaged {self.what} raised a non-DarknetError:\n"
                                + "\n".join(self.cases[:15]))


# ------------------------------------------------------------------ edits
def mutate_lines(lines: list[str], rng: np.random.Generator, sections: list[str]) -> tuple[list[str], list[str]]:
    """1 to 3 random edits of a text file's lines; returns (lines, descriptions)."""
    lines, done = list(lines), []
    for _ in range(int(rng.integers(1, 4))):
        if not lines:
            lines = [""]
        i = int(rng.integers(len(lines)))
        kind = int(rng.integers(8))
        if kind <= 2 and "=" in lines[i]:  # most often: a value
            key = lines[i].split("=", 1)[0]
            tok = TOKENS[int(rng.integers(len(TOKENS)))]
            lines[i] = f"{key}={tok}"
            done.append(f"line {i + 1}: {key}={tok!r}")
        elif kind == 3:
            done.append(f"delete line {i + 1} {lines[i]!r}")
            del lines[i]
        elif kind == 4:
            lines.insert(i, lines[i])
            done.append(f"duplicate line {i + 1}")
        elif kind == 5 and sections:
            name = sections[int(rng.integers(len(sections)))]
            lines[i] = f"[{name}]"
            done.append(f"line {i + 1} -> [{name}]")
        elif kind == 6:
            junk = ["=", "key=", "=value", "[", "[net", "]", "no equals sign", "\ufffd\x01\x7f",
                    "a=b=c", "#" * 3, "filters"][int(rng.integers(11))]
            lines.insert(i, junk)
            done.append(f"insert {junk!r} at line {i + 1}")
        else:
            j = int(rng.integers(len(lines)))
            lines[i], lines[j] = lines[j], lines[i]
            done.append(f"swap lines {i + 1} and {j + 1}")
    return lines, done


# ------------------------------------------------------------------ cfg
def _cfg_texts(conformance: Path) -> dict[str, str]:
    texts = {name: (conformance / name).read_text() for name in CFG_SOURCES}
    texts.update(EXTRA_CFGS)
    return texts


def test_fuzz_cfg(conformance):
    """300 mutated cfgs: parse, build (shapes, parameters) and run one forward
    pass on a network of at most 64x64; DarknetError or success only."""
    import torch
    texts = _cfg_texts(conformance)
    names = sorted(texts)
    fails = Failures("cfgs")
    for case in range(300 * SCALE):
        rng = np.random.default_rng([11 + SEED, case])
        name = names[case % len(names)]
        lines, edits = mutate_lines(texts[name].splitlines(), rng, SECTIONS)
        text = "\n".join(lines) + "\n"

        # every other case of a fully convolutional network runs at 64x64 instead of its size
        small = {"width": 64, "height": 64} if case % 2 and name in RESIZABLE else {}

        def build(text=text, small=small):
            model = Darknet(parse_cfg(text, name="<fuzz>"), **small)
            c, h, w = model.input_shape
            if h * w <= 64 * 64 and c <= 16:  # a forward pass where it is cheap
                with torch.no_grad():
                    model.eval()(torch.rand(2, c, h, w))
        fails.run(f"case {case} ({name}{' at 64x64' if small else ''}; {'; '.join(edits)})", build)
    fails.check()


# ------------------------------------------------------------------ weights
def test_fuzz_weights(conformance, tmp_path):
    """100 damaged .weights: truncated, extended, header fields and random bytes
    overwritten; load_weights and inspect either work or raise a DarknetError."""
    import struct

    from darknet_py.layer_table import inspect
    sources = [("pj_yolov3-tiny_narrow8/pj_yolov3-tiny_narrow8.cfg",
                "pj_yolov3-tiny_narrow8/pj_yolov3-tiny_narrow8.weights"),
               ("pj_alexnet_narrow16/pj_alexnet_narrow16.cfg",
                "weights_format/alexnet_narrow16.transposed_pjreddie.weights")]
    models = []
    for cfg, weights in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models.append((conformance / cfg, Darknet(conformance / cfg), (conformance / weights).read_bytes()))
    fails = Failures("weights files")
    for case in range(100 * SCALE):
        rng = np.random.default_rng([12 + SEED, case])
        cfg, model, data = models[case % len(models)]
        buf = bytearray(data)
        edits = []
        for _ in range(int(rng.integers(1, 3))):
            kind = int(rng.integers(6))
            if kind == 0:
                cut = int(rng.integers(0, len(buf) + 1)) if rng.random() < 0.5 else int(rng.integers(0, 40))
                del buf[cut:]
                edits.append(f"truncate at {cut}")
            elif kind == 1:
                extra = rng.integers(0, 256, int(rng.integers(1, 70)), dtype=np.uint8).tobytes()
                buf += extra
                edits.append(f"append {len(extra)} bytes")
            elif kind == 2 and len(buf) >= 12:
                field = int(rng.integers(3))
                value = [-1, 0, 1, 2, 5, 10, 1000, 2**31 - 1, -2**31][int(rng.integers(9))]
                buf[4 * field:4 * field + 4] = struct.pack("<i", value)
                edits.append(f"header int {field} = {value}")
            elif kind == 3 and len(buf) >= 20:
                seen = [0, 2**32 - 1, 2**63 - 1, 2**64 - 1][int(rng.integers(4))]
                buf[12:20] = struct.pack("<Q", seen)
                edits.append(f"seen bytes = {seen}")
            elif kind == 4 and buf:
                at = int(rng.integers(len(buf)))
                n = int(rng.integers(1, 16))
                buf[at:at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                edits.append(f"{n} random bytes at {at}")
            else:
                buf = bytearray(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
                edits.append(f"replaced by {len(buf)} random bytes")
        path = tmp_path / f"case{case}.weights"
        path.write_bytes(bytes(buf))
        label = f"case {case} ({cfg.name}; {'; '.join(edits)})"
        fails.run(label + " load_weights", lambda: model.load_weights(path))
        fails.run(label + " inspect", lambda: inspect(str(cfg), str(path)))
    fails.check()


# ------------------------------------------------------------------ .data and labels
DATA_TEXT = """classes = 3
train = train.txt
valid = valid.txt
names = names.txt
backup = backup/
"""
LABEL_TEXT = "0 0.5 0.5 0.2 0.3\n2 0.1 0.9 0.05 0.1\n1 0.25 0.75 0.5 0.5\n"


def _dataset(folder: Path) -> None:
    import cv2
    (folder / "obj").mkdir(parents=True)
    for k in range(2):
        cv2.imwrite(str(folder / "obj" / f"{k}.png"), np.full((8, 8, 3), 90, np.uint8))
        (folder / "obj" / f"{k}.txt").write_text(LABEL_TEXT)
    (folder / "train.txt").write_text("obj/0.png\nobj/1.png\n")
    (folder / "valid.txt").write_text("obj/1.png\n")
    (folder / "names.txt").write_text("a\nb\nc\n")


def test_fuzz_data_files(tmp_path, monkeypatch):
    """100 damaged .data files (and some raw bytes): parse, names, both lists."""
    from darknet_py.data import from_data_config, parse_data_file
    _dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    keys = ["classes", "train", "valid", "names", "backup", "difficult", "eval"]
    fails = Failures(".data files")
    for case in range(100 * SCALE):
        rng = np.random.default_rng([13 + SEED, case])
        lines, edits = mutate_lines(DATA_TEXT.splitlines(), rng, [])
        if rng.random() < 0.3:  # a value naming another file, or a key the code reads
            key = keys[int(rng.integers(len(keys)))]
            value = ["obj/0.txt", "obj", "names.txt", "/dev/null", "missing.txt", "obj/0.png"][
                int(rng.integers(6))]
            lines.append(f"{key} = {value}")
            edits.append(f"{key} = {value}")
        raw = ("\n".join(lines) + "\n").encode()
        if rng.random() < 0.1:
            raw = raw[:int(rng.integers(len(raw) + 1))] + b"\xff\xfe\x00\x80"
            edits.append("non-UTF-8 bytes")
        path = tmp_path / f"case{case}.data"
        path.write_bytes(raw)

        def read(path=path):
            data = parse_data_file(path)
            data.names_list()
            for split in ("train", "valid"):
                from_data_config(data, split)
        fails.run(f"case {case} ({'; '.join(edits)})", read)
    fails.check()


def test_fuzz_label_files(tmp_path):
    """100 damaged label files read as a 3-class dataset's."""
    from darknet_py.data import read_labels
    fails = Failures("label files")
    for case in range(100 * SCALE):
        rng = np.random.default_rng([14 + SEED, case])
        lines, edits = mutate_lines(LABEL_TEXT.splitlines(), rng, [])
        if rng.random() < 0.5:  # edit one field of a row
            i = int(rng.integers(max(1, len(lines))))
            fields = (lines[i] if i < len(lines) else "").split()
            if fields:
                k = int(rng.integers(len(fields)))
                fields[k] = TOKENS[int(rng.integers(len(TOKENS)))]
                lines[i] = " ".join(fields)
                edits.append(f"line {i + 1} field {k} = {fields[k]!r}")
        raw = ("\n".join(lines) + "\n").encode()
        if rng.random() < 0.1:
            raw += rng.integers(0, 256, 12, dtype=np.uint8).tobytes()
            edits.append("random bytes at the end")
        path = tmp_path / f"case{case}.txt"
        path.write_bytes(raw)
        fails.run(f"case {case} ({'; '.join(edits)})", lambda: read_labels(path, 3))
    fails.check()


# ------------------------------------------------------------------ what the fuzz found
def test_found_integers_beyond_c_int_and_unallocatable_layers():
    """Found by the cfg fuzz (seed 200): sizes beyond darknet's C int, or sizes whose
    parameters no allocator can give, were torch RuntimeErrors."""
    from darknet_py.errors import CfgError
    with pytest.raises(CfgError, match=r"<string>:8: \[convolutional\] filters=2147483648: outside "
                                       r"darknet's int range \[-2147483648, 2147483647\]"):
        Darknet(TINY_CFG.replace("filters=4", "filters=2147483648", 1))
    with pytest.raises(CfgError, match=r"<string>:6: layer 0 \[convolutional\]: cannot allocate its "
                                       r"parameters \(108.0 GiB\); check its sizes"):
        Darknet(TINY_CFG.replace("filters=4", f"filters={2**30}", 1))  # 2^30 x 3 x 3 x 3 floats


def test_found_nul_byte_in_data_file(tmp_path):
    """Found by the .data fuzz: a NUL byte in a path was Python's ValueError."""
    from darknet_py.data import parse_data_file
    from darknet_py.errors import DataError
    f = tmp_path / "x.data"
    f.write_bytes(b"classes = 2\nnames = a\x00b.names\n")
    with pytest.raises(DataError, match=r"x.data:2: a NUL byte in 'names = a\\x00b.names'"):
        parse_data_file(f)
