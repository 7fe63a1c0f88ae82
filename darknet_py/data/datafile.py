"""Darknet's ``.data`` files, image list files and ``.names`` files.

A ``.data`` file is darknet's ``read_data_cfg`` format: ``key = value`` lines;
empty lines and lines starting with ``#`` or ``;`` are ignored.  The keys the
detector commands read are ``classes``, ``train``, ``valid``, ``names``,
``backup`` (and AlexeyAB's ``difficult``); others are kept in ``extra``.

Relative paths (in the ``.data`` file and in list files) are tried the way
darknet opens them, against the current directory, and then against the folder
of the ``.data`` file, so a dataset folder works from anywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

#: darknet's defaults for the keys the detector commands read
_DEFAULTS = {"train": "data/train.list", "names": "data/names.list", "backup": "/backup/"}


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

    @property
    def folder(self) -> Path:
        return Path(self.file).resolve().parent

    def resolve(self, path: str) -> Path:
        """``path`` as darknet would open it, else relative to the ``.data`` folder."""
        return resolve_path(path, self.folder)

    def train_images(self) -> list[str]:
        return read_list(self.resolve(self.train))

    def valid_images(self) -> list[str]:
        return read_list(self.resolve(self.valid))

    def difficult_images(self) -> list[str] | None:
        return read_list(self.resolve(self.difficult)) if self.difficult else None

    def names_list(self) -> list[str]:
        """The class names; a DataError unless there is exactly one per class."""
        path = self.resolve(self.names)
        names = read_names(path)
        if len(names) != self.classes:
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
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise DataError(f"missing key before '=' in {line!r}", file, lineno)
        values[key] = value
        where[key] = lineno
    classes_text = values.pop("classes", "20")
    try:
        classes = int(classes_text)
    except ValueError:
        raise DataError(f"classes={classes_text!r} is not an integer", file,
                        where.get("classes")) from None
    if classes <= 0:
        raise DataError(f"classes={classes} must be positive", file, where.get("classes"))
    train = values.pop("train", _DEFAULTS["train"])
    return DataConfig(
        file=file, classes=classes, train=train,
        valid=values.pop("valid", train),  # AlexeyAB: valid defaults to train
        names=values.pop("names", _DEFAULTS["names"]),
        backup=values.pop("backup", _DEFAULTS["backup"]),
        difficult=values.pop("difficult", None), extra=values)


def write_data_file(path: str | os.PathLike, classes: int, train: str, valid: str, names: str,
                    backup: str = "backup/", **extra: str) -> None:
    """Write a ``.data`` file darknet reads (atomically)."""
    from ..io import atomic_write
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
    """Class names, one per line (darknet's ``get_labels``); trailing blank lines dropped."""
    file = str(path)
    try:
        with open(file, "r", encoding="utf-8", errors="replace") as fh:
            names = [ln.rstrip("\r\n") for ln in fh.read().splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read names file: {exc.strerror}", file) from None
    while names and not names[-1].strip():
        names.pop()
    return names
