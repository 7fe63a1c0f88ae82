"""Atomic file writing: a temp name in the target folder, renamed when complete."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, durable: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    An exception (or a killed process) never leaves a half-written file under
    the final name.  ``durable`` also fsyncs the data before the rename (safe
    against a power loss too, at the cost of waiting for the disk).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part",
                               dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)
