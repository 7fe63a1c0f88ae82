"""Atomic file writing: a temp name in the target folder, renamed when complete."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import os
import stat
import sys
import tempfile
import threading
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def _fallocate_fn():
    """libc's ``fallocate(2)`` on Linux (no zero-writing emulation), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _fallocate_fn()
_KEEP_SIZE = 1   # FALLOC_FL_KEEP_SIZE: blocks are reserved, the file's size still grows by writing


def preallocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``fd`` before writing.

    A full disk then fails at once (``OSError`` ENOSPC) instead of half way,
    and on ext4 the file has its blocks already, so replacing an existing
    file by rename does not first push the whole new file to disk.  Where
    the file system cannot preallocate, nothing is done.
    """
    if _FALLOCATE is None or size <= 0:
        return
    if _FALLOCATE(fd, _KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSPC or err == errno.EDQUOT:
            raise OSError(err, os.strerror(err))
        # EOPNOTSUPP, ENOSYS, EINVAL...: the file system does not preallocate


def _hold(path: str) -> int | None:
    """An open descriptor on the regular file at ``path`` (if any)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _release_in_background(fd: int) -> None:
    # The last reference to a replaced file frees its pages and blocks (tens of
    # ms for a large file); a daemon thread does it while the caller goes on.
    # If the process ends first, the kernel closes the descriptor itself.
    threading.Thread(target=os.close, args=(fd,), daemon=True, name="darknet_py-release").start()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, durable: bool = False,
                size: int | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    An exception (or a killed process) never leaves a half-written file under
    the final name: ``path`` holds either its old content or the complete new
    one.  ``durable`` also fsyncs the data before the rename, so a power loss
    cannot leave an empty file either (at the cost of waiting for the disk).
    ``size``, when known, is reserved up front (:func:`preallocate`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".part",
                               dir=folder)
    old = None
    try:
        # mkstemp makes the file private (0600): give it the replaced file's
        # mode, or the one open() would give a new file
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _mode_for(path))
        if size:
            preallocate(fd, size)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        old = _hold(path)
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.close(old)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if old is not None:
        _release_in_background(old)


_IOV_MAX = 1024


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (a burst of small allocations)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def write_buffers(fh: BinaryIO, buffers: list[memoryview]) -> None:
    """Write ``buffers`` in order, many per system call (``os.writev``)."""
    fh.flush()
    fd = fh.fileno()
    if not hasattr(os, "writev"):
        for b in buffers:
            fh.write(b)
        return
    i, n = 0, len(buffers)
    while i < n:
        chunk = buffers[i:i + _IOV_MAX]
        done = os.writev(fd, chunk)
        for b in chunk:               # a short write: go on from where it stopped
            if done >= b.nbytes:
                done -= b.nbytes
                i += 1
            else:
                buffers[i] = b[done:]
                break


def atomic_write(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    with atomic_open(path, durable=durable, size=len(data)) as fh:
        fh.write(data)
