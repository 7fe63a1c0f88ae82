"""Shared fixtures: where the darknet conformance data lives.

Where the data is taken from, first match wins:

1. ``DARKNET_PY_CONFORMANCE`` when set (the folder it names, present or not);
2. ``../shared/conformance`` beside the repository, when it is there (and always
   under ``CI=true``, where the full data is required);
3. ``tests/golden_data``: the subset shipped in git (tools/make_golden_subset.py).

When the data is missing, tests that need it skip with the reason, except under
``CI=true`` where a missing oracle fails.  With the subset, tests parametrised
over the manifest run the cases it has; a test that looks up a case, or builds a
path to a file, that the subset left out (its manifest's ``subset`` section
lists them) skips with "needs ../shared/conformance: ..." (fails under CI=true).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path, PurePosixPath

import pytest

from darknet_py.cfg import UnusedOptionWarning

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "conformance"
SUBSET = REPO / "tests" / "golden_data"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pick_root() -> Path:
    env = os.environ.get("DARKNET_PY_CONFORMANCE")
    if env:
        return Path(env)
    if IN_CI or (SHARED / "manifest.json").is_file():
        return SHARED
    return SUBSET


CONFORMANCE = _pick_root()


def _missing(msg: str):
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def conformance_root() -> Path:
    if (CONFORMANCE / "manifest.json").is_file():
        return CONFORMANCE
    _missing(f"darknet conformance data not found at {CONFORMANCE} "
             f"(set DARKNET_PY_CONFORMANCE to its folder)")


def _read_manifest() -> dict:
    with open(CONFORMANCE / "manifest.json") as fh:
        return json.load(fh)


# ------------------------------------------------------------------ the shipped subset
def needs_shared(what: str):
    """Skip (fail under CI=true): ``what`` is only in the full ../shared/conformance."""
    _missing(f"needs ../shared/conformance: {what}")


def skip_absent(key: str):
    """Skip: the manifest entry ``key`` (``cases/X``, ``train_cases/cases/X`` ...) is not
    in the data in use; with the subset, the reason names the left-out entry."""
    reason = manifest_or_empty().get("subset", {}).get("omitted", {}).get(key)
    if reason is not None:
        needs_shared(reason)
    pytest.skip(f"{key} is not in the conformance data")


class SubsetManifest(dict):
    """A manifest dict of the subset: looking up an entry the subset left out
    (``subset.omitted``, e.g. ``cases/pj_yolov3_narrow16``) skips naming it."""

    def __init__(self, data: dict, omitted: dict[str, str], where: str = ""):
        super().__init__({k: _guard(v, omitted, f"{where}{k}/") for k, v in data.items()})
        self._omitted, self._where = omitted, where

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            reason = self._omitted.get(f"{self._where}{key}")
            if reason is None:
                raise
            needs_shared(reason)


def _guard(value, omitted: dict[str, str], where: str):
    if isinstance(value, dict):
        return SubsetManifest(value, omitted, where)
    if isinstance(value, list):
        return [_guard(v, omitted, where) for v in value]
    return value


class SubsetPath(type(Path())):
    """A path into the subset: joining it to a file or folder the subset left
    out (``subset.omitted_files`` / ``omitted_folders``) skips naming it."""

    root: Path = SUBSET
    omitted: dict[str, str] = {}

    def __truediv__(self, key):
        path = super().__truediv__(key)
        try:
            rel = PurePosixPath(path.relative_to(self.root).as_posix())
        except ValueError:
            return path
        reason = self.omitted.get(str(rel)) or (self.omitted.get(rel.parts[0]) if rel.parts else None)
        if reason is not None:
            needs_shared(reason)
        return path

    def joinpath(self, *keys):
        path = self
        for key in keys:
            path = path / key
        return path


def _subset_root(root: Path, subset: dict) -> Path:
    SubsetPath.root = Path(root)
    SubsetPath.omitted = {**subset.get("omitted_folders", {}), **subset.get("omitted_files", {})}
    return SubsetPath(root)


# ------------------------------------------------------------------ fixtures
def load_manifest() -> dict:
    conformance_root()
    data = _read_manifest()
    if "subset" in data:
        return SubsetManifest(data, data["subset"].get("omitted", {}))
    return data


@pytest.fixture(scope="session")
def conformance() -> Path:
    root = conformance_root()
    subset = _read_manifest().get("subset")
    return _subset_root(root, subset) if subset is not None else root


@pytest.fixture(scope="session")
def manifest() -> dict:
    return load_manifest()


def manifest_or_empty() -> dict:
    """The manifest for parametrisation at collection time ({} when absent: the
    tests using it then skip/fail through the ``conformance`` fixture).  With the
    subset it holds the subset's cases only."""
    path = CONFORMANCE / "manifest.json"
    if not path.is_file():
        return {}
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(autouse=True)
def _quiet_unused_options():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedOptionWarning)
        yield
