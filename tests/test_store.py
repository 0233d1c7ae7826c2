"""The compact image store: round trip, checksums, and a failed write that leaves the old store alone."""

import json

import numpy as np
import pytest

from cnnpipe.data.store import Split, SplitStream, load_manifest, load_store, save_store, write_store
from cnnpipe.errors import CnnpipeError

FILES = sorted([f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")] + ["manifest.json"])


def splits(rng, n=40):
    def make(count):
        return Split(rng.integers(0, 256, (count, 6, 5, 3), dtype=np.uint8), rng.integers(0, 4, count).astype(np.int64))

    return {"train": make(n), "val": make(n // 4), "test": make(n // 2)}


def test_round_trip_with_manifest_and_checksums(tmp_path):
    data = splits(np.random.default_rng(0))
    manifest = save_store(tmp_path / "store", data, ["a", "b", "c", "d"], "imagefolder", 7, 0.2)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == FILES
    loaded, arrays = load_store(tmp_path / "store", verify=True)
    assert loaded == manifest == load_manifest(tmp_path / "store")
    assert loaded.shape == (3, 6, 5) and loaded.num_classes == 4 and (loaded.seed, loaded.val_fraction) == (7, 0.2)
    assert loaded.counts == {"train": 40, "val": 10, "test": 20}
    assert loaded.class_counts["val"] == np.bincount(data["val"].labels, minlength=4).tolist()
    pixels = data["train"].images.reshape(-1, 3) / 255
    assert np.allclose(loaded.mean, pixels.mean(axis=0), atol=1e-5)
    assert np.allclose(loaded.std, pixels.std(axis=0), atol=1e-5)
    for name, split in data.items():
        assert isinstance(arrays[name].images, np.memmap)
        assert arrays[name].images.dtype == np.uint8 and arrays[name].labels.dtype == np.int64
        assert np.array_equal(arrays[name].images, split.images)
        assert np.array_equal(arrays[name].labels, split.labels)


def test_a_corrupted_or_missing_file_is_named(tmp_path):
    save_store(tmp_path / "store", splits(np.random.default_rng(1)), list("abcd"), "x", 0, 0.1)
    labels = np.load(tmp_path / "store/val_labels.npy")
    np.save(tmp_path / "store/val_labels.npy", labels[::-1])
    load_store(tmp_path / "store")  # without verify the files are only opened
    with pytest.raises(CnnpipeError, match=r"val_labels.npy: corrupt, its SHA-256 differs from the one manifest.json"):
        load_store(tmp_path / "store", verify=True)
    (tmp_path / "store/test_images.npy").unlink()
    with pytest.raises(CnnpipeError, match=r"test_images.npy: missing from the image store"):
        load_store(tmp_path / "store")
    with pytest.raises(CnnpipeError, match=r"nowhere: no image store; run `dvc repro pull`"):
        load_store(tmp_path / "nowhere")
    (tmp_path / "store/manifest.json").write_text("{}")
    with pytest.raises(CnnpipeError, match=r"manifest.json: not a cnnpipe manifest"):
        load_manifest(tmp_path / "store")


def test_a_failed_save_leaves_the_existing_store_untouched(tmp_path):
    first = save_store(tmp_path / "store", splits(np.random.default_rng(2)), list("abcd"), "x", 0, 0.1)
    broken = splits(np.random.default_rng(3))
    broken["test"] = Split(broken["test"].images, -broken["test"].labels - 1)  # fails after the arrays are written
    with pytest.raises(ValueError):
        save_store(tmp_path / "store", broken, list("abcd"), "x", 0, 0.1)
    assert load_store(tmp_path / "store", verify=True)[0] == first
    assert json.loads((tmp_path / "store/manifest.json").read_text())["checksums"] == first.checksums
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no staging folder left behind


def in_sevens(data: dict[str, Split]) -> dict[str, SplitStream]:
    def sevens(images):
        yield from ((images[start : start + 7], None) for start in range(0, len(images), 7))

    return {name: SplitStream(part.labels, part.images.shape[1:], sevens(part.images)) for name, part in data.items()}


def test_a_store_written_batch_by_batch_is_the_one_saved_at_once(tmp_path):
    data = splits(np.random.default_rng(4), n=100)
    whole = save_store(tmp_path / "whole", data, list("abcd"), "x", 0, 0.1)
    assert write_store(tmp_path / "batches", in_sevens(data), list("abcd"), "x", 0, 0.1) == whole
    assert np.array_equal(np.load(tmp_path / "batches/train_images.npy"), data["train"].images)

    three = SplitStream(data["test"].labels, (6, 5, 3), iter([(data["test"].images[:3], None)]))
    short = dict(in_sevens(data), test=three)
    with pytest.raises(ValueError, match="test_images.npy: 3 images written, 50 labels"):
        write_store(tmp_path / "batches", short, list("abcd"), "x", 0, 0.1)
    assert load_store(tmp_path / "batches", verify=True)[0] == whole
