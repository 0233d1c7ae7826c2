"""Archives of image folders, from a path or a URL, extracted so that no member lands outside the target."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from rich.progress import wrap_file

from cnnpipe.errors import CnnpipeError

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _suffix(location: str) -> str:
    name = PurePosixPath(location.split("?")[0]).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise CnnpipeError(f"data.path: {location!r} is not an archive; valid suffixes: {', '.join(SUFFIXES)}")


def fetch_archive(location: str, cache_dir: Path) -> Path:
    """The local archive file: `location` itself, or its download (kept in the cache for the next run)."""
    suffix = _suffix(location)
    if not _is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise CnnpipeError(f"data.path: archive {path} does not exist")
        return path
    target = cache_dir / "archives" / f"{hashlib.sha256(location.encode()).hexdigest()[:16]}{suffix}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")  # renamed only when complete: no half archive is reused
    try:
        with urllib.request.urlopen(location, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0)
            with (
                wrap_file(response, total=size, description=f"Downloading {location}") as reading,
                partial.open("wb") as handle,
            ):
                shutil.copyfileobj(reading, handle)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        http = isinstance(exc, urllib.error.HTTPError)
        reason = f"HTTP {exc.code} {exc.reason}" if http else getattr(exc, "reason", exc)
        raise CnnpipeError(f"data.path: could not download {location}: {reason}") from None
    partial.rename(target)
    return target


def _refuse_outside(name: str, destination: Path) -> None:
    """zipfile and tarfile's "data" filter both quietly strip a leading '/'; a member that tries it is refused."""
    inside = (destination / name).resolve().is_relative_to(destination.resolve())
    if PurePosixPath(name).is_absolute() or not inside:
        raise CnnpipeError(f"data.path: archive member {name!r} would be extracted outside the target folder; refused")


def _extract_members(archive: Path, destination: Path) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                _refuse_outside(name, destination)
            bundle.extractall(destination)
        return
    with tarfile.open(archive) as bundle:
        for member in bundle.getmembers():
            _refuse_outside(member.name, destination)
        try:
            bundle.extractall(destination, filter="data")  # refuses links that point outside, device files
        except tarfile.FilterError as exc:
            raise CnnpipeError(
                f"data.path: archive member {exc.tarinfo.name!r} refused: {exc}; only plain files and folders "
                "inside the archive are extracted"
            ) from None


def extract(archive: Path, destination: Path) -> Path:
    """Extracts into `destination` (replacing an earlier extraction) and returns the image folder's root:
    the single top-level folder when the archive holds just one."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    try:
        _extract_members(archive, destination)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise CnnpipeError(f"data.path: {archive} is not a readable archive: {exc}") from None
    except CnnpipeError:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    entries = [entry for entry in destination.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else destination
