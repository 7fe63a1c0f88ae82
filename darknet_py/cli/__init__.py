"""``darknet-py <command>`` (also ``python -m darknet_py <command>``).

Each command lives in its own module ``darknet_py.cli.<name>`` exposing
``HELP`` (one line) and ``main(argv=None) -> int``; they are imported only
when run, so one broken optional dependency never breaks the others.

:func:`main` turns every way a command can stop into one line on stderr and an
exit code, as Unix tools do: bad input (a :class:`DarknetError` or an
``OSError`` on a named file) -> ``darknet-py <cmd>: error: ...``, exit 1;
Ctrl-C -> exit 130; a reader that closed the pipe (``... --json | head``) ->
a quiet exit 141 (128 + SIGPIPE, what a shell reports for a tool SIGPIPE
killed).  darknet_py's own warnings print as ``darknet-py <cmd>: warning: ...``.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings

from ..errors import DarknetError

COMMANDS: dict[str, str] = {
    "detect": "darknet_py.cli.detect",
    "convert": "darknet_py.cli.convert",
    "partial": "darknet_py.cli.partial",
    "inspect": "darknet_py.cli.inspect_cmd",
    "map": "darknet_py.cli.map",
    "train": "darknet_py.cli.train",
}


def _usage() -> str:
    lines = ["usage: darknet-py <command> [options]", "", "commands:"]
    for name, mod in COMMANDS.items():
        try:
            helptext = importlib.import_module(mod).HELP
        except Exception:  # a command whose module is missing still gets listed
            helptext = ""
        lines.append(f"  {name:10s}{helptext}")
    lines.append("\n'darknet-py <command> --help' for a command's options.")
    return "\n".join(lines)


#: exit codes, as a shell reports them for a tool stopped by the signal
EXIT_INTERRUPTED = 128 + 2   # SIGINT
EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE


def _one_line_warnings(name: str):
    """A ``warnings.showwarning`` that prints darknet_py's warnings as one line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("darknet_py"):
            print(f"darknet-py {name}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not
    raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"darknet-py: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    saved = warnings.showwarning
    warnings.showwarning = _one_line_warnings(name)
    try:
        code = int(module.main(rest) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"darknet-py {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DarknetError as exc:
        print(f"darknet-py {name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file we were told to read or write
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"darknet-py {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = saved
