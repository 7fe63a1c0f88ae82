"""One error hierarchy for everything darknet_py rejects.

Every error names the file and, where it applies, the line (cfg) or the layer
and byte offset (weights), so a user can fix the input without a traceback.
"""
from __future__ import annotations


class DarknetError(Exception):
    """Base class of every error darknet_py raises on bad input."""


class CfgError(DarknetError):
    """A cfg file that darknet would reject or misread.

    Attributes: ``file`` (path or ``"<string>"``), ``line`` (1-based or None).
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file = file
        self.line = line
        where = file or "<cfg>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class UnsupportedLayerError(CfgError):
    """A section or option darknet knows but darknet_py cannot build (e.g. [conv_lstm] bottleneck=1)."""


class WeightsError(DarknetError):
    """A weights file that does not fit its cfg (truncated, trailing bytes, bad header...)."""

    def __init__(self, message: str, file: str | None = None):
        self.file = file
        super().__init__(f"{file or '<weights>'}: {message}")


class InputError(DarknetError, ValueError):
    """A tensor given to a layer that it cannot take (e.g. a batch that is not a
    whole number of sequences of a recurrent layer's time_steps)."""


class ConvertError(DarknetError):
    """A conversion that cannot be done exactly (format mismatch, unsupported ONNX op...)."""


class DataError(DarknetError):
    """A dataset file (labels, list, .data) that cannot be read as darknet would.

    Attributes: ``file`` and ``line`` (1-based) when known.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file = file
        self.line = line
        where = file if line is None or file is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}" if where else message)


class MissingDependencyError(DarknetError, ImportError):
    """An optional Python module a feature needs is not installed; the message names the
    pip command that installs it (an ``ImportError`` too, so ``except ImportError`` still works)."""


class CheckpointError(DarknetError):
    """A training checkpoint (``.pt`` for ``--resume``, or a state dict given to
    ``Trainer.load_state_dict``) that does not fit the model it is loaded into.

    Attributes: ``file`` when known.
    """

    def __init__(self, message: str, file: str | None = None):
        self.file = file
        super().__init__(f"{file}: {message}" if file else message)


class TrainingError(DarknetError):
    """A training run that would do nothing useful as configured (e.g. the weights'
    ``seen`` already puts the schedule past ``max_batches``, or no image has labels)."""
