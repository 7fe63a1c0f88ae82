"""``darknet-py <command>`` (also ``python -m darknet_py <command>``).

Each command lives in its own module ``darknet_py.cli.<name>`` exposing
``HELP`` (one line) and ``main(argv=None) -> int``; they are imported only
when run, so one broken optional dependency never breaks the others.
"""
from __future__ import annotations

import importlib
import sys

from ..errors import DarknetError

COMMANDS: dict[str, str] = {
    "detect": "darknet_py.cli.detect",
    "convert": "darknet_py.cli.convert",
    "partial": "darknet_py.cli.partial",
    "inspect": "darknet_py.cli.inspect",
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
    try:
        return int(module.main(rest) or 0)
    except DarknetError as exc:
        print(f"darknet-py {name}: error: {exc}", file=sys.stderr)
        return 1
