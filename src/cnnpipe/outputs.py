"""Stage outputs are replaced whole or not at all: a failed run never loses what an earlier run produced."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

# A full disk, a quota and a file size limit (`ulimit -f`) fail a write() with an OSError that names no file:
# the helpers below give it the file they were writing, so the CLI names it instead of failing as a bug.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def _naming(target: Path, staging: Path | None = None) -> Iterator[None]:
    """Names `target` in a full disk's OSError; with `staging`, the file last written there, under its place in
    `target` (plots/predictions.csv, not the staging folder's random name)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno in DISK_FULL:
            exc.filename = str(_last_written(staging, target) if staging else target)
        raise


def _last_written(staging: Path, target: Path) -> Path:
    """The file the failed write was filling: the newest in `staging` (they are written one after another)."""
    files = [path for path in staging.rglob("*") if path.is_file()]
    newest = max(files, key=lambda path: path.stat().st_mtime_ns, default=None)
    return target / newest.relative_to(staging) if newest else target


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
        with _naming(directory, staging):
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
    try:
        with _naming(path):
            tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # what a full disk left of it
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
        with _naming(folder, staging):
            yield staging
        for path in staging.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


Identity = tuple[int, int]  # (st_dev, st_ino): one file, whatever its name (a hard link has several)


def pipeline_outputs(dvc_file: Path = Path("dvc.yaml")) -> list[Path]:
    """The outs, metrics and plots of every stage of `dvc_file`, none without one (a folder that is no DVC
    repository); an unreadable dvc.yaml is DVC's to report, and the caller's own list still holds."""
    try:
        stages = (yaml.safe_load(dvc_file.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    entries = [
        entry
        for stage in stages.values()
        if isinstance(stage, dict)
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind) or []
    ]
    return [Path(entry if isinstance(entry, str) else next(iter(entry))) for entry in entries if entry]


def identity(path: Path | str) -> Identity:
    """One file or folder whatever its name: a hard link's other name, a linked folder met again (a loop)."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _identity(path: Path) -> Identity | None:
    try:
        return identity(path)
    except OSError:
        return None


def _named(folder: Path, identity: Identity) -> Path | None:
    """The file under `folder` (or `folder` itself) that is `identity`: the other name of a hard link."""
    if _identity(folder) == identity:
        return folder
    for parent, _, files in os.walk(folder):
        for name in files:
            if _identity(Path(parent, name)) == identity:
                return Path(parent, name)
    return None


def overwrite_problem(path: Path, inputs: Iterable[tuple[str, Path]], produced: Iterable[Path]) -> str | None:
    """Why writing `path` would destroy what a command reads or what the pipeline produced, or None: `path` is
    one of `inputs` ((argument, path) pairs) or lies in one of `produced`, after symbolic links and `..` are
    resolved, or is a hard link to either (the same inode: a write in place changes both names)."""
    target = Path(os.path.realpath(path))
    status = os.stat(target) if target.is_file() else None
    linked = (status.st_dev, status.st_ino) if status and status.st_nlink > 1 else None
    shown = f"{path} (a link to {os.path.relpath(target)})" if target != Path(os.path.abspath(path)) else path
    for name, given in inputs:
        if target == Path(os.path.realpath(given)):
            return f"{shown} is {name} itself, which this command reads"
        if linked and _identity(given) == linked:
            return f"{shown} is {name} {given} under another name (a hard link), which this command reads"
    kind = "an output of the pipeline (a stage output or the MLflow store)"
    for output in produced:
        real = Path(os.path.realpath(output))
        if target == real:
            return f"{shown} is {kind}"
        if real in target.parents:
            return f"{shown} is inside {output}, {kind}"
        if linked and (other := _named(output, linked)):
            return f"{shown} is {other} under another name (a hard link), {kind}"
    return None
