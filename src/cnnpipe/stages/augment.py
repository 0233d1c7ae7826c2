"""DVC stage `augment`: the albumentations pipeline of params.yaml, a preview grid, augmented copies."""

import json

import numpy as np

from cnnpipe.config import Params
from cnnpipe.console import console
from cnnpipe.data import augmentation
from cnnpipe.data.store import load_store
from cnnpipe.outputs import replaced_atomically
from cnnpipe.paths import Paths


def run(params: Params, paths: Paths = Paths()) -> None:
    pulled, out = paths.pulled, paths.augmented
    cfg = params.augment
    pipeline = augmentation.build_pipeline(cfg)  # a bad transform stops here, before anything is written
    manifest, splits = load_store(pulled, verify=True)
    train = splits["train"]
    augmentation.check_output(pipeline, np.asarray(train.images[0]))
    augmentation.check_copies_fit(cfg.copies, manifest, out)
    with replaced_atomically(out) as staging:
        saved = staging / augmentation.PIPELINE_FILE
        augmentation.save_pipeline(pipeline, saved)
        augmentation.preview_grid(
            train.images,
            train.labels,
            manifest.classes,
            pipeline,
            params.seed,
            cfg.preview,
            staging / augmentation.PREVIEW_FILE,
        )
        if cfg.copies:
            # drawn by the saved pipeline.json, the very pipeline that training loads
            copies = augmentation.make_copies(saved, train.images, cfg.copies, params.seed, cfg.workers)
            np.save(staging / augmentation.COPIES_IMAGES, copies)
            np.save(staging / augmentation.COPIES_LABELS, np.tile(np.asarray(train.labels), cfg.copies))
        summary = {
            "transforms": [next(iter(item)) for item in cfg.transforms],
            "copies": cfg.copies,
            "images": len(train) * cfg.copies,
            "online": cfg.online,
        }
        (staging / augmentation.SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    console.print(
        f"augment: {', '.join(summary['transforms']) or 'no transforms'}; "
        f"{summary['images']} stored augmented images; online: {cfg.online} -> {out}"
    )
