"""One voice for what cnnpipe tells a person: tables and progress on stdout, one-line warnings and notes on
stderr, and under DDP only global rank 0 speaks (every rank runs the same code; one copy of each line is enough).

What it shows is text, whoever wrote it: a run name, a file name or a message quoting one is never read as Rich
markup or emoji, and its control characters are shown escaped (`\\x1b`), as an ESC or BEL from a store would
retitle or recolour the terminal. Files written with --output keep the real characters where their format can.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.text import Text

from cnnpipe.uris import mask_uri

# C0 but newline and tab, DEL, C1, the bidi embeddings, overrides and isolates (they reorder the text after
# them), and lone surrogates (the bytes of a file name that are no UTF-8, which stdout cannot encode)
_CONTROL = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNPRINTABLE = {True: re.compile(f"[{_CONTROL}]"), False: re.compile(f"[\n\t{_CONTROL}]")}
_SIZES = ("COLUMNS", "LINES")


def printable(text: str, multiline: bool = False) -> str:
    """`text` from a user or a store, safe to show: control characters escaped as Python writes them (`\\x1b`,
    `\\u202e`); newlines and tabs too unless `multiline`, so that a name stays on its line."""
    return _UNPRINTABLE[multiline].sub(lambda found: found[0].encode("unicode_escape").decode(), text)


def one_line(message: object) -> str:
    """A message as one printable line: each run of whitespace (a library's wrapped message) one space, and any
    URI in it without its password (a library's error may quote one)."""
    return printable(mask_uri(" ".join(str(message).split())))


def _rank_zero() -> bool:
    """Lightning knows the rank; a process that has not imported it trains nothing and is the only one."""
    lightning = sys.modules.get("lightning_fabric.utilities.rank_zero")
    return lightning is None or lightning.rank_zero_only.rank == 0


class _Environment(Mapping[str, str]):
    """os.environ as Rich reads it, less a COLUMNS or LINES that is no positive whole number: Rich takes
    COLUMNS=0 for a width of 0 and prints nothing, and fails on a digit int() cannot read (COLUMNS=²)."""

    def __getitem__(self, key: str) -> str:
        value = os.environ[key]
        if key in _SIZES and not (value.isascii() and value.isdigit() and int(value) > 0):
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (key for key in os.environ if key in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Console(Console):
    """Rich without markup, emoji or highlighting (any string may quote a user's), with control characters
    escaped in whatever it renders (a table cell is a Text, not a string), where only rank 0 prints."""

    def __init__(self, **options: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, _environ=_Environment(), **options)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if _rank_zero():
            super().print(*objects, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Escaped before Rich measures it, so that a line or cell is as wide as what is shown."""
        return super().render_str(printable(text, multiline=True), **kwargs)

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):  # a control segment is Rich's own cursor movement
            yield segment if segment.control else segment._replace(text=printable(segment.text, multiline=True))


console = _Console()
stderr_console = _Console(stderr=True)  # where stdout carries a CSV or JSON


def write_out(text: str) -> None:
    """A CSV, JSON or Markdown on stdout, control characters escaped: a file written with --output keeps them."""
    sys.stdout.write(printable(text, multiline=True))


def _line(kind: str, message: str) -> None:
    if _rank_zero():  # plain print: rich would wrap a long line at the terminal's width
        print(f"{kind}: {one_line(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something went wrong or looks wrong, and cnnpipe goes on: `warning: ...`, one line."""
    _line("warning", message)


def note(message: str) -> None:
    """Something cnnpipe did that a person should know of (a store it repointed): `note: ...`, one line."""
    _line("note", message)
