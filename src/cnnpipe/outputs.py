"""Stage outputs are replaced whole or not at all: a failed run never loses what an earlier run produced."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(directory: Path) -> Iterator[Path]:
    """Yields an empty folder beside `directory` to write into. When the block succeeds it takes the place of
    `directory` (the old one is removed only once the new one is in); when it fails, `directory` is untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; this is an ordinary output folder
    old = directory.with_name(f".{directory.name}-old")
    try:
        yield staging
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        try:
            staging.rename(directory)
        except OSError:
            if old.exists():
                old.rename(directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
