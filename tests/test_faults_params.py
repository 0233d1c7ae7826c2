"""Fault injection for params.yaml abuse: keys written twice, YAML alias bombs, numbers that pass as valid and
then fail deep inside numpy, torch or Lightning, and sizes (augmented copies, a network's width, an archive's
members) bounded before anything of that size is allocated, decompressed or written (tests/faults.py)."""

from __future__ import annotations

import gzip
import io
import math
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from tests.faults import invoke, refused_and_kept
from tests.helpers import write_params
from tests.images import make_image_folder
from tests.test_faults_train import with_params

HUGE = 10**30  # passes a PositiveInt, and no C integer holds it


def edit_text(root: Path, old: str, new: str) -> Path:
    """params.yaml of `root` with one text replacement: what a hand edit of the file does."""
    path = root / "params.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(root: Path, text: str) -> int:
    """The 1-based line of params.yaml where `text` first appears."""
    content = (root / "params.yaml").read_text()
    return content.count("\n", 0, content.index(text)) + 1


# ---- the YAML file itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "duplicate", "key"),
    [
        ("seed: 42\n", "seed: 7\n", "seed"),
        ("  lr: 0.003\n", "  lr: 0.1\n", "train.lr"),
        ("  epochs: 2\n", "  epochs: 9\n", "train.epochs"),
    ],
    ids=["top-level", "in-a-section", "second-key-of-a-section"],
)
def test_a_key_written_twice_is_refused_naming_both_lines(workdir, anchor, duplicate, key):
    edit_text(workdir, anchor, anchor + duplicate)
    first = line_of(workdir, anchor)
    second = first + anchor.count("\n")
    refused_and_kept(workdir, "check", names=("params.yaml", key, f"line {first}", f"line {second}"))


def test_a_key_written_twice_inside_a_layer_names_the_layer(workdir):  # own case
    edit_text(workdir, "  - type: conv\n    out: 16\n", "  - type: conv\n    out: 16\n    out: 32\n")
    first = line_of(workdir, "    out: 16\n")
    refused_and_kept(workdir, "check", names=("model.layers[0].out", f"line {first}", f"line {first + 1}"))


def test_anchors_and_merge_keys_still_load(workdir):  # own case: the limits must not refuse what YAML allows
    edit_text(workdir, "  batch_size: 32\n", "  batch_size: &batch 32\n")
    edit_text(workdir, "export:\n", "export:\n  <<: {verify_images: 100, batch_size: *batch}\n")
    result = invoke("check", cwd=workdir)
    assert result.returncode == 0, f"FAULT-UNCLEAR: a valid file was refused: {result.stderr[-800:]}"


def billion_laughs(levels: int = 7, fanout: int = 9) -> str:
    """The YAML alias bomb as one flow list: each anchor lists the one before `fanout` times, 9^7 = 4.8 million
    strings from 360 characters. The classic has 9 levels (387 million); 7 are enough to see, and safe on a shared
    machine against the code before the bound (6 s and 11 s there, against milliseconds for a refusal)."""
    anchors = [f"&a0 [{', '.join(['lol'] * fanout)}]"]
    anchors += [f"&a{level} [{', '.join([f'*a{level - 1}'] * fanout)}]" for level in range(1, levels)]
    return f"[{', '.join(anchors)}]"


@pytest.mark.parametrize("command", ["check", "augment"])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(workdir, command):
    laughs = billion_laughs()
    edit_text(workdir, "  transforms:\n", f"  transforms:\n  - RandomShift: {{max_fraction: 0.1, laughs: {laughs}}}\n")
    start = time.monotonic()
    refused_and_kept(workdir, command, names=("params.yaml", "nodes"))
    assert time.monotonic() - start < 2, "FAULT-UNCLEAR: the bomb was expanded before it was refused"


def test_an_alias_inside_its_own_anchor_is_refused(workdir):  # own case: a structure that contains itself
    edit_text(workdir, "  mirrors:\n  - /usr/share/datasets/fashion-mnist\n", "  mirrors: &loop [*loop]\n")
    refused_and_kept(workdir, "check", names=("params.yaml", "data.mirrors", "line"))


def test_nesting_deeper_than_python_recurses_is_refused(workdir):  # own case: PyYAML composes recursively
    path = workdir / "params.yaml"
    path.write_text(path.read_text() + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    refused_and_kept(workdir, "check", names=("params.yaml", "deep"))


# ---- numbers that validate and then fail in a library ----------------------------------------------------------


def test_a_seed_beyond_32_bits_is_refused(workdir):
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    write_params(workdir / "params.yaml", {**raw, "seed": 2**33})
    for command in ("check", "train"):
        refused_and_kept(workdir, command, names=("seed", "4,294,967,295"))


NOT_FINITE = [  # float fields that took infinity or NaN: a training on them is garbage with exit code 0
    ({"train.lr": math.inf}, "train.lr"),
    ({"train.weight_decay": math.inf}, "train.weight_decay"),
    ({"model.width": math.inf}, "model.width"),
    ({"export.tolerance": math.nan}, "export.tolerance"),
    ({"export.tolerance": math.inf}, "export.tolerance"),
]


@pytest.mark.parametrize(("changes", "named"), NOT_FINITE, ids=[str(next(iter(c.items()))) for c, _ in NOT_FINITE])
def test_a_number_that_is_not_finite_is_refused(workdir, changes, named):
    with_params(workdir, **changes)
    refused_and_kept(workdir, "check", names=(named,))


def test_an_infinite_min_delta_of_early_stopping_is_refused(workdir):  # own case: a nested section
    with_params(workdir, **{"train.early_stopping": {"patience": 3, "min_delta": math.inf}})
    refused_and_kept(workdir, "check", names=("train.early_stopping.min_delta",))


TOO_BIG = [  # (changes, named, commands): each used to validate; `train` only where it failed fast without a bound
    ({"train.batch_size": HUGE}, "train.batch_size", ("check", "train")),
    ({"train.threads": HUGE}, "train.threads", ("check", "train")),
    ({"train.epochs": HUGE}, "train.epochs", ("check",)),  # trains for ever
    ({"train.num_workers": HUGE}, "train.num_workers", ("check",)),  # forks worker processes without end
    ({"train.devices": HUGE}, "train.devices", ("check",)),  # one process per device, on a CPU
    ({"data.workers": HUGE}, "data.workers", ("check",)),  # a pool of processes without end
    ({"augment.workers": HUGE}, "augment.workers", ("check",)),
    ({"augment.preview": HUGE}, "augment.preview", ("check",)),  # own case: a grid of every image, for hours
    ({"evaluate.misclassified": HUGE}, "evaluate.misclassified", ("check",)),  # own case: the same grid
    ({"export.tolerance": 1.0}, "export.tolerance", ("check",)),  # own case: a difference of 1 checks nothing
]


@pytest.mark.parametrize(("changes", "named", "commands"), TOO_BIG, ids=[named for _, named, _ in TOO_BIG])
def test_a_number_beyond_what_the_library_takes_is_refused(workdir, changes, named, commands):
    with_params(workdir, **changes)
    for command in commands:
        refused_and_kept(workdir, command, names=(named,))


# ---- devices -----------------------------------------------------------------------------------------------------


def test_device_ids_on_a_cpu_are_refused(workdir):
    with_params(workdir, **{"train.devices": [7]})  # the workdir trains with train.accelerator: cpu
    for command in ("check", "train"):
        refused_and_kept(workdir, command, names=("train.devices", "cpu"))


def test_device_ids_this_machine_lacks_are_refused_by_check(workdir):
    with_params(workdir, **{"train.devices": [7], "train.accelerator": "auto"})
    refused_and_kept(workdir, "check", names=("train.devices", "GPU"))


# ---- sizes bounded before they are allocated ---------------------------------------------------------------------


def test_augmented_copies_that_cannot_fit_are_refused_before_drawing(workdir):
    with_params(workdir, **{"augment.copies": 10**9})
    for command in ("augment", "check"):
        refused_and_kept(workdir, command, names=("augment.copies", "GB", "available"))


def test_a_network_too_wide_for_memory_is_refused_before_it_is_built(workdir):
    with_params(workdir, **{"model.width": 10_000})
    for command in ("check", "train"):
        refused_and_kept(workdir, command, names=("model.width", "parameters", "GB"))


def test_a_layer_too_wide_for_torch_is_refused_by_name(workdir):  # own case: more than a 64-bit size holds
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["model"]["layers"][0]["out"] = HUGE
    write_params(workdir / "params.yaml", raw)
    refused_and_kept(workdir, "check", names=("model.layers", "conv1"))


def test_a_preset_too_wide_for_memory_is_refused(workdir):  # own case: resnet-small is built from modules
    with_params(workdir, **{"model.preset": "resnet-small", "model.width": 2_000})
    refused_and_kept(workdir, "check", names=("model.width", "parameters", "GB"))


# ---- archives: the running total stops the stream ---------------------------------------------------------------

GARBAGE = b"not gzip data" * 80  # what a reader that goes on past the limit reaches instead of the archive's end


def archive_params(root: Path, archive: Path, **limits: int) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"].update(source="archive", path=str(archive), image_size=[8, 8], classes=[], limits=limits)
    write_params(root / "params.yaml", raw)


def endless_tar_gz(folder: Path, path: Path) -> Path:
    """`folder` as a .tar.gz whose end-of-archive blocks are replaced by garbage: only a reader that stops at the
    limit refuses it for its size; one that reads every header fails on the garbage instead."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        bundle.add(folder, arcname=folder.name)
        end = bundle.offset  # where the end-of-archive blocks start
    path.write_bytes(gzip.compress(buffer.getvalue()[:end]) + GARBAGE)
    return path


def test_an_archive_over_a_lowered_byte_limit_is_refused_before_its_tail_is_read(workdir):
    archive = endless_tar_gz(make_image_folder(workdir / "pets", per_class=60, size=(16, 16)), workdir / "pets.tar.gz")
    archive_params(workdir, archive, max_archive_bytes=4096)
    refused_and_kept(workdir, "pull", names=("pets.tar.gz", "data.limits.max_archive_bytes"))


def tar_gz_bomb(path: Path, megabytes: int) -> Path:
    """A real .tar.gz of one member of `megabytes` MiB of zeros, under a megabyte: gzip members are concatenated,
    the one MiB of zeros compressed once and repeated, so it builds in milliseconds. Garbage follows the member
    where the end-of-archive blocks belong (see endless_tar_gz)."""
    info = tarfile.TarInfo("pets/cat/0.png")
    info.size = megabytes << 20
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + zeros * megabytes + GARBAGE)
    return path


def test_a_tar_gz_bomb_is_refused_from_its_first_header(workdir):
    bomb = tar_gz_bomb(workdir / "bomb.tar.gz", 400)
    assert bomb.stat().st_size < 1 << 20
    with tarfile.open(bomb) as bundle:  # a real archive: tarfile reads its member's header
        assert bundle.next().size == 400 << 20
    archive_params(workdir, bomb, max_archive_bytes=64 << 20)
    start = time.monotonic()
    refused_and_kept(workdir, "pull", names=("bomb.tar.gz", "419,430,400", "data.limits.max_archive_bytes"))
    assert time.monotonic() - start < 1, "FAULT-UNCLEAR: the whole stream was decompressed before the refusal"


def test_an_archive_with_more_members_than_allowed_stops_at_the_limit(workdir):  # own case: the count, too
    archive = endless_tar_gz(make_image_folder(workdir / "pets", per_class=60, size=(8, 8)), workdir / "pets.tar.gz")
    archive_params(workdir, archive, max_archive_files=10)
    refused_and_kept(workdir, "pull", names=("pets.tar.gz", "data.limits.max_archive_files"))
