"""Darknet cfg files: parse into typed section records, and write them back.

Parsing follows darknet's ``read_cfg``: ``[section]`` headers, ``key=value``
lines, whitespace stripped, lines starting with ``#`` or ``;`` and empty lines
ignored.  Values are converted exactly once, here, with the defaults of the
cfg's darknet dialect (see :mod:`darknet_py.options`).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import CfgError
from .options import (AB_ONLY_ACTIVATIONS, AB_ONLY_SECTIONS, LAYER_COMMON, SCHEMA,
                      SECTION_ALIASES, Opt)

DIALECTS = ("pjreddie", "alexeyab")


class UnusedOptionWarning(UserWarning):
    """A cfg key that no darknet_py builder reads (darknet's ``option_unused``)."""


@dataclass
class Section:
    """One ``[section]`` of a cfg.

    ``options`` holds every option the section's builder reads, typed, with the
    dialect's default where the file gives none.  ``given`` lists the keys the
    file sets (in file order) with their line numbers; ``unused`` keeps keys no
    builder reads, as raw strings, so the writer can keep them.
    """

    type: str
    line: int
    options: dict[str, Any]
    given: dict[str, int] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    file: str = "<cfg>"
    name: str | None = None  # the header as spelled in the file, e.g. "conv"

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.given

    def line_of(self, key: str) -> int:
        return self.given.get(key, self.line)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A CfgError located at this section (or at one of its keys)."""
        line = self.line_of(key) if key else self.line
        return CfgError(f"[{self.type}]: {message}", self.file, line)

    def __eq__(self, other: object) -> bool:  # line numbers and file do not count
        if not isinstance(other, Section):
            return NotImplemented
        return (self.type == other.type and _eq_opts(self.options, other.options)
                and self.unused == other.unused and set(self.given) == set(other.given))


def _eq_opts(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k, va in a.items():
        vb = b[k]
        if isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb):
            continue
        if va != vb:
            return False
    return True


@dataclass
class Cfg:
    """A parsed cfg: the [net] section and the layer sections in order."""

    sections: list[Section]
    dialect: str
    file: str = "<cfg>"

    @property
    def net(self) -> Section:
        return self.sections[0]

    @property
    def layers(self) -> list[Section]:
        return self.sections[1:]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cfg):
            return NotImplemented
        return self.dialect == other.dialect and self.sections == other.sections


# ---------------------------------------------------------------- raw reading

@dataclass
class _RawSection:
    name: str
    line: int
    items: list[tuple[str, str, int]] = field(default_factory=list)  # key, value, line


def _read_raw(text: str, file: str) -> list[_RawSection]:
    sections: list[_RawSection] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.replace("\x00", "").strip()
        # darknet's strip() removes every whitespace character, even inside the line
        line = "".join(line.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise CfgError(f"section header {line!r} is not closed with ']'", file, lineno)
            sections.append(_RawSection(line[1:-1], lineno))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value', got {raw.strip()!r}", file, lineno)
        if not sections:
            raise CfgError(f"option {raw.strip()!r} appears before any [section]", file, lineno)
        key, value = line.split("=", 1)
        # darknet's atoi/atof stop at the first non-numeric character, so a
        # trailing "#..." after a value acts as a comment; keep that behaviour.
        value = value.split("#", 1)[0]
        sections[-1].items.append((key, value, lineno))
    return sections


def _detect_dialect(raw: list[_RawSection]) -> str:
    for s in raw:
        kind = SECTION_ALIASES.get(s.name)
        if kind in AB_ONLY_SECTIONS:
            return "alexeyab"
        schema = SCHEMA.get(kind or "", {})
        for key, value, _ in s.items:
            opt = schema.get(key) or LAYER_COMMON.get(key)
            if opt is not None and not opt.pj:
                return "alexeyab"
            if key == "activation" and value in AB_ONLY_ACTIVATIONS:
                return "alexeyab"
    return "pjreddie"


# ---------------------------------------------------------------- conversion

def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        f = float(text)  # darknet's atoi("1.0") == 1; accept integral floats only
        if not f.is_integer():
            raise
        return int(f)


def _to_float(text: str) -> float:
    if text.startswith("."):
        text = "0" + text
    elif text.startswith("-."):
        text = "-0" + text[1:]
    return float(text)


def _convert(opt: Opt, value: str) -> Any:
    if opt.kind == "int":
        return _to_int(value)
    if opt.kind == "float":
        return _to_float(value)
    if opt.kind == "str":
        return value
    parts = [p for p in value.split(",") if p != ""]
    if opt.kind == "ints":
        return tuple(_to_int(p) for p in parts)
    if opt.kind == "floats":
        return tuple(_to_float(p) for p in parts)
    raise AssertionError(opt.kind)


_KIND_WORDS = {"int": "an integer", "float": "a number", "ints": "a list of integers",
               "floats": "a list of numbers", "str": "a string"}


def _build_section(raw: _RawSection, dialect: str, file: str, first: bool) -> Section:
    kind = SECTION_ALIASES.get(raw.name)
    if kind is None:
        raise CfgError(f"unknown section [{raw.name}]", file, raw.line)
    if first and kind != "net":
        raise CfgError(f"the first section must be [net] (or [network]), got [{raw.name}]",
                       file, raw.line)
    if not first and kind == "net":
        raise CfgError("[net] may only be the first section", file, raw.line)
    schema = dict(SCHEMA[kind])
    if kind != "net":
        for k, v in LAYER_COMMON.items():
            schema.setdefault(k, v)
    options = {k: opt.default_for(dialect) for k, opt in schema.items()}
    given: dict[str, int] = {}
    unused: dict[str, str] = {}
    for key, value, lineno in raw.items:
        opt = schema.get(key)
        if opt is None:
            unused[key] = value
            given[key] = lineno
            continue
        try:
            options[key] = _convert(opt, value)
        except ValueError:
            raise CfgError(f"[{raw.name}] {key}={value!r}: expected {_KIND_WORDS[opt.kind]}",
                           file, lineno) from None
        given[key] = lineno
    return Section(kind, raw.line, options, given, unused, file, raw.name)


def parse_cfg(source: str | os.PathLike | Iterable[str], *, dialect: str = "auto",
              name: str | None = None, warn_unused: bool = True) -> Cfg:
    """Parse a cfg file (path) or cfg text.

    ``dialect``: ``"pjreddie"``, ``"alexeyab"`` or ``"auto"`` (AlexeyAB when the
    file uses anything only AlexeyAB's parser knows, pjreddie otherwise).
    """
    if isinstance(source, (str, os.PathLike)) and "\n" not in str(source) and (
            os.path.exists(source) or str(source).endswith(".cfg")):
        file = str(source)
        try:
            with open(file, "r", encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as exc:
            raise CfgError(f"cannot read cfg: {exc.strerror}", file) from None
    else:
        text = source if isinstance(source, str) else "\n".join(source)
        file = name or "<string>"
    raw = _read_raw(text, file)
    if not raw:
        raise CfgError("no sections: a cfg starts with [net]", file, 1)
    if dialect == "auto":
        dialect = _detect_dialect(raw)
    elif dialect not in DIALECTS:
        raise CfgError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}", file)
    sections = [_build_section(r, dialect, file, i == 0) for i, r in enumerate(raw)]
    if warn_unused:
        for s in sections:
            for key in s.unused:
                warnings.warn(f"{file}:{s.given[key]}: [{s.name}] option {key!r} is not "
                              f"used by darknet_py ({dialect})", UnusedOptionWarning,
                              stacklevel=2)
    return Cfg(sections, dialect, file)


# ---------------------------------------------------------------- writing

def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_format(v) for v in value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def write_cfg(cfg: Cfg) -> str:
    """cfg text for ``cfg``: the keys the original gave, in their original order."""
    out: list[str] = []
    for s in cfg.sections:
        out.append(f"[{s.name or s.type}]")
        for key in s.given:
            value = s.unused[key] if key in s.unused else _format(s.options[key])
            out.append(f"{key}={value}")
        out.append("")
    return "\n".join(out)


def save_cfg(cfg: Cfg, path: str | os.PathLike) -> None:
    from .io import atomic_write
    atomic_write(path, write_cfg(cfg).encode())
