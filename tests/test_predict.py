"""`cnnpipe predict`: image files, folders and archives through a trained model, preprocessed as `pull` does.

One small real training per session (`trained`, shared with test_export.py and test_serve.py) serves every test
that needs a model; the refusals need none.
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.faults import invoke, refused_and_kept
from tests.helpers import REPO, SMALL_RUN, run_cnnpipe, small_run_params, write_params
from tests.images import make_image_folder

CLASSES = ["Trouser", "Bag", "Sneaker"]  # small_run_params'


def train_once(root: Path, prepared_data: Path) -> Path:
    """A folder with a real small training (registered, evaluated: models:/NAME@champion), made once per
    process: the first test module that asks trains, the others find it."""
    if (root / "data/train/model.ckpt").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    raw = small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["mlflow"]["register_model"] = "always"
    raw["train"]["limit_train_batches"] = 20
    write_params(root / "params.yaml", raw)
    shutil.copytree(prepared_data, root / "data", dirs_exist_ok=True)
    run_cnnpipe("train", cwd=root)
    run_cnnpipe("evaluate", cwd=root)
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, prepared_data) -> Path:
    return train_once(tmp_path_factory.getbasetemp() / "trained", prepared_data)


@pytest.fixture
def store_pngs(trained, tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """60 test images of the store as PNG files in nested folders, with the images and labels they hold."""
    images = np.load(trained / "data/pulled/test_images.npy")[:60]
    labels = np.load(trained / "data/pulled/test_labels.npy")[:60]
    folder = tmp_path / "pictures"
    for index, image in enumerate(images):
        path = folder / CLASSES[labels[index]] / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(path)
    return folder, images, labels


def _reference(root: Path, images: np.ndarray) -> np.ndarray:
    """The checkpoint's probabilities for store images, as evaluate computes them."""
    from cnnpipe.data.datamodule import to_model_input
    from cnnpipe.inference.model import from_checkpoint

    return from_checkpoint(root / "data/train/model.ckpt").probabilities(to_model_input(images).numpy())


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_pngs_of_the_store_get_the_probabilities_evaluate_gets(trained, store_pngs, tmp_path):
    folder, images, labels = store_pngs
    result = run_cnnpipe("predict", str(folder), "--output", str(tmp_path / "p.csv"), "--top-k", "2", cwd=trained)
    assert "60 images in" in result.stdout and "images/s" in result.stdout
    rows = _rows(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "class", "probability", "class_2", "probability_2", "error"]
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows) and len(rows) == 60
    expected = _reference(trained, images)
    order = [int(Path(row["path"]).stem) for row in rows]
    got = np.array([float(row["probability"]) for row in rows])
    assert np.abs(got - expected[order].max(axis=1)).max() <= 1e-6  # same pixels in, same answer out
    assert [row["class"] for row in rows] == [CLASSES[i] for i in expected[order].argmax(axis=1)]
    assert np.mean([row["class"] == CLASSES[labels[i]] for row, i in zip(rows, order, strict=True)]) >= 0.8


def test_json_archives_and_files_together(trained, store_pngs, tmp_path):
    folder, images, _ = store_pngs
    with zipfile.ZipFile(tmp_path / "some.zip", "w") as bundle:
        for path in sorted((folder / "Bag").glob("*.png")):
            bundle.write(path, f"bags/{path.name}")
    with tarfile.open(tmp_path / "more.tar.gz", "w:gz") as bundle:
        bundle.add(folder / "Sneaker", arcname="sneakers")
    one = next((folder / "Trouser").glob("*.png"))
    args = [str(tmp_path / "some.zip"), str(tmp_path / "more.tar.gz"), str(one)]
    run_cnnpipe("predict", *args, "--output", str(tmp_path / "p.json"), "--top-k", "5", cwd=trained)
    answer = json.loads((tmp_path / "p.json").read_text())
    assert answer["classes"] == CLASSES and answer["failed"] == 0 and answer["errors"] == []
    paths = [entry["path"] for entry in answer["predictions"]]
    bags, sneakers = len(list((folder / "Bag").glob("*"))), len(list((folder / "Sneaker").glob("*")))
    assert answer["images"] == len(paths) == bags + sneakers + 1
    assert paths[0].startswith(f"{tmp_path / 'some.zip'}/bags/") and paths[-1] == str(one)
    assert any(path.startswith(f"{tmp_path / 'more.tar.gz'}/sneakers/") for path in paths)
    entry = answer["predictions"][-1]
    assert len(entry["top_k"]) == 3  # --top-k 5 of 3 classes
    assert entry["top_k"][0] == {"class": entry["class"], "probability": entry["probability"]}
    expected = _reference(trained, images[[int(one.stem)]])[0]
    assert entry["probability"] == pytest.approx(expected.max(), abs=1e-6)


def test_any_size_and_mode_is_decoded_as_pull_decodes_an_image_folder(trained, tmp_path):
    """pull reads an image folder with data/decode.py; predict must give the model the very same pixels:
    a rotated EXIF JPEG, a 16-bit PNG, an RGBA PNG and a palette GIF, resized and made greyscale."""
    from cnnpipe.data.decode import decode
    from cnnpipe.inference.inputs import ImageFile
    from cnnpipe.inference.model import Classifier
    from cnnpipe.inference.predict import _load

    rng = np.random.default_rng(0)
    folder = tmp_path / "odd"
    folder.mkdir()
    colour = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    exif = colour.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown upright only after exif_transpose
    colour.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 65535, (40, 33), dtype=np.uint16)).save(folder / "deep.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    colour.convert("P").save(folder / "palette.gif")
    model = Classifier("m", CLASSES, (1, 28, 28), lambda x: x)
    for path in sorted(folder.iterdir()):
        array, converted = _load(ImageFile(path.name, path), model, 10**8)
        assert np.array_equal(array, decode(path, 1, (28, 28), 10**8, "data.path")), path.name
        assert array.shape == (28, 28, 1) and converted == (path.name != "deep.png")
    run_cnnpipe("predict", str(folder), "--output", str(tmp_path / "p.csv"), cwd=trained)
    assert len(_rows(tmp_path / "p.csv")) == 4


def test_an_unreadable_file_is_listed_and_skipped_and_the_exit_code_says_so(trained, store_pngs, tmp_path):
    folder, _, _ = store_pngs
    (folder / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = next((folder / "Sneaker").glob("*.png"))
    truncated.write_bytes(truncated.read_bytes()[:40])
    (folder / "README.txt").write_text("not an image")
    (folder / ".DS_Store").write_text("hidden")
    result = run_cnnpipe("predict", str(folder), "--output", str(tmp_path / "p.csv"), cwd=trained, check=False)
    assert result.returncode == 1, result.stderr
    assert f"warning: skipped {folder}/Bag/broken.png: cannot identify image file" in result.stderr
    assert f"skipped {truncated}" in result.stderr and f"note: skipped 1 non-image file(s) in {folder}" in result.stderr
    rows = _rows(tmp_path / "p.csv")
    failed = {row["path"]: row["error"] for row in rows if row["error"]}
    assert set(failed) == {f"{folder}/Bag/broken.png", str(truncated)} and len(rows) == 61
    assert all(row["class"] in CLASSES for row in rows if not row["error"])


def test_csv_goes_to_stdout_without_output_and_the_progress_to_stderr(trained, store_pngs):
    folder, _, _ = store_pngs
    result = run_cnnpipe("predict", str(folder / "Trouser"), "--top-k", "1", cwd=trained)
    lines = result.stdout.splitlines()
    assert lines[0] == "path,class,probability,error" and all(line.startswith(str(folder)) for line in lines[1:])
    assert "images/s" in result.stderr


def test_an_mlflow_model_uri_is_fed_the_same_pixels(trained, store_pngs, tmp_path):
    """models:/NAME@ALIAS and runs:/ID/model answer as the logged model answers the store's own arrays."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    folder, images, _ = store_pngs
    uri = f"sqlite:///{trained}/mlflow.db"
    run_id = MlflowClient(uri).get_model_version_by_alias(SMALL_RUN, "champion").run_id
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(images.transpose(0, 3, 1, 2) / np.float32(255))
    said = {
        f"models:/{SMALL_RUN}@champion": f"(MLflow run {run_id}, registered {SMALL_RUN} version 1)",
        f"runs:/{run_id}/model": f"(MLflow run {run_id})",
    }
    for model in said:
        out = tmp_path / "p.csv"
        shown = run_cnnpipe("predict", str(folder), "--model", model, "--output", str(out), "--top-k", "1", cwd=trained)
        assert f"Model: {model} {said[model]}\n" in shown.stdout
        rows = _rows(out)
        order = [int(Path(row["path"]).stem) for row in rows]
        assert [row["class"] for row in rows] == list(served["class"].iloc[order]), model
        got = np.array([float(row["probability"]) for row in rows])
        assert np.abs(got - served["probability"].to_numpy()[order]).max() <= 1e-6, model


def test_predict_says_which_checkpoint_and_run_it_uses(trained, store_pngs):
    """The default model is the workspace's (DVC's meaning): said in one line with its run and version."""
    folder, _, _ = store_pngs
    record = json.loads((trained / "data/train/run.json").read_text())
    result = run_cnnpipe("predict", str(folder), cwd=trained)  # the CSV on stdout, the line on stderr
    assert result.stderr.splitlines()[0] == (
        f"Model: data/train/model.ckpt (MLflow run {record['run_id']} in experiment {SMALL_RUN}, registered "
        f"{SMALL_RUN} version {record['model_version']}, the workspace's last `dvc repro` or `dvc exp run`)"
    )
    copy = trained / "elsewhere.ckpt"  # a checkpoint with no run.json beside it
    shutil.copyfile(trained / "data/train/model.ckpt", copy)
    try:
        result = run_cnnpipe("predict", str(folder), "--model", str(copy), cwd=trained)
    finally:
        copy.unlink()
    assert result.stderr.splitlines()[0] == f"Model: {copy} (no MLflow run recorded beside it)"


def test_an_mlflow_uri_that_names_nothing_is_one_line(trained, store_pngs):
    folder, _, _ = store_pngs
    refused_and_kept(
        trained, "predict", str(folder), "--model", f"models:/{SMALL_RUN}@nobody", names=("--model", "@nobody")
    )


# ---- refusals: one line, exit 2, nothing written ----------------------------------------------------------


@pytest.fixture
def pictures(tmp_path) -> Path:
    make_image_folder(tmp_path / "pictures", mode="L", size=(28, 28), per_class=2)
    return tmp_path / "pictures"


def test_a_missing_model_is_refused(tmp_path, pictures):
    line = refused_and_kept(
        tmp_path, "predict", str(pictures), "--output", "p.csv", names=("data/train/model.ckpt", "dvc repro")
    )
    assert "no trained model" in line and not (tmp_path / "p.csv").exists()
    refused_and_kept(tmp_path, "predict", str(pictures), "--model", "nothing.ckpt", names=("nothing.ckpt",))


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda root: (root / "empty").mkdir(), ("INPUT", "no image files in empty")),
        (lambda root: (root / "empty").mkdir() or (root / "empty/a.txt").write_text("x"), ("only 1 other file",)),
        (lambda root: (root / "empty").write_text("x"), ("INPUT", "neither an image")),
        (lambda root: None, ("INPUT", "empty does not exist")),
        (lambda root: (root / "empty").write_bytes(b"PK\x03\x04 broken"), ("neither an image",)),
    ],
    ids=["empty-folder", "only-text-files", "a-text-file", "missing", "no-suffix"],
)
def test_inputs_without_images_are_refused(tmp_path, make, names):
    make(tmp_path)
    refused_and_kept(tmp_path, "predict", "empty", "--output", "p.csv", names=names)
    assert not (tmp_path / "p.csv").exists()


def test_a_damaged_archive_is_refused_by_its_name(tmp_path):
    (tmp_path / "photos.zip").write_bytes(b"PK\x03\x04 broken")
    refused_and_kept(tmp_path, "predict", "photos.zip", names=("INPUT: photos.zip", "not a readable archive"))


@pytest.mark.parametrize(
    ("output", "names"),
    [
        ("missing/p.csv", ("--output", "missing does not exist")),
        ("folder", ("--output", "is a directory")),
        ("p.txt", ("--output", ".csv or .json")),
        ("afile/p.csv", ("--output", "afile does not exist")),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, pictures, output, names):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    refused_and_kept(tmp_path, "predict", str(pictures), "--output", output, names=names)


def test_a_write_that_fails_leaves_no_half_file(tmp_path, monkeypatch):
    from cnnpipe.errors import CnnpipeError
    from cnnpipe.inference import predict

    target = tmp_path / "p.csv"

    def full(self, text, **options):
        raise OSError(28, "No space left")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CnnpipeError, match="cannot write .*p.csv: No space left"):
        predict.write(target, "x" * 1000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
def test_counts_must_be_positive(tmp_path, pictures, option):
    refused_and_kept(tmp_path, "predict", str(pictures), option, "0", names=(option,))


def test_a_model_for_other_channels_gets_them_converted_with_a_note(trained, tmp_path):
    make_image_folder(tmp_path / "colour", mode="RGB", size=(40, 30), per_class=2)
    result = invoke("predict", str(tmp_path / "colour"), "--output", str(tmp_path / "p.csv"), cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "note: 4 image(s) converted to greyscale, the model's input" in result.stderr
    assert len(_rows(tmp_path / "p.csv")) == 4


def test_hidden_files_and_folders_are_not_images(tmp_path):
    from cnnpipe.config import LimitsConfig
    from cnnpipe.inference.inputs import collect

    folder = make_image_folder(tmp_path / "p", per_class=1)
    (folder / ".hidden").mkdir()
    Image.new("L", (5, 5)).save(folder / ".hidden" / "x.png")
    found = collect([str(folder)], tmp_path / "scratch", LimitsConfig())
    assert [image.name for image in found.images] == [f"{folder}/cat/0.png", f"{folder}/dog/0.png"]
