"""The pull sources on real files: Debian's Fashion-MNIST mirror, image folders in several formats, archives."""

import functools
import http.server
import multiprocessing
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

from cnnpipe.config import DataConfig, LimitsConfig
from cnnpipe.data import sources
from cnnpipe.data.archive import extract
from cnnpipe.data.store import Split
from cnnpipe.errors import CnnpipeError
from tests.images import MIXED, add_tar_member, make_archive, make_image_folder

MIRROR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [name for name, _ in datasets.FashionMNIST.resources]


def truncated_mirror(folder: Path) -> Path:
    """The real file names with the first 4 kB of the real files: right names, wrong checksums."""
    folder.mkdir()
    for name in FASHION_FILES:
        (folder / name).write_bytes((MIRROR / name).read_bytes()[:4096])
    return folder


def test_fashion_mnist_from_the_verified_mirror_then_from_the_cache(tmp_path):
    data = sources.load(DataConfig(cache_dir=tmp_path, classes=["Sneaker", "Ankle boot"]), seed=0)
    assert data.classes == ["Sneaker", "Ankle boot"]
    assert data.train.images.shape == (12000, 28, 28, 1) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (2000, 28, 28, 1) and data.test.labels.dtype == np.int64
    assert np.bincount(data.train.labels).tolist() == [6000, 6000]
    # no mirror and no download: what the first pull unpacked into data.cache_dir is used
    cached = sources.load(DataConfig(cache_dir=tmp_path, mirrors=[], download=False), seed=0)
    assert cached.train.images.shape == (60000, 28, 28, 1) and len(cached.classes) == 10


def test_a_pull_replaces_cached_files_whole_never_rewriting_one_a_reader_has_open(tmp_path):
    cfg = DataConfig(cache_dir=tmp_path)
    sources.load(cfg, seed=0)
    cached = tmp_path / "fashion-mnist/FashionMNIST/raw/train-images-idx3-ubyte"
    size = cached.stat().st_size
    with cached.open("rb") as reader:  # a pull of another experiment, reading while this one unpacks again
        sources.load(cfg, seed=0)
        assert os.fstat(reader.fileno()).st_ino != cached.stat().st_ino
        assert len(reader.read()) == size == cached.stat().st_size
    assert not list(cached.parent.glob(".unpacking-*"))


def test_a_tar_gz_of_a_folder_unpacks_file_by_file_into_an_existing_one(tmp_path):
    """CIFAR-10's layout (cifar-10-batches-py/ inside cifar-10-python.tar.gz), which no mirror here has."""
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ("data_batch_1", "batches.meta"):
        (batches / name).write_bytes(name.encode() * 100)
    archive = make_archive(batches, tmp_path / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    sources._unpack_replacing(archive, cache)
    first = (cache / "cifar-10-batches-py/data_batch_1").stat().st_ino
    sources._unpack_replacing(archive, cache)  # over the files of the first: each renamed into place again
    unpacked = cache / "cifar-10-batches-py"
    assert sorted(path.name for path in unpacked.iterdir()) == ["batches.meta", "data_batch_1"]
    assert (unpacked / "data_batch_1").read_bytes() == b"data_batch_1" * 100
    assert (unpacked / "data_batch_1").stat().st_ino != first
    assert sorted(path.name for path in cache.iterdir()) == ["cifar-10-batches-py"]  # no staging folder left


def _load_from_shared_cache(cache_dir: Path) -> int:
    return len(sources.load(DataConfig(cache_dir=cache_dir), seed=0).train.images)


def test_pulls_sharing_one_cache_at_once_all_succeed(tmp_path):
    """Before, torchvision's in-place unpacking made concurrent pulls read half-written files (2 of 4 died)."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_load_from_shared_cache, [tmp_path] * 8) == [60000] * 8


def test_a_mirror_with_wrong_checksums_is_skipped_with_a_note(tmp_path, capsys):
    fake = truncated_mirror(tmp_path / "truncated")
    cfg = DataConfig(cache_dir=tmp_path / "cache", mirrors=[fake, MIRROR], classes=["Bag", "Coat"])
    assert sources.load(cfg, seed=0).train.images.shape[0] == 12000
    assert f"{fake}: files named like fashion-mnist's fail its checksums; skipped" in capsys.readouterr().err
    with pytest.raises(CnnpipeError, match=r"data.mirrors: none of .* holds fashion-mnist's files with valid"):
        sources.load(DataConfig(cache_dir=tmp_path / "c2", mirrors=[fake], download=False), seed=0)


def test_mnist_is_not_taken_from_a_fashion_mnist_mirror_with_the_same_file_names(tmp_path, capsys):
    with pytest.raises(CnnpipeError, match=r"data.mirrors: .* mnist's files with valid checksums.*data.download"):
        sources.load(DataConfig(source="mnist", cache_dir=tmp_path, mirrors=[MIRROR], download=False), seed=0)
    assert "mnist's fail its checksums; skipped" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*-ubyte"))


def test_channels_and_size_conversion():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    assert np.array_equal(sources.convert(grey, 3, None)[..., 2], grey[..., 0])
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 100
    assert sources.convert(rgb, 1, None)[0, 0, 0, 0] == 30  # 0.299 * 100
    flat = np.full((2, 4, 4, 1), 77, dtype=np.uint8)
    resized = sources.convert(flat, None, (8, 6))
    assert resized.shape == (2, 8, 6, 1) and (resized == 77).all()


def test_unknown_class_lists_the_valid_ones(tmp_path):
    with pytest.raises(CnnpipeError, match=r"data.classes: unknown class 'Sneakers'; valid: T-shirt/top, Trouser"):
        sources.load(DataConfig(cache_dir=tmp_path, classes=["Sneakers"]), seed=0)


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    labels = np.repeat(np.arange(3), [51, 29, 20])
    split = Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), labels)
    train, val = sources.stratified_split(split, 0.2, seed=1)
    expected = np.bincount(labels) * 0.2
    assert np.abs(np.bincount(val.labels) - expected).max() <= 1
    assert len(train) + len(val) == 100 and not set(train.images.ravel()) & set(val.images.ravel())
    again, _ = sources.stratified_split(split, 0.2, seed=1)
    other, _ = sources.stratified_split(split, 0.2, seed=2)
    assert np.array_equal(train.images, again.images) and not np.array_equal(train.images, other.images)


def test_imagefolder_mixed_formats_and_sizes_resized_rgb_and_greyscale(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "pets", per_class=10, fmt=MIXED)
    make_image_folder(folder, classes=("cat",), per_class=2, size=(20, 16), fmt="bmp")  # 2 more cats, larger
    (folder / "cat" / "notes.txt").write_text("not an image")
    rgb = sources.load(DataConfig(source="imagefolder", path=str(folder), image_size=(8, 8)), seed=0)
    assert "skipped 1 non-image file(s)" in capsys.readouterr().err
    assert rgb.classes == ["cat", "dog"]
    assert rgb.train.images.shape == (18, 8, 8, 3) and rgb.test.images.shape == (4, 8, 8, 3)
    assert np.bincount(rgb.test.labels).tolist() == [2, 2]  # 20% of each class, rounded
    grey = sources.load(DataConfig(source="imagefolder", path=str(folder), channels=1, image_size=(6, 5)), seed=0)
    assert grey.train.images.shape[1:] == (6, 5, 1)
    assert grey.train.images[grey.train.labels == 1].mean() > grey.train.images[grey.train.labels == 0].mean() + 60


def test_imagefolder_skips_hidden_files_such_as_macos_resource_forks(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "pets", per_class=3)
    (folder / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # what macOS's tar adds
    (folder / "dog" / ".ipynb_checkpoints").mkdir()
    (folder / "dog" / ".ipynb_checkpoints" / "0.png").write_bytes(b"not an image either")
    data = sources.load(DataConfig(source="imagefolder", path=str(folder)), seed=0)
    assert len(data.train) + len(data.test) == 6
    assert "skipped 1 non-image file(s) in" in capsys.readouterr().err


def test_imagefolder_defaults_to_one_channel_only_when_all_images_are_greyscale(tmp_path):
    grey = make_image_folder(tmp_path / "grey", mode="L", fmt=("png", "bmp"))
    assert sources.load(DataConfig(source="imagefolder", path=str(grey)), seed=0).train.images.shape[-1] == 1
    make_image_folder(grey, classes=("cow",), per_class=2, mode="RGB")
    data = sources.load(DataConfig(source="imagefolder", path=str(grey)), seed=0)
    assert data.train.images.shape[-1] == 3 and data.classes == ["cat", "cow", "dog"]
    assert (data.train.images[..., 0] == data.train.images[..., 2])[data.train.labels != 1].all()


def test_imagefolder_class_subset_and_its_error(tmp_path):
    folder = make_image_folder(tmp_path / "zoo", classes=("ant", "bee", "cow"), per_class=5)
    data = sources.load(DataConfig(source="imagefolder", path=str(folder), classes=["cow", "ant"]), seed=0)
    assert data.classes == ["cow", "ant"]
    cows = data.train.images[data.train.labels == 0]
    assert cows.min() >= 240 and len(data.train) + len(data.test) == 10  # cow is the brightest class
    with pytest.raises(CnnpipeError, match=r"data.classes: unknown class 'bat'; valid: ant, bee, cow"):
        sources.load(DataConfig(source="imagefolder", path=str(folder), classes=["bat"]), seed=0)


def test_imagefolder_with_train_and_test_folders(tmp_path):
    make_image_folder(tmp_path / "set" / "train", per_class=4)
    make_image_folder(tmp_path / "set" / "test", per_class=2, fmt="jpeg")
    data = sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "set")), seed=0)
    assert (len(data.train), len(data.test)) == (8, 4)
    assert np.bincount(data.test.labels).tolist() == [2, 2]
    make_image_folder(tmp_path / "sizes" / "train", per_class=2)
    make_image_folder(tmp_path / "sizes" / "test", per_class=1, size=(9, 9))
    with pytest.raises(CnnpipeError, match=r"data.image_size: .*train images are \(12, 10\) .* test images \(9, 9\)"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "sizes")), seed=0)
    resized = sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "sizes"), image_size=(9, 9)), seed=0)
    assert resized.train.images.shape == (4, 9, 9, 3)
    make_image_folder(tmp_path / "set" / "test", classes=("emu",), per_class=1)
    with pytest.raises(CnnpipeError, match=r"data.path: .*set/test has class folder\(s\) \['emu'\]"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "set")), seed=0)


def test_imagefolder_errors_name_the_key_or_file(tmp_path):
    make_image_folder(tmp_path / "odd", per_class=2, size=(12, 10))
    make_image_folder(tmp_path / "odd", classes=("cow",), per_class=1, size=(9, 9))
    with pytest.raises(CnnpipeError, match=r"data.image_size: images differ in size .*cow/0.png is 9x9"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "odd")), seed=0)

    broken = make_image_folder(tmp_path / "broken", per_class=2)
    (broken / "cat" / "0-bad.png").write_bytes(b"\x89PNG not really")  # sorts first: fails the mode check
    with pytest.raises(CnnpipeError, match=r"data.path: cannot read image .*0-bad.png"):
        sources.load(DataConfig(source="imagefolder", path=str(broken)), seed=0)
    with pytest.raises(CnnpipeError, match=r"data.path: cannot read image .*0-bad.png"):
        sources.load(DataConfig(source="imagefolder", path=str(broken), channels=3), seed=0)

    with pytest.raises(CnnpipeError, match="data.path: .* is not a directory"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "missing")), seed=0)
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "lonely.png")
    with pytest.raises(CnnpipeError, match="data.path: .*flat holds no class subfolders with images"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "flat")), seed=0)
    make_image_folder(tmp_path / "gaps", per_class=2)
    (tmp_path / "gaps" / "emu").mkdir()
    with pytest.raises(CnnpipeError, match=r"data.path: class folder\(s\) \['emu'\] .* hold no images"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "gaps")), seed=0)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_from_a_path(tmp_path, suffix):
    folder = make_image_folder(tmp_path / "shapes", per_class=5, fmt=MIXED)
    archive = make_archive(folder, tmp_path / f"shapes{suffix}")
    shutil.rmtree(folder)
    data = sources.load(DataConfig(source="archive", path=str(archive), cache_dir=tmp_path / "cache"), seed=0)
    assert data.classes == ["cat", "dog"] and (len(data.train), len(data.test)) == (8, 2)
    with pytest.raises(CnnpipeError, match=r"data.path: .*shapes.rar' is not an archive; valid suffixes: .tar.gz"):
        sources.load(DataConfig(source="archive", path=str(tmp_path / "shapes.rar")), seed=0)


def test_archive_from_a_url(tmp_path):
    make_archive(make_image_folder(tmp_path / "served" / "pets", per_class=5), tmp_path / "served" / "pets.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pets.zip"
        data = sources.load(DataConfig(source="archive", path=url, cache_dir=tmp_path / "cache"), seed=0)
        assert len(data.train) == 8 and len(list((tmp_path / "cache" / "archives").glob("*.zip"))) == 1
        missing = DataConfig(source="archive", path=url.replace("pets", "none"), cache_dir=tmp_path / "cache")
        with pytest.raises(CnnpipeError, match="data.path: could not download .*none.zip: HTTP 404"):
            sources.load(missing, seed=0)
        assert not list((tmp_path / "cache" / "archives").glob("*.part"))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/evil.txt", "ok/../../escape.txt"])
def test_archive_members_leaving_the_target_are_refused(tmp_path, member):
    tar = add_tar_member(tmp_path / "evil.tar.gz", member)
    with pytest.raises(CnnpipeError, match=f"member '{member}' would be extracted outside the target folder"):
        extract(tar, tmp_path / "out", LimitsConfig())
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr(member, "x")
    with pytest.raises(CnnpipeError, match=f"member '{member}' would be extracted outside the target folder"):
        extract(tmp_path / "evil.zip", tmp_path / "out", LimitsConfig())
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["../../../secret", "/etc/passwd"])
def test_archive_symlinks_pointing_outside_are_refused(tmp_path, target):
    tar = add_tar_member(tmp_path / "links.tar.gz", "pets/cat/link.png", symlink_to=target)
    with pytest.raises(CnnpipeError, match=r"data.path: .*links.tar.gz: archive member 'pets/cat/link.png' refused"):
        extract(tar, tmp_path / "out", LimitsConfig())
    assert not (tmp_path / "out").exists()
