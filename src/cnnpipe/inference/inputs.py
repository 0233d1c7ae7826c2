"""What `cnnpipe predict` reads: image files, folders of them at any depth, and archives (.zip, .tar, .tar.gz).

An image is known by its suffix, as `pull` knows one in an image folder; hidden files and folders (macOS's
._NAME.png and __MACOSX, .ipynb_checkpoints) are not images. Archives are extracted by `pull`'s own code, with
its checks (members outside the folder, data.limits), into a temporary folder the caller owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cnnpipe.config import ARCHIVE_SUFFIXES, LimitsConfig
from cnnpipe.data.archive import extract
from cnnpipe.errors import CnnpipeError

KEY = "INPUT"  # the argument errors name


@dataclass(frozen=True)
class ImageFile:
    name: str  # as reported: the path as given, or ARCHIVE/MEMBER
    path: Path  # where it is read from


@dataclass(frozen=True)
class Found:
    images: list[ImageFile]
    broken: list[tuple[str, str]]  # (name, reason): found, but no file to read (a broken link)
    skipped: dict[str, int]  # folder or archive -> its non-image files, skipped


def image_suffixes() -> set[str]:
    return {suffix.lower() for suffix in Image.registered_extensions()}


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _walk(folder: Path, shown: str, images: list[ImageFile], found: Found) -> None:
    """Every image under `folder`, sorted, reported as `shown`/RELATIVE."""
    suffixes = image_suffixes()
    try:
        entries = sorted(folder.rglob("*"))
    except OSError as exc:
        raise CnnpipeError(f"{KEY}: cannot list {exc.filename or folder}: {exc.strerror or exc}") from None
    skipped = 0
    for entry in entries:
        relative = entry.relative_to(folder)
        if any(part.startswith(".") or part == "__MACOSX" for part in relative.parts) or entry.is_dir():
            continue
        name = f"{shown.rstrip('/')}/{relative.as_posix()}"
        if entry.suffix.lower() not in suffixes:
            skipped += 1
        elif not entry.is_file():
            found.broken.append((name, "a broken symbolic link" if entry.is_symlink() else "not a regular file"))
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
