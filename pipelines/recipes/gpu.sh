#!/usr/bin/env bash
# Recipe for one GPU, for >= 0.95 on Fashion-MNIST: resnet-small widened 4x (64, 128, 256 kernels; 2.8M
# parameters) for 40 epochs, batch 128; bf16-mixed and channels_last come from `auto` on Ampere or newer, loader
# workers augment ahead, evaluate runs on the GPU. One NVIDIA H100: test accuracy 0.9528 (seeds 0-2: 0.9519, 0.9537,
# 0.9527), 187-209 s pull to evaluate (docs/benchmarks.md). Everything else is params.yaml's, as in accurate.sh.
#   pipelines/recipes/gpu.sh                      # on the GPU machine, in the repository
# Extra arguments go to `dvc exp run`, e.g. -S train.devices=4 -S train.strategy=ddp for four GPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc exp run -n gpu-wide-resnet \
  -S model.preset=resnet-small \
  -S model.width=4 \
  -S train.accelerator=gpu \
  -S train.devices=1 \
  -S train.epochs=40 \
  "$@"
