"""One voice for what cnnpipe tells a person: tables and progress on stdout, one-line warnings and notes on
stderr, and under DDP only global rank 0 speaks (every rank runs the same code; one copy of each line is enough).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console


def _rank_zero() -> bool:
    """Lightning knows the rank; a process that has not imported it trains nothing and is the only one."""
    lightning = sys.modules.get("lightning_fabric.utilities.rank_zero")
    return lightning is None or lightning.rank_zero_only.rank == 0


class _RankZeroConsole(Console):
    def print(self, *objects: Any, **kwargs: Any) -> None:
        if _rank_zero():
            super().print(*objects, **kwargs)


console = _RankZeroConsole()


def _line(kind: str, message: str) -> None:
    if _rank_zero():  # plain print: rich would wrap a long line at the terminal's width
        print(f"{kind}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something went wrong or looks wrong, and cnnpipe goes on: `warning: ...`, one line."""
    _line("warning", message)


def note(message: str) -> None:
    """Something cnnpipe did that a person should know of (a store it repointed): `note: ...`, one line."""
    _line("note", message)
