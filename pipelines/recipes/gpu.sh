#!/usr/bin/env bash
# Recipe for one GPU, meant for >= 0.95 on Fashion-MNIST: torchvision's ResNet-18 (its first conv takes the
# data's channels) for 60 epochs at batch 256; bf16-mixed and channels_last come from `auto` on Ampere or newer,
# 8 loader workers augment ahead. docs/benchmarks.md says whether it was run and what it reached.
#   pipelines/recipes/gpu.sh                      # on the GPU machine, in the repository
# Extra arguments go to `dvc exp run`, e.g. -S train.devices=4 -S train.strategy=ddp for four GPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc exp run -n gpu-resnet18 \
  -S model.preset=torchvision:resnet18 \
  -S train.accelerator=gpu \
  -S train.devices=1 \
  -S train.epochs=60 \
  -S train.batch_size=256 \
  "$@"
