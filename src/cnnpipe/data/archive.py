"""Archives of image folders, from a path or a URL.

A download is cached only once its member list reads. Before anything is extracted, the headers must show every
member inside the target and the whole within data.limits; extraction goes to a staging folder that takes the
place of the previous extraction only when complete.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from rich.progress import wrap_file

from cnnpipe.config import ARCHIVE_SUFFIXES, LimitsConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import replaced_atomically

# What tarfile and zipfile raise for a damaged archive; gzip's error is an OSError, so it is caught first.
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, lzma.LZMAError, EOFError)
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
Bundle = zipfile.ZipFile | tarfile.TarFile


class UnreadableArchive(CnnpipeError):
    """A damaged archive. `reason` lets a caller name it differently: the URL rather than its cached copy."""

    def __init__(self, name: str, exc: BaseException):
        self.reason = str(exc) or type(exc).__name__
        super().__init__(f"data.path: {name} is not a readable archive: {self.reason}")


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _suffix(location: str) -> str:
    name = PurePosixPath(location.split("?")[0]).name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise CnnpipeError(f"data.path: {location!r} is not an archive; valid suffixes: {', '.join(ARCHIVE_SUFFIXES)}")


def _bundle(archive: Path, suffix: str) -> Bundle:
    return zipfile.ZipFile(archive) if suffix == ".zip" else tarfile.open(archive)


def _headers(bundle: Bundle) -> Iterable[tuple[str, int]]:
    """(name, size) of every member from the headers alone: a zip's central directory, or a tar's member headers
    (a .tar.gz stream is decompressed to reach them, but nothing is written)."""
    if isinstance(bundle, zipfile.ZipFile):
        return ((info.filename, info.file_size) for info in bundle.infolist())
    return ((member.name, member.size) for member in bundle)


def _check_readable(archive: Path, suffix: str, name: str) -> None:
    try:
        with _bundle(archive, suffix) as bundle:
            for _ in _headers(bundle):
                pass
    except DAMAGED as exc:
        raise UnreadableArchive(name, exc) from None


def _download(location: str, target: Path) -> None:
    """Downloads to TARGET.part, renamed to `target` only when complete and readable: a broken download (an error
    page, a cut connection) is never cached."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
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
    try:
        _check_readable(partial, _suffix(location), location)
    except UnreadableArchive as exc:
        partial.unlink()
        raise CnnpipeError(
            f"data.path: {location} did not download as a readable {_suffix(location)} archive ({exc.reason}); "
            "nothing was cached"
        ) from None
    partial.rename(target)


def fetch_archive(location: str, cache_dir: Path) -> Path:
    """The local archive file: `location` itself, or its download (kept in the cache for the next run)."""
    suffix = _suffix(location)
    if not _is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise CnnpipeError(f"data.path: archive {path} does not exist")
        return path
    target = cache_dir / "archives" / f"{hashlib.sha256(location.encode()).hexdigest()[:16]}{suffix}"
    if not target.exists():
        _download(location, target)
    return target


def _refuse_outside(member: str, destination: Path, name: str) -> None:
    """zipfile and tarfile's "data" filter both quietly strip a leading '/'; a member that tries it is refused."""
    inside = (destination / member).resolve().is_relative_to(destination.resolve())
    if PurePosixPath(member).is_absolute() or not inside:
        raise CnnpipeError(
            f"data.path: {name}: archive member {member!r} would be extracted outside the target folder; refused"
        )


def _check(members: Iterable[tuple[str, int]], destination: Path, limits: LimitsConfig, name: str) -> None:
    """Every member lands inside `destination` and the whole stays within data.limits, before anything is
    written: a 1 MiB zip can expand to a gigabyte, a small tar to a million files. The running totals stop at the
    first member past a limit: a .tar.gz is decompressed to reach each header, and a bomb's rest never is."""
    count = total = 0
    for member, size in members:
        _refuse_outside(member, destination, name)
        count, total = count + 1, total + size
        if count > limits.max_archive_files:
            raise CnnpipeError(
                f"data.path: {name} holds more than {limits.max_archive_files:,} members, the limit set by "
                "data.limits.max_archive_files; raise data.limits.max_archive_files to extract it"
            )
        if total > limits.max_archive_bytes:
            raise CnnpipeError(
                f"data.path: {name} expands to at least {total:,} bytes, more than data.limits.max_archive_bytes "
                f"({limits.max_archive_bytes:,}); raise data.limits.max_archive_bytes to extract it"
            )


def _refuse_unreadable_members(bundle: zipfile.ZipFile, name: str) -> None:
    """zipfile cannot decrypt, nor read deflate64 and other methods: say so by name, before extracting."""
    for info in bundle.infolist():
        if info.flag_bits & 0x1:
            raise CnnpipeError(
                f"data.path: {name}: member {info.filename!r} is encrypted; cnnpipe reads only unencrypted "
                "archives (extract it yourself and set data.source: imagefolder)"
            )
        if info.compress_type not in ZIP_METHODS:
            raise CnnpipeError(
                f"data.path: {name}: member {info.filename!r} uses zip compression method {info.compress_type}, "
                f"which Python cannot read; supported: {', '.join(ZIP_METHODS.values())} (repack it with deflate)"
            )


def _extract_all(bundle: Bundle, destination: Path, name: str) -> None:
    if isinstance(bundle, zipfile.ZipFile):
        _refuse_unreadable_members(bundle, name)
        bundle.extractall(destination)
        return
    try:
        bundle.extractall(destination, filter="data")  # refuses links that point outside, device files
    except tarfile.FilterError as exc:
        raise CnnpipeError(
            f"data.path: {name}: archive member {exc.tarinfo.name!r} refused: {exc}; only plain files and folders "
            "inside the archive are extracted"
        ) from None


def extract(archive: Path, destination: Path, limits: LimitsConfig, name: str | None = None) -> Path:
    """Extracts into a staging folder that replaces `destination` when complete, and returns the image folder's
    root: the single top-level folder when the archive holds just one. Errors name `name`, the archive as
    data.path gives it (default: its path)."""
    name = name or str(archive)
    try:
        with replaced_atomically(destination) as staging, _bundle(archive, _suffix(archive.name)) as bundle:
            _check(_headers(bundle), staging, limits, name)
            _extract_all(bundle, staging, name)
    except DAMAGED as exc:
        raise UnreadableArchive(name, exc) from None
    except OSError as exc:
        raise CnnpipeError(
            f"data.path: {name}: extracting into {destination} failed: {exc}; check the archive, and that "
            "data.cache_dir has space"
        ) from None
    entries = [entry for entry in destination.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else destination


def unpack(location: str, cache_dir: Path, limits: LimitsConfig) -> Path:
    """The image folder inside the archive at `location` (data.path: a path or a URL), extracted into the cache.
    A cached download that turns out damaged is deleted and named by its URL: the next run downloads it again."""
    archive = fetch_archive(location, cache_dir)
    key = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:16]
    try:
        return extract(archive, cache_dir / "extracted" / key, limits, location)
    except UnreadableArchive as exc:
        if not _is_url(location):
            raise
        archive.unlink(missing_ok=True)
        raise CnnpipeError(
            f"data.path: the download of {location} is not a readable archive ({exc.reason}); deleted it from "
            "data.cache_dir, so the next run downloads it again"
        ) from None
