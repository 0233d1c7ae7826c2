"""The compact image store and the pull stage."""

import json

import numpy as np
import pytest

from cnnpipe.config import parse_params
from cnnpipe.data.store import Split, load_manifest, load_store, save_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.stages import pull


def splits(rng, n=40):
    def make(count):
        return Split(
            rng.integers(0, 256, (count, 6, 5, 3), dtype=np.uint8),
            rng.integers(0, 4, count).astype(np.int64),
        )
    return {"train": make(n), "val": make(n // 4), "test": make(n // 2)}


def test_round_trip_with_manifest_and_checksums(tmp_path):
    data = splits(np.random.default_rng(0))
    manifest = save_store(tmp_path / "store", data, ["a", "b", "c", "d"], "imagefolder", 7, 0.2)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == sorted(
        [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")] + ["manifest.json"]
    )
    loaded, arrays = load_store(tmp_path / "store", verify=True)
    assert loaded == manifest == load_manifest(tmp_path / "store")
    assert loaded.shape == (3, 6, 5) and loaded.counts == {"train": 40, "val": 10, "test": 20}
    assert sum(loaded.class_counts["train"]) == 40
    expected_mean = data["train"].images.reshape(-1, 3).mean(axis=0) / 255
    assert np.allclose(loaded.mean, expected_mean, atol=1e-5)
    for name, split in data.items():
        assert np.array_equal(arrays[name].images, split.images)
        assert np.array_equal(arrays[name].labels, split.labels)


def test_a_corrupted_file_fails_verification_naming_it(tmp_path):
    save_store(tmp_path / "store", splits(np.random.default_rng(1)), list("abcd"), "x", 0, 0.1)
    labels = np.load(tmp_path / "store/val_labels.npy")
    np.save(tmp_path / "store/val_labels.npy", labels[::-1])
    with pytest.raises(CnnpipeError, match=r"val_labels.npy: checksum differs"):
        load_store(tmp_path / "store", verify=True)
    with pytest.raises(CnnpipeError, match=r"no image store; run `dvc repro pull`"):
        load_store(tmp_path / "nowhere")


def test_pull_writes_the_store_and_a_failed_pull_keeps_the_old_one(tmp_path, raw_params):
    raw_params["data"].update(classes=["Sandal", "Sneaker", "Ankle boot"], cache_dir=str(tmp_path / "cache"))
    manifest = pull.run(parse_params(raw_params), out=tmp_path / "pulled")
    assert manifest.classes == ["Sandal", "Sneaker", "Ankle boot"]
    assert manifest.counts == {"train": 16200, "val": 1800, "test": 3000}
    assert manifest.class_counts["val"] == [600, 600, 600]  # stratified
    before = (tmp_path / "pulled/manifest.json").read_text()

    raw_params["data"]["classes"] = ["Sandals"]
    with pytest.raises(CnnpipeError, match="data.classes: unknown class 'Sandals'"):
        pull.run(parse_params(raw_params), out=tmp_path / "pulled")
    assert (tmp_path / "pulled/manifest.json").read_text() == before
    assert json.loads(before)["seed"] == 42
