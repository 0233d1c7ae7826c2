#!/usr/bin/env bash
# Sweep: network width x augmentation, 3 x 2 = 6 DVC experiments, each one MLflow run named after it.
# Does a wider network still need augmentation against overfitting? Queue, run, compare:
#   pipelines/sweeps/width_x_augmentation.sh        # queues the grid (nothing runs yet)
#   dvc queue start -j 1                            # runs it; `dvc queue status` shows progress
#   dvc exp show --only-changed                     # or: cnnpipe compare, or the MLflow UI (make ui)
# Extra arguments go to `dvc exp run`, e.g. -S train.epochs=5 for a quicker sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
dvc exp run --queue \
  -S 'model.width=0.5,1,2' \
  -S 'augment.online=true,false' \
  "$@"
dvc queue status
