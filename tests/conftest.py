"""Shared fixtures: where the darknet conformance data lives.

``DARKNET_PY_CONFORMANCE`` overrides the default ``../shared/conformance``
(relative to the repository).  When the data is missing, tests that need it
skip with the reason, except under ``CI=true`` where a missing oracle fails.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from darknet_py.cfg import UnusedOptionWarning

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(os.environ.get("DARKNET_PY_CONFORMANCE", REPO.parent / "shared" / "conformance"))


def conformance_root() -> Path:
    if (CONFORMANCE / "manifest.json").is_file():
        return CONFORMANCE
    msg = (f"darknet conformance data not found at {CONFORMANCE} "
           f"(set DARKNET_PY_CONFORMANCE to its folder)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def load_manifest() -> dict:
    root = conformance_root()
    with open(root / "manifest.json") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def conformance() -> Path:
    return conformance_root()


@pytest.fixture(scope="session")
def manifest() -> dict:
    return load_manifest()


def manifest_or_empty() -> dict:
    """The manifest for parametrisation at collection time ({} when absent: the
    tests using it then skip/fail through the ``conformance`` fixture)."""
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
