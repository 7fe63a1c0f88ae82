"""Darknet cfg files: parse into typed section records, and write them back.

Reading follows darknet's ``read_cfg``: lines are split at ``\\n``, every space,
tab and carriage return is removed (even inside a line), empty lines and lines
starting with ``#`` or ``;`` are skipped, ``[name]`` starts a section and every
other line is ``key=value`` (split at the first ``=``).  Like darknet's
``option_find``, the first occurrence of a key is the one read; repeats are
reported unused.

Values are converted exactly once, here, with the schema and defaults of the
cfg's darknet dialect (:mod:`darknet_py.options`): ``int`` as ``atoi`` reads it
(the integer prefix of a number, so ``1.9`` is 1), ``float`` rounded to a C
``float`` (float32), lists split at commas.  Text after ``#`` in a numeric value
is a comment (``atoi``/``atof`` stop there).  Where darknet would silently read
garbage (``abc`` as 0, an unknown activation as relu) we raise
:class:`~darknet_py.errors.CfgError` naming the file and line instead.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from .activations import ACTIVATIONS
from .errors import CfgError
from .options import (AB_ONLY_ACTIVATIONS, AB_ONLY_SECTIONS, AB_ONLY_VALUES, DIALECTS,
                      SECTION_ALIASES, Opt, section_dialects, section_schema)

__all__ = ["Cfg", "Section", "UnusedOptionWarning", "parse_cfg", "write_cfg", "save_cfg",
           "DIALECTS"]


class UnusedOptionWarning(UserWarning):
    """A cfg key darknet's parser does not read (darknet's ``option_unused``)."""


@dataclass
class Section:
    """One ``[section]`` of a cfg.

    ``options`` holds every option of the section type, typed: the file's
    value for the keys darknet reads, the dialect's default otherwise.
    ``given`` maps the keys the file sets (first occurrence, in file order) to
    their line; ``unused`` keeps, as raw text, the keys darknet does not read
    (unknown keys, keys of the other dialect, ``steps`` without
    ``policy=steps`` ...) so the writer can keep them.  ``repeated`` holds the
    later occurrences of a key (key, raw value, line): darknet reads only the
    first.
    """

    type: str
    line: int
    options: dict[str, Any]
    given: dict[str, int] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    file: str = "<cfg>"
    name: str | None = None  # the header as spelled in the file, e.g. "conv"
    repeated: list[tuple[str, str, int]] = field(default_factory=list)
    #: the options as parsed: the writer adds a key the file did not set only when it changed
    parsed: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def __contains__(self, key: str) -> bool:
        """Whether the file sets ``key`` (not whether it has a default)."""
        return key in self.given

    def line_of(self, key: str) -> int:
        return self.given.get(key, self.line)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A CfgError located at this section (or at the line of one of its keys)."""
        line = self.line_of(key) if key else self.line
        return CfgError(f"[{self.name or self.type}]: {message}", self.file, line)

    def __eq__(self, other: object) -> bool:  # line numbers and file do not count
        if not isinstance(other, Section):
            return NotImplemented
        return (self.type == other.type and _eq_values(self.options, other.options)
                and self.unused == other.unused and list(self.given) == list(other.given)
                and [r[:2] for r in self.repeated] == [r[:2] for r in other.repeated])


def _eq_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_same(a[k], b[k]) for k in a)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, tuple) and isinstance(y, tuple):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    return type(x) is type(y) and x == y


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


_STRIP = str.maketrans("", "", " \t\r\n")  # darknet's strip(); AlexeyAB's also drops \r


def _read_raw(text: str, file: str) -> list[_RawSection]:
    sections: list[_RawSection] = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.split("\x00", 1)[0].translate(_STRIP)  # C strings end at NUL
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            close = line.find("]")
            if close < 0:
                raise CfgError(f"section header {raw.strip()!r} is not closed with ']'",
                               file, lineno)
            if close != len(line) - 1:
                raise CfgError(f"section header {raw.strip()!r} has text after ']' "
                               f"(darknet would not recognise the section)", file, lineno)
            sections.append(_RawSection(line[1:-1], lineno))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value', got {raw.strip()!r}", file, lineno)
        if not sections:
            raise CfgError(f"option {raw.strip()!r} appears before any [section]", file, lineno)
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"{raw.strip()!r} has no key before '='", file, lineno)
        if not value:
            raise CfgError(f"{key}= has no value (darknet skips such a line with "
                           f"'Config file error')", file, lineno)
        sections[-1].items.append((key, value, lineno))
    return sections


def _detect_dialect(raw: Iterable[_RawSection]) -> str:
    """AlexeyAB when any section, option or value only AlexeyAB's parser knows is used."""
    for s in raw:
        kind = SECTION_ALIASES.get(s.name)
        if kind is None:
            continue
        if kind in AB_ONLY_SECTIONS:
            return "alexeyab"
        schema = section_schema(kind)
        for key, value, _ in s.items:
            opt = schema.get(key)
            if opt is None:
                continue
            if opt.alexeyab and not opt.pj:
                return "alexeyab"
            if opt.kind == "activation" and value in AB_ONLY_ACTIVATIONS:
                return "alexeyab"
            if value in AB_ONLY_VALUES.get((kind, key), ()):
                return "alexeyab"
    return "pjreddie"


# ---------------------------------------------------------------- conversion

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_INT_PREFIX = re.compile(r"[+-]?\d*")


class _BadValue(ValueError):
    def __init__(self, text: str, why: str | None = None):
        super().__init__(text)
        self.why = why


#: darknet keeps integers in a C ``int``; a value beyond it is no number darknet can hold
_C_INT = (-2**31, 2**31 - 1)


def _c_int(v: int, text: str) -> int:
    if not _C_INT[0] <= v <= _C_INT[1]:
        raise _BadValue(text, f"outside darknet's int range [{_C_INT[0]}, {_C_INT[1]}]")
    return v


def _number_text(text: str) -> str:
    """The numeric part of a value: up to a '#' comment, validated as a decimal number."""
    t = text.split("#", 1)[0]
    if not _NUMBER.fullmatch(t):
        raise _BadValue(t)
    return t


def _to_int(text: str) -> int:
    """``atoi`` of a valid decimal number: its integer prefix ("1.9" -> 1, ".5" -> 0)."""
    digits = _INT_PREFIX.match(_number_text(text)).group()
    return _c_int(int(digits), text) if digits.lstrip("+-") else 0


def _to_float(text: str) -> float:
    """``atof`` into a C float: the value rounded to float32."""
    t = text.split("#", 1)[0]
    if not (_NUMBER.fullmatch(t) or _SPECIAL.fullmatch(t)):
        raise _BadValue(t)
    with np.errstate(over="ignore"):
        return float(np.float32(float(t)))


def _to_float_int(text: str) -> int:
    """``atof`` stored into an int: truncation toward zero."""
    v = _to_float(text)
    if not math.isfinite(v):
        raise _BadValue(text)
    return _c_int(int(v), text)


def _items(text: str) -> list[str]:
    parts = text.split("#", 1)[0].split(",")
    if parts and parts[-1] == "":
        parts.pop()  # one trailing comma, as in "steps=400000,450000,"
    if not parts or any(p == "" for p in parts):
        raise _BadValue(text)
    return parts


_CONVERT = {
    "int": _to_int,
    "float": _to_float,
    "float_int": _to_float_int,
    "str": lambda text: text,
    "activation": lambda text: text,
    "ints": lambda text: tuple(_to_int(p) for p in _items(text)),
    "floats": lambda text: tuple(_to_float(p) for p in _items(text)),
}

_KIND_WORDS = {"int": "an integer", "float": "a number", "float_int": "a number",
               "ints": "a comma-separated list of integers",
               "floats": "a comma-separated list of numbers"}


def _typed_default(opt: Opt, dialect: str, opts: Mapping[str, Any],
                   net: Mapping[str, Any]) -> Any:
    value = opt.default_for(dialect, opts, net)
    kind = opt.kind_for(dialect)
    if value is None:
        return None
    if kind == "float":
        return float(np.float32(value))
    if kind in ("int", "float_int"):
        return int(value)
    if kind == "floats":
        return tuple(float(np.float32(v)) for v in value)
    return value


def _build_section(raw: _RawSection, dialect: str, file: str, first: bool,
                   net: Mapping[str, Any]) -> Section:
    kind = SECTION_ALIASES.get(raw.name)
    if kind is None:
        raise CfgError(f"unknown section [{raw.name}]", file, raw.line)
    if first and kind != "net":
        raise CfgError(f"the first section must be [net] (or [network]), got [{raw.name}]",
                       file, raw.line)
    if not first and kind == "net":
        raise CfgError(f"[{raw.name}] may only be the first section", file, raw.line)
    if dialect not in section_dialects(kind):
        other = section_dialects(kind)[0]
        raise CfgError(f"unknown section [{raw.name}] for {dialect} darknet (only {other}'s "
                       f"parser knows it)", file, raw.line)

    given: dict[str, int] = {}
    values: dict[str, str] = {}
    repeated: list[tuple[str, str, int]] = []
    for key, value, lineno in raw.items:
        if key in given:
            repeated.append((key, value, lineno))
        else:
            given[key] = lineno
            values[key] = value

    options: dict[str, Any] = {}
    read: set[str] = set()
    for key, opt in section_schema(kind).items():
        if opt.reads(dialect, options) and key in values:
            options[key] = _convert(opt, dialect, raw, key, values[key], given[key], file)
            read.add(key)
        else:
            options[key] = _typed_default(opt, dialect, options, net)
    unused = {k: v for k, v in values.items() if k not in read}
    return Section(kind, raw.line, options, given, unused, file, raw.name, repeated,
                   dict(options))


def _convert(opt: Opt, dialect: str, raw: _RawSection, key: str, value: str, line: int,
             file: str) -> Any:
    kind = opt.kind_for(dialect)
    try:
        converted = _CONVERT[kind](value)
    except _BadValue as exc:
        raise CfgError(f"[{raw.name}] {key}={value}: {exc.why or 'expected ' + _KIND_WORDS[kind]}",
                       file, line) from None
    if kind == "activation" and converted not in ACTIVATIONS[dialect]:
        known = ", ".join(sorted(ACTIVATIONS[dialect]))
        raise CfgError(f"[{raw.name}] {key}={value}: unknown activation for {dialect} darknet "
                       f"(known: {known})", file, line)
    return converted


def _check_net(net: Section) -> None:
    """What darknet's parse_net_options itself rejects."""
    o = net.options
    if not o["inputs"] and not (o["height"] and o["width"] and o["channels"]):
        raise net.error("no input size: set width, height and channels (or inputs) "
                        "(darknet: 'No input parameters supplied')")
    if o["policy"] == "steps" and (o["steps"] is None or o["scales"] is None):
        raise net.error("policy=steps needs both steps= and scales= (darknet: 'STEPS policy "
                        "must have steps and scales in cfg file')", "policy")


def parse_cfg(source: str | os.PathLike | Iterable[str], dialect: str = "auto",
              name: str | None = None, warn_unused: bool = True) -> Cfg:
    """Parse a cfg file (path) or cfg text (a string with a newline, or lines).

    ``dialect``: ``"pjreddie"``, ``"alexeyab"`` or ``"auto"`` (AlexeyAB when the
    file uses a section, option, activation or value only AlexeyAB's parser
    knows, pjreddie otherwise).  ``name`` labels text sources in messages.
    With ``warn_unused`` every key darknet would report with ``option_unused``
    gives an :class:`UnusedOptionWarning`.
    """
    if isinstance(source, (str, os.PathLike)) and "\n" not in str(source) and (
            os.path.exists(source) or str(source).endswith(".cfg")):
        file = os.fspath(source)
        try:
            with open(file, "rb") as fh:
                text = fh.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise CfgError(f"cannot read cfg: {exc.strerror}", file) from None
    else:
        text = source if isinstance(source, str) else "\n".join(
            line[:-1] if line.endswith("\n") else line for line in source)
        file = name or "<string>"
    if dialect != "auto" and dialect not in DIALECTS:
        raise CfgError(f"unknown dialect {dialect!r}; expected 'auto' or one of {DIALECTS}", file)
    raw = _read_raw(text, file)
    if not raw:
        raise CfgError("no sections: a cfg starts with [net]", file, 1)
    if dialect == "auto":
        dialect = _detect_dialect(raw)
    net = _build_section(raw[0], dialect, file, True, {})
    _check_net(net)
    sections = [net] + [_build_section(r, dialect, file, False, net.options) for r in raw[1:]]
    if warn_unused:
        _warn_unused(sections, dialect, file)
    return Cfg(sections, dialect, file)


def _warn_unused(sections: list[Section], dialect: str, file: str) -> None:
    for s in sections:
        for key, value in s.unused.items():
            warnings.warn(f"{file}:{s.given[key]}: [{s.name}] {key}={value} is not read by "
                          f"{dialect} darknet (unused field)", UnusedOptionWarning, stacklevel=3)
        for key, value, line in s.repeated:
            warnings.warn(f"{file}:{line}: [{s.name}] {key}={value} repeats the key of line "
                          f"{s.given[key]}; darknet reads only the first", UnusedOptionWarning,
                          stacklevel=3)


# ---------------------------------------------------------------- writing

def _format(value: Any, kind: str) -> str:
    if isinstance(value, tuple):
        item = "float" if kind == "floats" else "int"
        return ",".join(_format(v, item) for v in value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        # the shortest text that reads back as the same float32
        return np.format_float_positional(np.float32(value), unique=True, trim="-")
    return str(value)


def _section_lines(s: Section, dialect: str, net: Mapping[str, Any]) -> list[str]:
    schema = section_schema(s.type)
    out = [f"[{s.name or s.type}]"]
    for key in s.given:
        if key in s.unused:
            out.append(f"{key}={s.unused[key]}")
        else:
            out.append(f"{key}={_format(s.options[key], schema[key].kind_for(dialect))}")
    for key, value, _ in s.repeated:
        out.append(f"{key}={value}")
    # options the file did not set but code changed: write them if darknet reads them
    resolved: dict[str, Any] = {}
    for key, opt in schema.items():
        value = s.options.get(key)
        takes = opt.reads(dialect, resolved)
        before = (s.parsed[key] if key in s.parsed
                  else _typed_default(opt, dialect, resolved, net))
        if takes and key not in s.given and value is not None and not _same(value, before):
            out.append(f"{key}={_format(value, opt.kind_for(dialect))}")
        resolved[key] = value
    return out


def write_cfg(cfg: Cfg) -> str:
    """cfg text for ``cfg``: the keys the original gave, in their original order (numbers
    as parsed, unused keys verbatim), then any option set in code to a non-default value."""
    lines: list[str] = []
    net = cfg.net.options if cfg.sections else {}
    for s in cfg.sections:
        lines.extend(_section_lines(s, cfg.dialect, net))
        lines.append("")
    return "\n".join(lines)


def save_cfg(cfg: Cfg, path: str | os.PathLike) -> None:
    """Write ``cfg`` to ``path`` atomically."""
    from .files import atomic_write
    atomic_write(path, write_cfg(cfg).encode())

