"""Optional dependencies: one clear error naming the pip command, instead of a traceback."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

#: module -> what installs it (the extras are those of setup.py)
INSTALL: dict[str, str] = {
    "onnx": "pip install 'darknet_py[onnx]'",
    "onnxruntime": "pip install 'darknet_py[onnx]'",
    "safetensors": "pip install safetensors",   # a base dependency: only a broken install lacks it
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying what needs it and how to
    install it, e.g. ``ONNX export needs the module 'onnx', which is not installed: pip install
    'darknet_py[onnx]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        how = INSTALL.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        # a module that is there but fails to import is told apart from one that is absent
        missing = exc.name in (None, module, module.split(".")[0])
        why = "which is not installed" if missing else f"which fails to import ({exc})"
        raise MissingDependencyError(f"{purpose} needs the module {module!r}, {why}: {how}",
                                     name=module) from None


def available(module: str) -> bool:
    """Whether ``module`` imports (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
