"""Progress bars for long work (detect on a folder, map, dataset generation).

A tqdm bar with rate and ETA on stderr, shown only to a person watching: on
when stderr is a terminal (unless told), so logs, pipes and ``--json -`` on
stdout stay exactly what they were.  Lines printed while a bar is up go through
:func:`echo`, which lifts the bar, prints, and redraws it.
"""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool | None = None) -> tqdm:
    """A bar over ``total`` items; ``enabled=None``: only when stderr is a terminal.
    A disabled bar accepts the same calls and draws nothing."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def echo(text: str, err: bool = False) -> None:
    """``print(text)`` to stdout (stderr with ``err``) without tearing a bar."""
    tqdm.write(text, file=sys.stderr if err else sys.stdout)
