"""What `cnnpipe predict` reads: image files, folders of them at any depth, and archives (.zip, .tar, .tar.gz).

An image is known by its suffix, as `pull` knows one in an image folder; hidden files and folders (macOS's
._NAME.png and __MACOSX, .ipynb_checkpoints) are not images. Archives are extracted by `pull`'s own code, with
its checks (members outside the folder, data.limits), into a temporary folder the caller owns.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cnnpipe.config import ARCHIVE_SUFFIXES, LimitsConfig
from cnnpipe.console import warn
from cnnpipe.data.archive import extract
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import identity

KEY = "INPUT"  # the argument errors name


@dataclass(frozen=True)
class ImageFile:
    name: str  # as reported: the path as given, or ARCHIVE/MEMBER
    path: Path  # where it is read from


@dataclass(frozen=True)
class Found:
    images: list[ImageFile]
    broken: list[tuple[str, str]]  # (name, reason): found, but no file to read (a broken link, a named pipe)
    skipped: dict[str, int]  # folder or archive -> its non-image files, skipped


def image_suffixes() -> set[str]:
    return {suffix.lower() for suffix in Image.registered_extensions()}


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _not_regular(path: Path) -> str | None:
    """Why `path` is no file to read, or None, from its status alone: opening a named pipe waits for a writer,
    forever, and a device reads on without end."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return "a broken symbolic link" if path.is_symlink() and not path.exists() else exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({kind})"


def _files(folder: Path, shown: str) -> list[Path]:
    """Every file under `folder`, sorted, hidden ones left out. Links to folders are followed, as `pull` follows
    a linked class folder; a link back to a folder it is in would be walked forever: it is skipped with a warning."""
    files, pending = [], [(folder, {identity(folder)})]
    while pending:
        current, ancestors = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = [Path(entry.path) for entry in listing if not entry.name.startswith(".")]
            for entry in entries:
                if entry.name == "__MACOSX":
                    continue
                if not entry.is_dir():
                    files.append(entry)
                elif (seen := identity(entry)) in ancestors:
                    name = f"{shown.rstrip('/')}/{entry.relative_to(folder).as_posix()}"
                    warn(f"{KEY}: skipped {name}: a link to {os.path.realpath(entry)}, a folder it is in (a loop)")
                else:
                    pending.append((entry, ancestors | {seen}))
        except OSError as exc:
            raise CnnpipeError(f"{KEY}: cannot list {exc.filename or current}: {exc.strerror or exc}") from None
    return sorted(files)


def _walk(folder: Path, shown: str, images: list[ImageFile], found: Found) -> None:
    """Every image under `folder`, sorted, reported as `shown`/RELATIVE."""
    suffixes = image_suffixes()
    skipped = 0
    for entry in _files(folder, shown):
        name = f"{shown.rstrip('/')}/{entry.relative_to(folder).as_posix()}"
        if entry.suffix.lower() not in suffixes:
            skipped += 1
        elif reason := _not_regular(entry):
            found.broken.append((name, reason))
        else:
            images.append(ImageFile(name, entry))
    if skipped:
        found.skipped[shown] = skipped


def collect(inputs: list[str], scratch: Path, limits: LimitsConfig) -> Found:
    """The images named by `inputs`, in the order given (a folder's and an archive's sorted). A missing input, a
    file that is neither an image nor an archive, and inputs that hold no image at all are errors; a folder's
    other files are skipped and counted."""
    found = Found([], [], {})
    suffixes = image_suffixes()
    for number, given in enumerate(inputs):
        path = Path(given).expanduser()
        images: list[ImageFile] = []
        if path.is_dir():
            _walk(path, given, images, found)
        elif not path.exists():
            raise CnnpipeError(f"{KEY}: {given} does not exist")
        elif reason := _not_regular(path):  # listed and skipped, as an unreadable image is
            found.broken.append((given, reason))
        elif _is_archive(path):
            try:  # names are the members' own: ARCHIVE/FOLDER/NAME.png, so the whole extraction is walked
                extract(path, scratch / str(number), limits, given)
            except CnnpipeError as exc:  # pull's words name its own setting
                raise CnnpipeError(str(exc).replace("data.path: ", f"{KEY}: ", 1)) from None
            _walk(scratch / str(number), given, images, found)
        elif path.suffix.lower() in suffixes:
            images.append(ImageFile(given, path))
        else:
            raise CnnpipeError(
                f"{KEY}: {given} is neither an image (.png, .jpg, .tif, .webp, ...: a suffix PIL reads) nor an archive "
                f"({', '.join(ARCHIVE_SUFFIXES)}); name image files, folders or archives"
            )
        found.images.extend(images)
    if not found.images and not found.broken:
        where = ", ".join(inputs)
        others = sum(found.skipped.values())
        raise CnnpipeError(
            f"{KEY}: no image files in {where}"
            + (
                f" (only {others} other file(s); images are known by their suffix, such as .png or .jpg)"
                if others
                else ""
            )
        )
    return found
