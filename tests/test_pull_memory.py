"""`cnnpipe pull` of an image folder in constant memory: it fits under an address-space limit far below the
folder's decoded pixels, which the code before the streaming store held in memory all at once (twice over).

The limit (RLIMIT_AS) is the address space a process that imports what `pull` imports reserves, plus HEADROOM;
the folder decodes to 2.4 times that. Every decoding worker inherits the limit.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cnnpipe.data.store import load_store
from tests.helpers import REPO, write_params

HEADROOM = 150 << 20
SIDE, PER_CLASS = 512, 240  # 2 x 240 images of 512 x 512 RGB: 377 MB of pixels, 2.4 x HEADROOM
COLOURS = [(200, 30, 30), (30, 30, 200)]
# glibc reserves 64 MB of address space per thread that allocates: two arenas keep the limit about the data
ENV = {**os.environ, "MALLOC_ARENA_MAX": "2"}


def solid_folder(root: Path) -> Path:
    """Two classes of one solid-colour PNG each (a few kB that decode to 768 kB), hard-linked PER_CLASS times."""
    for label, colour in enumerate(COLOURS):
        (root / f"c{label}").mkdir(parents=True)
        first = root / f"c{label}" / "0.png"
        Image.new("RGB", (SIDE, SIDE), colour).save(first)
        for index in range(1, PER_CLASS):
            os.link(first, root / f"c{label}" / f"{index}.png")
    return root


def reserved_by_imports() -> int:
    """Bytes of address space a process has reserved once it imported the CLI, the pull stage and its pool."""
    code = (
        "import concurrent.futures.process, cnnpipe.cli, cnnpipe.stages.pull\n"
        "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmPeak')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    return int(result.stdout) * 1024


def test_pull_fits_under_a_memory_limit_far_below_the_decoded_images(tmp_path):
    folder = solid_folder(tmp_path / "solid")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="imagefolder", path=str(folder), val_fraction=0.1, workers=2)
    write_params(tmp_path / "params.yaml", raw)
    pixels = 2 * PER_CLASS * SIDE * SIDE * 3
    assert pixels > 2 * HEADROOM  # holding every image at once, as pull once did, cannot fit
    limit = reserved_by_imports() + HEADROOM

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "pull"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        preexec_fn=capped,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest, splits = load_store(tmp_path / "data/pulled", verify=True)
    assert manifest.counts == {"train": 346, "val": 38, "test": 96} and manifest.shape == (3, SIDE, SIDE)
    assert (tmp_path / "data/pulled/train_images.npy").stat().st_size > 0.7 * pixels
    for name, split in splits.items():  # every image is its class's colour, in every split
        firsts = np.asarray(split.images[:, 0, 0])
        assert (firsts == np.array(COLOURS)[split.labels]).all(), name
    red = np.mean(np.asarray(splits["train"].labels) == 0)
    assert np.allclose(
        manifest.mean, [(red * 200 + (1 - red) * 30) / 255, 30 / 255, ((1 - red) * 200 + red * 30) / 255]
    )
