"""Which lecture-shaped CNN recipe reaches which Fashion-MNIST test accuracy, per epoch budget (plain PyTorch).

Data and augmentation (flip, 2-px shifts) live on the device; every variant trains in its own process. Prints,
per recipe, the test accuracy without and with EMA weights and flip test-time augmentation, and the forward
MFLOPs per image, so that the CPU time of a recipe follows from the measured CPU throughput.
Usage: python benchmarks/recipe_search.py [--device cuda] [--procs 8] [--seeds 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PULLED = Path("data/pulled")
MODELS = {  # (conv widths with a 2x2 max-pool after each, dense width)
    "c16-c32-d128": ((16, 32), 128),
    "c24-c48-d128": ((24, 48), 128),
    "c32-c64-d128": ((32, 64), 128),
    "c16-c32-c64-d128": ((16, 32, 64), 128),
    "c32-c32-c64-d256": ((32, 32, 64), 256),
}


def network(convs: tuple[int, ...], dense: int, mean: float, std: float) -> nn.Module:
    layers, channels, side = [], 1, 28
    for width in convs:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels, side = width, side // 2
    layers += [nn.Flatten(), nn.Linear(channels * side * side, dense), nn.ReLU(), nn.Dropout(0.3), nn.Linear(dense, 10)]
    body = nn.Sequential(*layers)

    class Normalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body((x - mean) / std)

    return Normalized()


def mflops(model: nn.Module) -> float:
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 28, 28))
    return counter.get_total_flops() / 1e6


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip with p=0.5 and a shift of up to 2 px (zero padding), as params.yaml's pipeline does."""
    n = len(x)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = (torch.randint(0, 5, (n,), device=x.device, generator=generator) for _ in range(2))
    rows = (torch.arange(28, device=x.device) + dy[:, None])[:, :, None]
    cols = (torch.arange(28, device=x.device) + dx[:, None])[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tta: bool) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 2000):
        batch = x[start : start + 2000]
        logits = model(batch).softmax(1)
        if tta:
            logits = logits + model(batch.flip(3)).softmax(1)
        correct += int((logits.argmax(1) == y[start : start + 2000]).sum())
    return correct / len(x)


def run(job: dict) -> dict:
    device = job["device"]
    torch.manual_seed(job["seed"])
    data = {split: np.load(PULLED / f"{split}_images.npy") for split in ("train", "val", "test")}
    labels = {split: np.load(PULLED / f"{split}_labels.npy") for split in ("train", "val", "test")}
    x = {k: torch.from_numpy(v).permute(0, 3, 1, 2).float().div(255).to(device) for k, v in data.items()}
    y = {k: torch.from_numpy(v).to(device) for k, v in labels.items()}
    if job["quick"]:
        x, y = {k: v[:2048] for k, v in x.items()}, {k: v[:2048] for k, v in y.items()}
    convs, dense = MODELS[job["model"]]
    model = network(convs, dense, 0.286, 0.353).to(device)
    ema = copy.deepcopy(model)
    batch, epochs = job["batch"], job["epochs"]
    steps = epochs * (len(x["train"]) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=job["lr"], total_steps=steps)
    generator = torch.Generator(device=device).manual_seed(job["seed"])
    curve, step = [], 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x["train"]), device=device, generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(
                model(augment(x["train"][index], generator)), y["train"][index], label_smoothing=job["smoothing"]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            decay = min(job["ema_decay"], (1 + step) / (10 + step))
            with torch.no_grad():
                for averaged, current in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    if averaged.dtype.is_floating_point:
                        averaged.mul_(decay).add_(current, alpha=1 - decay)
                    else:  # batch norm's step counter
                        averaged.copy_(current)
        curve.append(round(accuracy(model, x["val"], y["val"], False), 4))  # validation: the test split decides nothing
    return {
        **{k: v for k, v in job.items() if k not in ("device", "quick")},
        "mflops": round(mflops(network(convs, dense, 0.0, 1.0)), 2),
        "curve": curve,
        "plain": accuracy(model, x["test"], y["test"], False),
        "tta": accuracy(model, x["test"], y["test"], True),
        "ema": accuracy(ema, x["test"], y["test"], False),
        "ema_tta": accuracy(ema, x["test"], y["test"], True),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("recipes.jsonl"))
    args = parser.parse_args()
    grid = itertools.product(MODELS, (10, 15, 20), (0.0, 0.1), range(args.seeds))
    jobs = [
        {
            "model": m,
            "epochs": e,
            "smoothing": s,
            "seed": seed,
            "batch": 128,
            "lr": 3e-3,
            "ema_decay": 0.999,
            "device": args.device,
            "quick": args.quick,
        }
        for m, e, s, seed in grid
    ]
    if args.quick:
        jobs = [{**job, "epochs": 1} for job in jobs[:2]]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(args.procs) as pool, args.out.open("w") as out:
        for result in pool.imap_unordered(run, jobs):
            out.write(json.dumps(result) + "\n")
            out.flush()
            print(json.dumps(result), flush=True)
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
