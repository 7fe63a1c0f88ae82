"""tests/golden_data, the conformance subset shipped in git, is a faithful part of
../shared/conformance: every shipped file is byte-equal to its original (the two
reduced photo npz files: array-equal, member for member), the manifest entries are
the original entries, and tools/make_golden_subset.py rewrites the folder byte for
byte.  The first two tests need only the subset; the others need ../shared."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CONFORMANCE, REPO, SUBSET, needs_shared

SCRIPT = REPO / "tools" / "make_golden_subset.py"


def _subset_manifest() -> dict:
    with open(SUBSET / "manifest.json") as fh:
        return json.load(fh)


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _referenced(m: dict) -> set[str]:
    """Every file the manifest points to."""
    refs = set()
    for group in (m["cases"], m["decode_cases"], m["train_cases"]["cases"]):
        for entry in group.values():
            refs |= {entry[k] for k in ("cfg", "weights", "initial_weights", "arrays") if k in entry}
    refs |= {f["file"] for f in m["weights_format"]["files"].values()}
    real = m["real"]
    folder = Path(real["cfg"]).parent.as_posix()
    refs |= {real["cfg"], real["names"], real["weights"]["file"]}
    for im in real["images"]:
        refs |= {im["arrays"], f"{folder}/{im['file']}"}
    return refs


def _full_data() -> Path:
    """The full conformance folder these tests compare with, or skip/fail."""
    if not (CONFORMANCE / "manifest.json").is_file():
        needs_shared(f"no conformance data at {CONFORMANCE}")
    with open(CONFORMANCE / "manifest.json") as fh:
        if "subset" in json.load(fh):
            needs_shared("the subset is compared with the full data")
    return CONFORMANCE


def test_subset_holds_what_its_manifest_names():
    m = _subset_manifest()
    on_disk = set(_files(SUBSET))
    refs = _referenced(m)
    omitted = set(m["subset"]["omitted_files"])
    assert refs - on_disk <= omitted, f"referenced but missing: {sorted(refs - on_disk - omitted)}"
    assert m["real"]["weights"]["file"] in omitted           # the one referenced file left out
    unreferenced = {f for f in on_disk - refs - {"manifest.json"} if not f.startswith("zoo/")}
    assert not unreferenced, sorted(unreferenced)
    assert not on_disk & omitted


def test_subset_fits_its_budget():
    m = _subset_manifest()
    size = sum(p.stat().st_size for p in _files(SUBSET).values())
    assert size <= m["subset"]["budget_bytes"] <= 20_000_000, f"{size} bytes"


def test_shipped_files_equal_the_originals():
    full = _full_data()
    m = _subset_manifest()
    reduced = m["subset"]["reduced_arrays"]
    for rel, path in _files(SUBSET).items():
        if rel == "manifest.json":
            continue
        original = full / rel
        if rel in reduced:
            ours, theirs = np.load(path), np.load(original)
            assert sorted(ours.files) == sorted(reduced[rel]["kept"]), rel
            for key in ours.files:
                a, b = ours[key], theirs[key]
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{rel}:{key}"
        else:
            assert path.read_bytes() == original.read_bytes(), rel


def test_manifest_entries_are_the_originals():
    full = _full_data()
    with open(full / "manifest.json") as fh:
        orig = json.load(fh)
    m = _subset_manifest()
    for group, ours, theirs in (("cases", m["cases"], orig["cases"]),
                                ("decode_cases", m["decode_cases"], orig["decode_cases"]),
                                ("train_cases", m["train_cases"]["cases"], orig["train_cases"]["cases"])):
        assert ours and all(ours[n] == theirs[n] for n in ours), group
        left_out = {k.rsplit("/", 1)[1] for k in m["subset"]["omitted"]
                    if k.rsplit("/", 1)[0] == ("train_cases/cases" if group == "train_cases" else group)}
        assert set(ours) | left_out == set(theirs), group
    assert all(im in orig["real"]["images"] for im in m["real"]["images"])
    reduced = {"cases", "decode_cases", "train_cases", "real", "subset"}
    assert {k: v for k, v in m.items() if k not in reduced} == \
        {k: v for k, v in orig.items() if k not in reduced}
    assert {k: v for k, v in m["train_cases"].items() if k != "cases"} == \
        {k: v for k, v in orig["train_cases"].items() if k != "cases"}
    assert {k: v for k, v in m["real"].items() if k != "images"} == \
        {k: v for k, v in orig["real"].items() if k != "images"}


def test_script_rewrites_the_subset_byte_for_byte(tmp_path):
    full = _full_data()
    spec = importlib.util.spec_from_file_location("make_golden_subset", SCRIPT)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "golden_data"
    assert tool.main(["--source", str(full), "--out", str(out)]) == 0
    ours, shipped = _files(out), _files(SUBSET)
    assert sorted(ours) == sorted(shipped)
    changed = [rel for rel in ours if ours[rel].read_bytes() != shipped[rel].read_bytes()]
    assert not changed, f"tests/golden_data is not what {SCRIPT.name} writes: {changed}"
