#!/usr/bin/env bash
# Sweep: learning rate x optimizer, 3 x 2 = 6 DVC experiments; only train and evaluate rerun.
#   pipelines/sweeps/lr_x_optimizer.sh && dvc queue start -j 1 && cnnpipe compare
# Extra arguments go to `dvc exp run`, e.g. -S train.epochs=5 for a quicker sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc exp run --queue \
  -S 'train.lr=0.001,0.003,0.01' \
  -S 'train.optimizer=adamw,sgd' \
  "$@"
dvc queue status
