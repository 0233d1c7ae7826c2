"""Fault injection for `cnnpipe pull`: every bad image, archive, download or folder is refused in one line that
names it, and the store an earlier real pull made in data/pulled stays as it was.

Every case runs the real `cnnpipe` entry point (tests/faults.py) on real files written with PIL, zipfile and
tarfile, in a copy of one folder where a good pull has already run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.faults import invoke, refused_and_kept
from tests.helpers import REPO, write_params
from tests.images import bomb_png, make_archive, make_image_folder, patch_zip_member, zip_bomb


def write_pull_params(root: Path, **data) -> None:
    """params.yaml in `root`: the repository's, with an 8 x 8 image folder source and `data` on top."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"source": "imagefolder", "path": str(root / "pets"), "image_size": [8, 8], **data})
    write_params(root / "params.yaml", raw)


def pulled(root: Path) -> None:
    result = invoke("pull", cwd=root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A folder with `pets/` (2 classes x 6 images) and the data/pulled that a real `cnnpipe pull` made of it."""
    root = tmp_path_factory.mktemp("good")
    make_image_folder(root / "pets", per_class=6, size=(8, 8))
    write_pull_params(root)
    pulled(root)
    return root


@pytest.fixture
def root(good, tmp_path) -> Path:
    shutil.copytree(good, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m http.server` on 127.0.0.1 serving a folder: (folder, base URL)."""
    folder = tmp_path_factory.mktemp("served")
    command = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = process.stdout.readline().split(" port ")[1].split()[0]  # "Serving HTTP on 127.0.0.1 port N (...)"
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def refused(root: Path, *names: str, **data) -> str:
    """`cnnpipe pull` with `data` in data.*: one line naming every one of `names`, data/pulled untouched."""
    write_pull_params(root, **data)
    return refused_and_kept(root, "pull", names=names)


def cut(path: Path) -> Path:
    """The file with its second half gone, as an interrupted copy leaves it."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def noise(path: Path, mode: str = "RGB", size: int = 64) -> Path:
    """An image of random pixels: big enough that half of the file lacks real image data."""
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


# ---- images ---------------------------------------------------------------------------------------------


def test_an_image_mode_without_a_known_range_is_refused(root):
    Image.new("LAB", (8, 8)).save(root / "pets/cat/lab.tif")
    refused(root, "data.path", "lab.tif", "image mode LAB is not supported; supported: 1, L")


def test_thirty_two_bit_integers_beyond_sixteen_bits_are_refused(root):
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(root / "pets/dog/wide.tif")
    refused(root, "data.path", "wide.tif", "image mode I holds values 70000..70000")


def test_a_float_image_outside_zero_to_one_is_refused_with_its_range(root):
    Image.fromarray(np.linspace(0, 2.5, 64, dtype=np.float32).reshape(8, 8)).save(root / "pets/cat/float.tif")
    refused(root, "float.tif", "image mode F holds values 0..2.5; supported are 0..1")


def test_a_float_image_holding_nan_is_refused(root):
    values = np.zeros((8, 8), dtype=np.float32)
    values[3, 3] = np.nan
    Image.fromarray(values).save(root / "pets/cat/nan.tif")
    refused(root, "nan.tif", "image mode F holds values nan..nan")


def test_a_decompression_bomb_is_refused_from_its_header(root):
    bomb_png(root / "pets/cat/bomb.png", 20000, 20000)  # 48 kB that decode to 400 M pixels
    refused(root, "bomb.png", "400,000,000 pixels", "data.limits.max_image_pixels")


def test_an_image_over_a_lowered_pixel_limit_is_refused(root):
    refused(root, "data.path", "64 pixels", "max_image_pixels (50)", limits={"max_image_pixels": 50}, image_size=[7, 7])


def test_an_image_size_over_the_pixel_limit_is_refused_before_any_image_is_read(root):  # resized to it, all of them
    refused(root, "data.image_size", "max_image_pixels", image_size=[100_000, 100_000])


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_a_truncated_image_is_refused(root, name):
    cut(noise(root / "pets/dog" / name))
    refused(root, "data.path", f"cannot read image {root / 'pets/dog' / name}", "truncated")


def test_an_empty_image_file_is_refused(root):
    (root / "pets/dog/empty.png").touch()
    refused(root, "data.path", "cannot read image", "empty.png")


def test_a_class_folder_that_is_a_broken_link_is_refused(root):
    (root / "pets/emu").symlink_to(root / "gone")
    refused(root, "data.path", f"{root / 'pets/emu'} is a broken symbolic link")


def test_a_linked_subfolder_in_a_class_folder_is_pulled_with_its_images(root, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    make_image_folder(elsewhere, per_class=3, size=(8, 8))
    (root / "pets/cat/more").symlink_to(elsewhere / "cat")
    before = json.loads((root / "data/pulled/manifest.json").read_text())
    write_pull_params(root)
    pulled(root)
    after = json.loads((root / "data/pulled/manifest.json").read_text())
    assert sum(after["counts"].values()) == sum(before["counts"].values()) + 3, "FAULT-SILENT: the linked images"


def test_a_link_to_a_folder_it_is_in_is_refused(root):
    (root / "pets/cat/loop").symlink_to(root / "pets")
    refused(root, "data.path", "pets/cat/loop", "a loop")


def test_an_image_that_is_a_broken_link_is_refused(root):
    (root / "pets/cat/9.png").symlink_to(root / "gone.png")
    refused(root, "data.path", "cat/9.png is a broken symbolic link")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_image_is_refused(root):
    (root / "pets/cat/0.png").chmod(0)
    refused(root, "data.path", "cannot read image", "0.png")


# ---- archives -------------------------------------------------------------------------------------------


def archive_of_pets(root: Path, suffix: str = ".zip") -> Path:
    return make_archive(root / "pets", root / f"pets{suffix}")


def zip_of_images(root: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    """pets/ as a zip of its images alone, no folder entries: the first member is pets/cat/0.png."""
    with zipfile.ZipFile(root / "pets.zip", "w", compression) as bundle:
        for path in sorted((root / "pets").rglob("*.png")):
            bundle.write(path, path.relative_to(root))
    return root / "pets.zip"


def test_a_zip_bomb_is_refused_from_its_headers_before_extraction(root):
    bomb = zip_bomb(root / "bomb.zip")
    assert bomb.stat().st_size < 1.2 * 2**20  # 1 MiB that would expand to 1.1 GB
    refused(root, "bomb.zip", "1,153,433,600 bytes", "data.limits.max_archive_bytes", source="archive", path=str(bomb))
    assert not list((root / "data/cache/extracted").iterdir())


def test_a_limit_that_is_not_a_positive_count_is_refused(root):
    refused(
        root,
        "params.yaml: data.limits.max_archive_bytes: Input should be greater than 0",
        limits={"max_archive_bytes": 0},
    )


def test_an_archive_with_too_many_members_is_refused(root):
    tar = archive_of_pets(root, ".tar.gz")
    line = refused(
        root,
        "pets.tar.gz",
        "data.limits.max_archive_files",
        source="archive",
        path=str(tar),
        limits={"max_archive_files": 5},
    )
    assert "more than 5 members" in line


def test_an_encrypted_zip_is_refused(root):
    archive = patch_zip_member(zip_of_images(root), flag_bits=0x1)
    refused(root, "pets.zip", "member 'pets/cat/0.png' is encrypted", source="archive", path=str(archive))


def test_a_zip_member_in_deflate64_is_refused(root):
    archive = patch_zip_member(zip_of_images(root), method=9)
    refused(root, "pets.zip", "compression method 9", "supported: stored, deflate", source="archive", path=str(archive))


def test_a_zip_with_damaged_compressed_data_is_refused(root):
    archive = zip_of_images(root, zipfile.ZIP_DEFLATED)
    data = bytearray(archive.read_bytes())
    start = 30 + len("pets/cat/0.png")  # the first member's deflate stream
    data[start : start + 8] = bytes(byte ^ 0xFF for byte in data[start : start + 8])
    archive.write_bytes(bytes(data))
    refused(root, "pets.zip", "is not a readable archive", "invalid block type", source="archive", path=str(archive))


def test_a_zip_holding_a_file_and_a_folder_of_one_name_is_refused(root):
    with zipfile.ZipFile(root / "clash.zip", "w") as bundle:
        bundle.writestr("pets/cat", "a file")
        bundle.writestr("pets/cat/0.png", (root / "pets/cat/0.png").read_bytes())
    refused(root, "clash.zip", "extracting into", "failed", source="archive", path=str(root / "clash.zip"))


def test_a_truncated_tar_gz_is_refused(root):
    tar = cut(archive_of_pets(root, ".tar.gz"))
    refused(root, "pets.tar.gz", "is not a readable archive", source="archive", path=str(tar))


def test_a_member_leaving_the_extraction_folder_is_refused(root):
    with tarfile.open(root / "evil.tar.gz", "w:gz") as bundle:
        bundle.add(root / "pets", arcname="../pets")
    refused(
        root, "evil.tar.gz", "'../pets' would be extracted outside", source="archive", path=str(root / "evil.tar.gz")
    )


def test_a_download_that_is_no_archive_is_not_cached(root, server):
    folder, base = server
    (folder / "page.zip").write_text("<html>Sign in to download</html>")
    url = f"{base}/page.zip"
    refused(root, url, "did not download as a readable .zip archive", "nothing was cached", source="archive", path=url)
    assert not list((root / "data/cache/archives").iterdir())


def test_a_damaged_cached_download_is_deleted_and_named_by_its_url(root, server):
    folder, base = server
    shutil.copy(archive_of_pets(root), folder / "pets.zip")
    url = f"{base}/pets.zip"
    write_pull_params(root, source="archive", path=url)
    pulled(root)
    (cached,) = (root / "data/cache/archives").iterdir()
    cut(cached)
    refused(root, url, "is not a readable archive", "deleted it from data.cache_dir", source="archive", path=url)
    assert not cached.exists()
    pulled(root)  # the next run downloads it again
    assert cached.stat().st_size == (folder / "pets.zip").stat().st_size


# ---- data that training cannot use ----------------------------------------------------------------------


def test_a_single_class_folder_is_refused(root):
    shutil.rmtree(root / "pets/dog")
    refused(root, "data.path: 1 class (cat); a classifier needs 2 or more")


def test_a_single_class_in_data_classes_is_refused(root):
    refused(root, "data.classes: 1 class (cat)", "list at least 2 in data.classes", classes=["cat"])


def test_two_images_per_class_leave_no_validation_image(root):
    make_image_folder(root / "few", per_class=2, size=(8, 8))
    line = refused(root, "data.path", "validation split would be empty", "3 per class", path=str(root / "few"))
    assert "cat: 1, dog: 1" in line and "data.val_fraction" in line


def test_a_val_fraction_that_takes_every_training_image_is_refused(root):
    refused(root, "data.val_fraction: 0.95 moves all 5 training images of class 'cat'", val_fraction=0.95)


def test_classes_without_test_images_are_refused(root):
    make_image_folder(root / "split/train", classes=("cat", "dog", "emu", "fox"), per_class=3, size=(8, 8))
    make_image_folder(root / "split/test", classes=("cat", "dog"), per_class=2, size=(8, 8))
    line = refused(root, "data.classes", "test split would be empty", path=str(root / "split"), classes=["emu", "fox"])
    assert "emu, fox" in line


# ---- the cache ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["archive", "fashion-mnist"])
def test_a_cache_dir_below_a_file_is_refused(root, source):
    (root / "notes.txt").write_text("a file, not a folder")
    cache = root / "notes.txt" / "cache"
    archive = archive_of_pets(root)
    refused(
        root,
        f"data.cache_dir: {cache} is not a writable folder",
        source=source,
        path=str(archive),
        cache_dir=str(cache),
    )


@pytest.mark.parametrize("download", [False, True])
def test_a_damaged_cached_fashion_mnist_file_is_named_with_what_to_do(root, download):
    write_pull_params(root, source="fashion-mnist", classes=["Bag", "Coat"])
    pulled(root)
    raw = root / "data/cache/fashion-mnist/FashionMNIST/raw"
    (raw / "train-images-idx3-ubyte").write_bytes(b"")  # what a full disk leaves
    refused(
        root,
        f"data.cache_dir: fashion-mnist's files in {raw.relative_to(root)} cannot be read",
        "delete that folder",
        source="fashion-mnist",
        classes=["Bag", "Coat"],
        mirrors=[],
        download=download,
    )
    write_pull_params(root, source="fashion-mnist", classes=["Bag", "Coat"])  # the mirror unpacks them again
    pulled(root)


def test_leftovers_of_a_killed_run_are_removed_by_the_next(root):
    (root / "data/.pulled-k1ll3d").mkdir()
    (root / "data/.pulled-k1ll3d/train_images.npy").write_bytes(b"half")
    write_pull_params(root, source="archive", path=str(archive_of_pets(root)))
    pulled(root)
    (extraction,) = (root / "data/cache/extracted").iterdir()
    half = extraction.with_name(f".{extraction.name}-k1ll3d")
    half.mkdir()
    pulled(root)
    left = sorted(path.name for path in (root / "data").iterdir())
    assert left == ["cache", "pulled"], f"FAULT-LEFTOVER: {left}"
    left = [path.name for path in (root / "data/cache/extracted").iterdir()]
    assert left == [extraction.name], f"FAULT-LEFTOVER: {left}"


def test_a_store_moved_aside_by_a_killed_run_comes_back_even_when_the_next_pull_fails(root):
    manifest = (root / "data/pulled/manifest.json").read_text()
    (root / "data/pulled").rename(root / "data/.pulled-old")  # killed between replaced_atomically's two renames
    write_pull_params(root, classes=["cat"])
    assert invoke("pull", cwd=root).returncode == 2
    assert (root / "data/pulled/manifest.json").exists(), "FAULT-LOST: the store moved aside never came back"
    assert (root / "data/pulled/manifest.json").read_text() == manifest
    assert json.loads(manifest)["classes"] == ["cat", "dog"] and not (root / "data/.pulled-old").exists()
