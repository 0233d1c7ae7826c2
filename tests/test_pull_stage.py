"""The `pull` stage end to end: real sources into the store, seeded and stratified, and atomic on error."""

import numpy as np
import pytest

from cnnpipe.config import parse_params
from cnnpipe.data.store import load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.paths import Paths
from cnnpipe.stages import pull
from tests.images import MIXED, make_image_folder


def imagefolder_params(raw_params, folder, seed=42, **data):
    raw_params["seed"] = seed
    raw_params["data"].update(source="imagefolder", path=str(folder), val_fraction=0.25, **data)
    return parse_params(raw_params)


def test_pull_fashion_mnist_subset_and_a_failed_pull_keeps_the_old_store(tmp_path, raw_params, capsys):
    raw_params["data"].update(classes=["Sandal", "Sneaker", "Ankle boot"], cache_dir=str(tmp_path / "cache"))
    manifest = pull.run(parse_params(raw_params), Paths(pulled=tmp_path / "pulled"))
    assert manifest.classes == ["Sandal", "Sneaker", "Ankle boot"] and manifest.shape == (1, 28, 28)
    assert manifest.counts == {"train": 16200, "val": 1800, "test": 3000}
    assert manifest.class_counts["val"] == [600, 600, 600]  # stratified
    assert manifest.class_counts["test"] == [1000, 1000, 1000]  # the official test split, untouched
    assert 0.2 < manifest.mean[0] < 0.5 and 0.2 < manifest.std[0] < 0.5
    out = capsys.readouterr().out
    assert "train:  16200 images [1, 28, 28]" in out and "3 classes: Sandal, Sneaker, Ankle boot" in out
    before = (tmp_path / "pulled/manifest.json").read_text()

    raw_params["data"]["classes"] = ["Sandals"]
    with pytest.raises(CnnpipeError, match="data.classes: unknown class 'Sandals'"):
        pull.run(parse_params(raw_params), Paths(pulled=tmp_path / "pulled"))
    assert (tmp_path / "pulled/manifest.json").read_text() == before
    assert load_store(tmp_path / "pulled", verify=True)[0] == manifest


def test_pull_imagefolder_is_seeded_and_stratified(tmp_path, raw_params):
    folder = make_image_folder(tmp_path / "pets", classes=("cat", "dog", "emu"), per_class=20, fmt=MIXED)
    params = imagefolder_params(raw_params, folder, image_size=[8, 6])
    manifest = pull.run(params, Paths(pulled=tmp_path / "a"))
    assert manifest.source == "imagefolder" and manifest.shape == (3, 8, 6)
    assert manifest.class_counts == {"train": [12, 12, 12], "val": [4, 4, 4], "test": [4, 4, 4]}
    pull.run(params, Paths(pulled=tmp_path / "b"))
    (_, first), (_, same) = load_store(tmp_path / "a"), load_store(tmp_path / "b")
    for split in ("train", "val", "test"):
        assert np.array_equal(first[split].images, same[split].images)
        assert np.array_equal(first[split].labels, same[split].labels)
    pull.run(imagefolder_params(raw_params, folder, seed=7, image_size=[8, 6]), Paths(pulled=tmp_path / "c"))
    _, other = load_store(tmp_path / "c")
    assert not np.array_equal(first["val"].images, other["val"].images)
    assert other["val"].labels.tolist().count(2) == 4  # still stratified


def test_pull_imagefolder_gives_the_same_store_on_one_process_or_two(tmp_path, raw_params):
    folder = make_image_folder(tmp_path / "pets", classes=("cat", "dog", "emu"), per_class=200, size=(8, 8), fmt=MIXED)
    one = pull.run(imagefolder_params(raw_params, folder, workers=1), Paths(pulled=tmp_path / "one"))
    two = pull.run(imagefolder_params(raw_params, folder, workers=2), Paths(pulled=tmp_path / "two"))
    assert one == two and one.counts == {"train": 360, "val": 120, "test": 120}  # 3 batches of 256 and more
    _, arrays = load_store(tmp_path / "two", verify=True)
    pixels = np.asarray(arrays["train"].images, dtype=np.float64) / 255
    assert np.allclose(two.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(two.std, pixels.std(axis=(0, 1, 2)), atol=1e-6)


def test_an_imagefolder_without_a_path_is_refused_by_the_config(raw_params):
    raw_params["data"]["source"] = "imagefolder"  # data.path still names torchvision's stand-in
    with pytest.raises(CnnpipeError, match=r"data.path: is required when data.source is 'imagefolder': set it"):
        parse_params(raw_params)
