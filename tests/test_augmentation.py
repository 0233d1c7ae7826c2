"""The albumentations pipeline: built by name, seeded per batch without correlated transforms, copies."""

from collections import Counter

import albumentations as A
import numpy as np
import pytest

from cnnpipe.config import AugmentConfig, parse_params
from cnnpipe.data import augmentation
from cnnpipe.data.shift import RandomShift, shifted
from cnnpipe.data.store import Split, save_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.paths import Paths
from cnnpipe.stages import augment

IMAGES = np.random.default_rng(0).integers(0, 256, (300, 12, 12, 1), dtype=np.uint8)


def pipeline(*items) -> A.Compose:
    return augmentation.build_pipeline(AugmentConfig(transforms=list(items)))


def test_any_transform_by_name_with_yaml_lists_as_ranges():
    built = pipeline(
        {"HorizontalFlip": {"p": 0.5}},
        {"Affine": {"rotate": [-10, 10], "p": 0.5}},
        {"CoarseDropout": {"num_holes_range": [1, 2]}},
    )
    assert [type(t).__name__ for t in built.transforms] == ["HorizontalFlip", "Affine", "CoarseDropout"]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"HorizontalFlp": {}},
            r"augment.transforms\[0\]: unknown albumentations transform 'HorizontalFlp'; "
            r"did you mean HorizontalFlip\?",
        ),
        (
            {"HorizontalFlip": {"q": 1}},
            r"augment.transforms\[0\] \(HorizontalFlip\): unknown argument\(s\) 'q'; valid: p",
        ),
        (
            {"HorizontalFlip": {"p": 2}},
            r"augment.transforms\[0\] \(HorizontalFlip\): .*less than or equal to 1",
        ),
        ({"Affine": {"rotate": "lots"}}, r"augment.transforms\[0\] \(Affine\): "),
        ({"Compose": {}}, r"unknown albumentations transform 'Compose'"),
    ],
)
def test_bad_transforms_are_one_line_errors(item, expected):
    with pytest.raises(CnnpipeError, match=expected) as error:
        pipeline(item)
    assert "\n" not in str(error.value)


def test_reseeding_decorrelates_transforms_and_is_reproducible():
    flips = pipeline({"HorizontalFlip": {"p": 0.5}}, {"VerticalFlip": {"p": 0.5}})
    image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    outcomes = [augmentation.augment_images(flips, image, (seed,))[0] for seed in range(400)]
    both_or_neither = sum(np.array_equal(o, image[0]) or np.array_equal(o, image[0, ::-1, ::-1]) for o in outcomes)
    assert 0.4 < both_or_neither / 400 < 0.6  # albumentations' own set_random_seed gives 1.0
    again = [augmentation.augment_images(flips, image, (seed,))[0] for seed in range(400)]
    assert all(np.array_equal(a, b) for a, b in zip(outcomes, again, strict=True))


def test_saved_pipeline_loads_as_the_very_same_pipeline(tmp_path):
    built = pipeline(
        {"HorizontalFlip": {"p": 0.5}},
        {"RandomCrop": {"height": 10, "width": 10}},
        {"PadIfNeeded": {"min_height": 12, "min_width": 12}},
    )
    augmentation.save_pipeline(built, tmp_path / "pipeline.json")
    loaded = augmentation.load_pipeline(tmp_path / "pipeline.json")
    assert A.to_dict(loaded) == A.to_dict(built)
    key = (5, 0, 1, 0)
    assert np.array_equal(
        augmentation.augment_images(loaded, IMAGES, key), augmentation.augment_images(built, IMAGES, key)
    )


def test_nested_composes_are_decorrelated_too():
    nested = A.Compose([A.Sequential([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], p=1)])
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    flips = []
    for seed in range(400):
        augmentation.reseed(nested, (seed, 0, 0, 0))
        out = nested(image=image)["image"]
        flips.append((np.array_equal(out, image[:, ::-1]) or np.array_equal(out, image[::-1, ::-1]), out[0, 0, 0]))
    horizontal = np.array([h for h, _ in flips])
    # flipped vertically: the top-left pixel came from the bottom row
    vertical = np.array([corner in (12, 15) for _, corner in flips])
    assert 0.4 < horizontal.mean() < 0.6 and 0.4 < vertical.mean() < 0.6
    assert 0.4 < (horizontal == vertical).mean() < 0.6


def test_albumentations_own_seeding_correlates_the_transforms():
    """Why reseed exists: if this starts failing, albumentations has fixed Compose.set_random_seed."""
    flips = pipeline({"HorizontalFlip": {"p": 0.5}}, {"VerticalFlip": {"p": 0.5}})
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    outcomes = []
    for seed in range(100):
        flips.set_random_seed(seed)
        outcomes.append(flips(image=image)["image"])
    assert all(np.array_equal(o, image) or np.array_equal(o, image[::-1, ::-1]) for o in outcomes)


@pytest.mark.parametrize("channels", [1, 3])
def test_images_keep_their_shape_and_a_size_changing_pipeline_is_an_error(channels):
    images = np.random.default_rng(1).integers(0, 256, (5, 12, 12, channels), dtype=np.uint8)
    kept = augmentation.augment_images(pipeline({"Rotate": {"limit": 30, "p": 1}}), images, (0, 0, 0, 0))
    assert kept.shape == images.shape and kept.dtype == np.uint8 and not np.array_equal(kept, images)
    with pytest.raises(CnnpipeError, match=r"augment.transforms: the pipeline turns a \[12, 12, \d\] image"):
        augmentation.augment_images(pipeline({"RandomCrop": {"height": 8, "width": 8}}), images, (0, 0, 0, 0))


def test_a_missing_or_broken_pipeline_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CnnpipeError, match="no augmentation pipeline; run `dvc repro augment`"):
        augmentation.load_pipeline(tmp_path / "pipeline.json")
    (tmp_path / "pipeline.json").write_text('{"transform": {"__class_fullname__": "NoSuch", "p": 1}}')
    with pytest.raises(CnnpipeError, match="not an albumentations pipeline") as error:
        augmentation.load_pipeline(tmp_path / "pipeline.json")
    assert "\n" not in str(error.value)


def test_copies_are_identical_on_any_number_of_workers_and_differ_between_copies(tmp_path):
    images = np.repeat(IMAGES, 8, axis=0)[: augmentation.CHUNK + 100]  # two chunks per copy
    built = pipeline({"HorizontalFlip": {"p": 0.5}}, {"GaussNoise": {"p": 1}})
    augmentation.save_pipeline(built, tmp_path / "pipeline.json")
    one = augmentation.make_copies(A.to_dict(built), images, copies=2, seed=3, workers=1)
    two = augmentation.make_copies(tmp_path / "pipeline.json", images, copies=2, seed=3, workers=2)
    assert one.shape == (2 * len(images), 12, 12, 1) and np.array_equal(one, two)
    assert not np.array_equal(one[: len(images)], one[len(images) :])
    assert not np.array_equal(one[:8], one[8:16])  # the 8 repeats of an image got their own draws


def test_augment_stage_outputs_and_a_bad_transform_keeps_them(tmp_path, raw_params):
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (64, 12, 12, 1), dtype=np.uint8), rng.integers(0, 2, 64))
    save_store(tmp_path / "pulled", {"train": split, "val": split, "test": split}, ["a", "b"], "x", 0, 0.1)
    raw_params["augment"].update(copies=2, preview=4, transforms=[{"HorizontalFlip": {"p": 0.5}}])
    augment.run(parse_params(raw_params), Paths(pulled=tmp_path / "pulled", augmented=tmp_path / "augmented"))
    out = tmp_path / "augmented"
    assert {p.name for p in out.iterdir()} == {
        "pipeline.json",
        "preview.png",
        "augment.json",
        "copies_images.npy",
        "copies_labels.npy",
    }
    assert np.load(out / "copies_images.npy").shape == (128, 12, 12, 1)
    assert np.array_equal(np.load(out / "copies_labels.npy"), np.tile(split.labels, 2))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["augmented", "pulled"]  # no staging folder left

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for transforms, error in (
        ([{"NoSuchTransform": {}}], "NoSuchTransform"),  # fails before anything is written
        ([{"RandomCrop": {"height": 8, "width": 8}}], "training needs the data's size: set its height: 12"),
    ):
        raw_params["augment"]["transforms"] = transforms
        with pytest.raises(CnnpipeError, match=error):
            augment.run(parse_params(raw_params), Paths(pulled=tmp_path / "pulled", augmented=out))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["augmented", "pulled"]


def test_random_shift_is_a_padded_random_crop_at_any_size():
    """Whole-pixel shifts as a zero padding cropped back; at 28 x 28 and 0.1 the draws of albumentations'
    Affine(translate_percent=(-0.1, 0.1)): -2..2, no shift a third of the time; saved and loaded as albumentations
    saves its own transforms."""
    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    for dy, dx in ((2, -1), (0, 0), (-2, 2)):
        assert np.array_equal(shifted(image, dy, dx), padded[2 - dy : 30 - dy, 2 - dx : 30 - dx])
    draws = Counter()
    for seed in range(1000):
        transform = RandomShift(max_fraction=0.1)
        transform.set_random_seed(seed)
        draws[transform.get_params_dependent_on_data({"shape": (28, 28, 1)}, {})["dy"]] += 1
    assert sorted(draws) == [-2, -1, 0, 1, 2]
    assert 0.3 < draws[0] / 1000 < 0.37 and all(0.13 < draws[shift] / 1000 < 0.2 for shift in (-2, -1, 1, 2))
    assert RandomShift(0.1).get_params_dependent_on_data({"shape": (224, 60, 3)}, {}).keys() == {"dy", "dx"}
    built = pipeline({"RandomShift": {"max_fraction": 0.2, "fill": 7}})
    loaded = augmentation._from_dict(A.to_dict(built))
    assert np.array_equal(
        augmentation.augment_images(loaded, IMAGES, (1,)), augmentation.augment_images(built, IMAGES, (1,))
    )
    with pytest.raises(CnnpipeError, match=r"augment.transforms\[0\] \(RandomShift\): .*less than 0.5"):
        pipeline({"RandomShift": {"max_fraction": 0.7}})


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3), (96, 96, 3), (224, 224, 3), (60, 90, 1)])
def test_the_default_pipeline_keeps_any_size_and_shifts_by_a_tenth(raw_params, shape):
    """params.yaml's augmentation fits any picture: whole-pixel shifts of up to a tenth of each side, zeros
    shifted in, the size and channels kept."""
    built = augmentation.build_pipeline(parse_params(raw_params).augment)
    augmentation.check_output(built, np.zeros(shape, np.uint8))
    image = np.zeros(shape, np.uint8)
    image[shape[0] // 2, shape[1] // 2] = 255  # one bright pixel: where it lands is the shift
    out = augmentation.augment_images(built, np.repeat(image[None], 64, axis=0), (0, 0, 0, 0))
    assert out.shape == (64, *shape)
    shifts = np.array([np.argwhere(picture.max(axis=2) == 255)[0] for picture in out]) - (shape[0] // 2, shape[1] // 2)
    assert len({tuple(shift) for shift in shifts}) > 5  # many different shifts
    assert np.all(np.abs(shifts[:, 0]) <= shape[0] // 10) and np.all(np.abs(shifts[:, 1]) <= shape[1] // 10 + 1)
    assert np.abs(shifts).max() >= min(shape[:2]) // 10 - 1  # up to a tenth, not a fixed few pixels


@pytest.mark.parametrize(
    "transforms, expected",
    [
        (  # the Fashion-MNIST pipeline of earlier versions on 32x32 pictures (issue 26)
            [
                {"HorizontalFlip": {"p": 0.5}},
                {"PadIfNeeded": {"min_height": 32, "min_width": 32, "border_mode": 0}},
                {"RandomCrop": {"height": 28, "width": 28}},
            ],
            r"^augment.transforms\[2\] \(RandomCrop\): the pipeline turns the data's \[32, 32, 3\] images \(H, W, C\) "
            r"into \[28, 28, 3\], and training needs the data's size: set its height: 32, width: 32, after "
            r"augment.transforms\[1\] \(PadIfNeeded\) with min_height: 36, min_width: 36; or shift with "
            r"params.yaml's default, RandomShift: \{max_fraction: 0.1\}, which keeps any size$",
        ),
        ([{"Resize": {"height": 20, "width": 20}}], r"set its height: 32, width: 32; or shift"),
        ([{"RandomResizedCrop": {"size": [20, 20]}}], r"\(RandomResizedCrop\).* set its size: \[32, 32\]; or shift"),
    ],
)
def test_a_pipeline_that_changes_the_size_gets_the_values_that_keep_it(transforms, expected):
    built = augmentation.build_pipeline(AugmentConfig(transforms=transforms))
    with pytest.raises(CnnpipeError, match=expected):
        augmentation.check_output(built, np.zeros((32, 32, 3), np.uint8))
