"""Stage outputs are replaced whole or not at all: a failed run never loses what an earlier run produced."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _old(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}-old")


def recover(directory: Path) -> None:
    """Tidies what a killed run of `replaced_atomically(directory)` left beside it: the previous `directory` is
    moved back if the kill came between its two renames, and staging folders (`.NAME-*`) are removed."""
    directory = Path(directory)
    if _old(directory).is_dir() and not directory.exists():
        _old(directory).rename(directory)
    for leftover in directory.parent.glob(f".{glob.escape(directory.name)}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def replaced_atomically(directory: Path) -> Iterator[Path]:
    """Yields an empty folder beside `directory` to write into. When the block succeeds it takes the place of
    `directory` (the old one is removed only once the new one is in); when it fails, `directory` is untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; this is an ordinary output folder
    old = _old(directory)
    try:
        yield staging
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


def write_atomically(path: Path, text: str) -> Path:
    """Writes `text` to a temporary file beside `path` and renames it into place: readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@contextmanager
def replaced_files(folder: Path) -> Iterator[Path]:
    """Yields an empty staging folder inside `folder`; when the block succeeds every file written there
    replaces its namesake in `folder`, when it fails none does (the staging folder is removed either way)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".staging-*"):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        yield staging
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
