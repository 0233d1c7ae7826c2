"""DVC stage `augment`: the albumentations pipeline of params.yaml, its preview grid and stored augmented copies."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from cnnpipe import paths
from cnnpipe.config import Params
from cnnpipe.data import augmentation
from cnnpipe.data.store import load_store


def run(params: Params, pulled: Path = paths.PULLED, out: Path = paths.AUGMENTED) -> None:
    cfg = params.augment
    pipeline = augmentation.build_pipeline(cfg)  # a bad transform stops here, before anything is written
    manifest, splits = load_store(pulled)
    train = splits["train"]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        augmentation.save_pipeline(pipeline, staging / "pipeline.json")
        augmentation.preview(
            pipeline, train.images, train.labels, manifest.classes, cfg.preview, params.seed, staging / "preview.png"
        )
        if cfg.copies:
            copies = augmentation.make_copies(pipeline, train.images, cfg.copies, params.seed, cfg.workers)
            np.save(staging / "copies_images.npy", copies)
            np.save(staging / "copies_labels.npy", np.tile(np.asarray(train.labels), cfg.copies))
        summary = {
            "transforms": [next(iter(item)) for item in cfg.transforms],
            "copies": cfg.copies,
            "images": len(train) * cfg.copies,
            "online": cfg.online,
        }
        (staging / "augment.json").write_text(json.dumps(summary, indent=2))
        staging.chmod(0o755)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    Console().print(
        f"augment: {', '.join(summary['transforms']) or 'no transforms'}; "
        f"{summary['images']} stored augmented images; online: {cfg.online} -> {out}"
    )
