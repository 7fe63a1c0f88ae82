"""Darknet's ``.data`` files, image list files and ``.names`` files.

A ``.data`` file is darknet's ``read_data_cfg`` format: ``key = value`` lines;
empty lines and lines starting with ``#`` or ``;`` are ignored.  The keys the
detector commands read are ``classes``, ``train``, ``valid``, ``names``,
``backup`` (and AlexeyAB's ``difficult``); others are kept in ``extra``.

A key the file does not set takes darknet's default (:data:`DEFAULTS`) and is
listed in ``DataConfig.missing``, so every message about it says it was not
given and which default stood in: ``valid`` falls back to the train list (as
AlexeyAB's ``detector train -map`` does), announced by a
:class:`DataDefaultWarning` when the list is used.

Relative paths (in the ``.data`` file and in list files) are tried the way
darknet opens them, against the current directory, and then against the folder
of the ``.data`` file, so a dataset folder works from anywhere.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

#: darknet's defaults for the keys its detector reads (``classes`` as in its
#: ``run_detector``, the paths as in pjreddie's ``train_detector``)
DEFAULTS = {"classes": "20", "train": "data/train.list", "names": "data/names.list",
            "backup": "/backup/"}


class DataDefaultWarning(UserWarning):
    """A ``.data`` key was not given and a default is used in its place."""


@dataclass
class DataConfig:
    """A parsed ``.data`` file; paths are kept as written (see :meth:`resolve`)."""

    file: str
    classes: int
    train: str
    valid: str
    names: str
    backup: str
    difficult: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: the keys the file did not set (their values are darknet's defaults)
    missing: frozenset[str] = frozenset()

    @property
    def folder(self) -> Path:
        return Path(self.file).resolve().parent

    def resolve(self, path: str) -> Path:
        """``path`` as darknet would open it, else relative to the ``.data`` folder."""
        return resolve_path(path, self.folder)

    def setting(self, key: str) -> str:
        """``key=value`` as a message shows it, saying when the value is a default."""
        value = getattr(self, key)
        if key not in self.missing:
            return f"{key}={value}"
        if key == "valid":
            return f"valid={value} (the train list: {self.file} has no valid= line)"
        return f"{key}={value} (darknet's default: {self.file} has no {key}= line)"

    def list_file(self, split: str) -> Path:
        """The ``train`` or ``valid`` list file.  A default stands in for a
        missing key with a :class:`DataDefaultWarning`; a default that does not
        exist is a DataError saying the key is missing."""
        if split not in ("train", "valid"):
            raise DataError(f"split must be 'train' or 'valid', got {split!r}")
        path = self.resolve(getattr(self, split))
        if "train" in self.missing and (split == "train" or "valid" in self.missing):
            if not path.is_file():
                raise DataError(f"no train= line, and darknet's default train list {self.train} "
                                f"does not exist", self.file)
            warnings.warn(f"{self.file}: no train= line; using darknet's default {self.train}",
                          DataDefaultWarning, stacklevel=2)
        if split == "valid" and "valid" in self.missing:
            warnings.warn(f"{self.file}: no valid= line; evaluating on the train list {self.train} "
                          f"(as AlexeyAB's detector train -map does)", DataDefaultWarning, stacklevel=2)
        return path

    def train_images(self) -> list[str]:
        return read_list(self.list_file("train"))

    def valid_images(self) -> list[str]:
        return read_list(self.list_file("valid"))

    def difficult_images(self) -> list[str] | None:
        return read_list(self.resolve(self.difficult)) if self.difficult else None

    def names_list(self) -> list[str]:
        """The class names; a DataError unless there is exactly one per class."""
        path = self.resolve(self.names)
        if "names" in self.missing and not path.is_file():
            raise DataError(f"no names= line, and darknet's default names file {self.names} "
                            f"does not exist", self.file)
        names = read_names(path)
        if len(names) != self.classes:
            if "classes" in self.missing:
                raise DataError(f"{len(names)} names, but {self.file} has no classes= line "
                                f"(darknet's default is classes={self.classes}); add "
                                f"'classes = {len(names)}'", str(path))
            raise DataError(f"{len(names)} names for classes={self.classes} "
                            f"(given in {self.file})", str(path))
        return names

    def backup_dir(self) -> Path:
        p = Path(self.backup)
        return p if p.is_absolute() else self.folder / p


def resolve_path(path: str | os.PathLike, base: Path | None) -> Path:
    """``path`` itself when it exists (darknet opens it relative to the current
    directory); otherwise ``base / path`` when ``base`` is given and ``path`` is
    relative; otherwise ``path`` unchanged (its opening will report it)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None:
        return p
    candidate = base / p
    return candidate if candidate.exists() else p


def parse_data_file(path: str | os.PathLike) -> DataConfig:
    """Read a darknet ``.data`` file.  Malformed lines and a non-integer
    ``classes`` are DataErrors naming the file and line."""
    file = str(path)
    try:
        with open(file, "r", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read .data file: {exc.strerror}", file) from None
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise DataError(f"expected 'key = value', got {line!r}", file, lineno)
        if "\x00" in line:  # no file name holds one (darknet's C strings would end there)
            raise DataError(f"a NUL byte in {line!r}: not a text .data file?", file, lineno)
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise DataError(f"missing key before '=' in {line!r}", file, lineno)
        values[key] = value
        where[key] = lineno
    missing = frozenset(k for k in (*DEFAULTS, "valid") if k not in values)
    classes_text = values.pop("classes", DEFAULTS["classes"])
    try:
        classes = int(classes_text)
    except ValueError:
        raise DataError(f"classes={classes_text!r} is not an integer", file,
                        where.get("classes")) from None
    if classes <= 0:
        raise DataError(f"classes={classes} must be positive", file, where.get("classes"))
    train = values.pop("train", DEFAULTS["train"])
    return DataConfig(
        file=file, classes=classes, train=train,
        valid=values.pop("valid", train),  # AlexeyAB's train -map: valid defaults to train
        names=values.pop("names", DEFAULTS["names"]),
        backup=values.pop("backup", DEFAULTS["backup"]),
        difficult=values.pop("difficult", None), extra=values, missing=missing)


def write_data_file(path: str | os.PathLike, classes: int, train: str, valid: str, names: str,
                    backup: str = "backup/", **extra: str) -> None:
    """Write a ``.data`` file darknet reads (atomically)."""
    from ..files import atomic_write
    lines = [f"classes = {classes}", f"train = {train}", f"valid = {valid}",
             f"names = {names}", f"backup = {backup}"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    atomic_write(path, ("\n".join(lines) + "\n").encode())


def read_list(path: str | os.PathLike) -> list[str]:
    """The image paths of a list file, one per line, as written (surrounding
    whitespace and blank lines dropped)."""
    return [entry for _, entry in read_list_lines(path)]


def read_list_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line number, entry) for every non-blank line of a list file."""
    file = str(path)
    try:
        with open(file, "r", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read image list: {exc.strerror}", file) from None
    return [(n, ln.strip()) for n, ln in enumerate(lines, 1) if ln.strip()]


def read_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line, as darknet's ``get_labels`` reads them: line k is
    class k, a blank line included (it names a class ""), spaces kept, only the
    line end (``\n`` or ``\r\n``) removed.  Trailing blank lines are dropped
    (they name no class a network has, and darknet's count check would trip
    over them)."""
    file = str(path)
    try:
        with open(file, "r", encoding="utf-8", errors="replace", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read names file: {exc.strerror}", file) from None
    names = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    while names and not names[-1].strip():
        names.pop()
    return names
