#!/usr/bin/env bash
# Recipe: the small ResNet of model.preset for 30 epochs, as one DVC experiment, meant for >= 0.94 on Fashion-MNIST
# (docs/benchmarks.md says whether it was measured: not yet, tens of minutes on 2 CPU cores). Everything else is params.yaml's: flips and 2-px shifts, AdamW with one-cycle,
# precision and memory format by the hardware, test-time flip.
#   pipelines/recipes/accurate.sh                 # runs it now; or add --queue and `dvc queue start`
#   cnnpipe compare                               # beside the default run
# Extra arguments go to `dvc exp run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc exp run -n accurate-resnet-small \
  -S model.preset=resnet-small \
  -S train.epochs=30 \
  "$@"
