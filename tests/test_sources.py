"""The pull sources on real files: Debian's Fashion-MNIST mirror, image folders in several formats, archives."""

import functools
import gzip
import http.server
import shutil
import threading
import zipfile

import numpy as np
import pytest

from cnnpipe.config import DataConfig
from cnnpipe.data import sources
from cnnpipe.data.archive import extract
from cnnpipe.data.store import Split
from cnnpipe.errors import CnnpipeError
from tests.images import add_tar_member, make_archive, make_image_folder

MIRROR = "/usr/share/datasets/fashion-mnist"


def test_fashion_mnist_from_the_verified_mirror(tmp_path):
    data = sources.load(DataConfig(cache_dir=tmp_path, classes=["Sneaker", "Ankle boot"]), seed=0)
    assert data.classes == ["Sneaker", "Ankle boot"]
    assert data.train.images.shape == (12000, 28, 28, 1) and data.train.images.dtype == np.uint8
    assert data.test.images.shape == (2000, 28, 28, 1)
    assert set(np.unique(data.train.labels)) == {0, 1}


def test_a_mirror_with_wrong_checksums_is_skipped(tmp_path):
    fake = tmp_path / "fake-mirror"
    fake.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        with gzip.open(fake / name, "wb") as handle:
            handle.write(b"not the data set")
    cfg = DataConfig(cache_dir=tmp_path / "cache", mirrors=[fake, MIRROR], classes=["Bag", "Coat"])
    assert sources.load(cfg, seed=0).train.images.shape[0] == 12000
    with pytest.raises(CnnpipeError, match=r"data.mirrors: none of .* holds fashion-mnist's files with valid"):
        sources.load(DataConfig(cache_dir=tmp_path / "c2", mirrors=[fake], download=False), seed=0)


def test_channels_and_size_conversion():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    assert sources.convert(grey, 3, None).shape == (2, 4, 4, 3)
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 100
    assert sources.convert(rgb, 1, None)[0, 0, 0, 0] == 30  # 0.299 * 100
    assert sources.convert(grey, None, (8, 6)).shape == (2, 8, 6, 1)


def test_unknown_class_lists_the_valid_ones(tmp_path):
    with pytest.raises(CnnpipeError, match=r"data.classes: unknown class 'Sneakers'; valid: T-shirt/top, Trouser"):
        sources.load(DataConfig(cache_dir=tmp_path, classes=["Sneakers"]), seed=0)


def test_stratified_split_is_seeded_and_keeps_class_proportions():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    split = Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), labels)
    train, val = sources.stratified_split(split, 0.2, seed=1)
    assert np.bincount(val.labels).tolist() == [10, 6, 4]
    assert len(train) == 80 and not set(train.images.ravel()) & set(val.images.ravel())
    again, _ = sources.stratified_split(split, 0.2, seed=1)
    other, _ = sources.stratified_split(split, 0.2, seed=2)
    assert np.array_equal(train.images, again.images) and not np.array_equal(train.images, other.images)


def test_imagefolder_mixed_formats_resized_rgb_and_greyscale(tmp_path):
    folder = make_image_folder(tmp_path / "pets", per_class=10)
    (folder / "cat" / "notes.txt").write_text("not an image")
    rgb = sources.load(DataConfig(source="imagefolder", path=str(folder), image_size=(8, 8)), seed=0)
    assert rgb.classes == ["cat", "dog"]
    assert rgb.train.images.shape == (16, 8, 8, 3) and rgb.test.images.shape == (4, 8, 8, 3)
    grey = sources.load(DataConfig(source="imagefolder", path=str(folder), channels=1), seed=0)
    assert grey.train.images.shape[1:] == (12, 10, 1)
    assert grey.train.images[grey.train.labels == 1].mean() > grey.train.images[grey.train.labels == 0].mean()


def test_imagefolder_with_train_and_test_folders_and_its_errors(tmp_path):
    make_image_folder(tmp_path / "set" / "train", per_class=4)
    make_image_folder(tmp_path / "set" / "test", per_class=2)
    data = sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "set")), seed=0)
    assert (len(data.train), len(data.test)) == (8, 4)

    make_image_folder(tmp_path / "odd", per_class=2, size=(12, 10))
    make_image_folder(tmp_path / "odd", classes=("cow",), per_class=1, size=(9, 9))
    with pytest.raises(CnnpipeError, match=r"data.image_size: images differ in size"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "odd")), seed=0)

    broken = make_image_folder(tmp_path / "broken", per_class=2)
    (broken / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CnnpipeError, match=r"data.path: cannot read image .*bad.png"):
        sources.load(DataConfig(source="imagefolder", path=str(broken)), seed=0)
    with pytest.raises(CnnpipeError, match="data.path: .* is not a directory"):
        sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "missing")), seed=0)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_from_a_path(tmp_path, suffix):
    folder = make_image_folder(tmp_path / "shapes", per_class=5)
    archive = make_archive(folder, tmp_path / f"shapes{suffix}")
    shutil.rmtree(folder)
    data = sources.load(DataConfig(source="archive", path=str(archive), cache_dir=tmp_path / "cache"), seed=0)
    assert data.classes == ["cat", "dog"] and len(data.train) + len(data.test) == 10


def test_archive_from_a_url(tmp_path):
    make_archive(make_image_folder(tmp_path / "served" / "pets", per_class=5), tmp_path / "served" / "pets.zip")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pets.zip"
        data = sources.load(DataConfig(source="archive", path=url, cache_dir=tmp_path / "cache"), seed=0)
        assert len(data.train) == 8
        with pytest.raises(CnnpipeError, match="data.path: could not download"):
            sources.load(
                DataConfig(source="archive", path=url.replace("pets", "none"), cache_dir=tmp_path / "cache"), seed=0
            )
    finally:
        server.shutdown()


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/evil.txt", "ok/../../escape.txt"])
def test_archive_members_leaving_the_target_are_refused(tmp_path, member):
    tar = add_tar_member(tmp_path / "evil.tar.gz", member)
    with pytest.raises(CnnpipeError, match="would be extracted outside the target folder; refused"):
        extract(tar, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr(member, "x")
    with pytest.raises(CnnpipeError, match="outside the target folder"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
