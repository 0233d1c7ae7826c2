#!/usr/bin/env bash
# Multi-node DDP training of the DVC pipeline with torchrun, for clusters without SLURM (use
# pipelines/slurm/train.sbatch there). Run it on every node, from anywhere, with the same settings except NODE_RANK:
#
#   NNODES=2 NODE_RANK=0 NPROC_PER_NODE=4 MASTER_ADDR=node0.example.org pipelines/torchrun/train.sh   # on node0
#   NNODES=2 NODE_RANK=1 NPROC_PER_NODE=4 MASTER_ADDR=node0.example.org pipelines/torchrun/train.sh   # on node1
#
#   NNODES          number of nodes (default 1); must equal train.num_nodes in params.yaml
#   NODE_RANK       this node, 0 .. NNODES-1 (default 0); node 0 runs DVC, the others only train
#   NPROC_PER_NODE  processes = GPUs per node (default: the visible GPUs, or 1 without any); = train.devices
#   MASTER_ADDR     address of node 0, reachable from every node (default 127.0.0.1, one node only)
#   MASTER_PORT     a free TCP port on node 0 (default 29500)
#   WAIT_TIMEOUT    seconds the nodes wait for node 0's data and for each other (default 1800)
#
# The repository (with .venv and data/) must be on storage every node sees: node 0 prepares the data with
# `dvc repro augment` while the others wait for data/augmented/pipeline.json, and torchrun starts training only
# once every node has joined. Rerunning the same commands after a failure resumes from
# data/checkpoints/last.ckpt into the same MLflow run.
set -euo pipefail

if (($# > 0)); then
  echo "train.sh: takes no arguments (got: $*); use the variables above and params.yaml" >&2
  exit 2
fi

cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
if [[ ! -f dvc.yaml || ! -f "$VENV/bin/activate" ]]; then
  echo "train.sh: $(pwd) has no dvc.yaml or no $VENV; run make setup first" >&2
  exit 2
fi
# shellcheck source=/dev/null
source "$VENV/bin/activate"

visible_gpus() {
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then # set, possibly to "" (no GPU)
    local ids=${CUDA_VISIBLE_DEVICES//[^,]/}
    if [[ -n $CUDA_VISIBLE_DEVICES ]]; then echo $((${#ids} + 1)); else echo 0; fi
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi -L | grep -c '^GPU' || true
  else
    echo 0
  fi
}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(visible_gpus)}
((NPROC_PER_NODE > 0)) || NPROC_PER_NODE=1 # no GPU: one CPU process
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-1800}
for name in NNODES NODE_RANK NPROC_PER_NODE MASTER_PORT WAIT_TIMEOUT; do
  if [[ ! ${!name} =~ ^[0-9]+$ ]]; then
    echo "train.sh: $name must be a whole number, got '${!name}'" >&2
    exit 2
  fi
done
if ((NODE_RANK >= NNODES)); then
  echo "train.sh: NODE_RANK=$NODE_RANK must be below NNODES=$NNODES" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
echo "node $NODE_RANK of $NNODES on $(hostname): $NPROC_PER_NODE processes, main node $MASTER_ADDR:$MASTER_PORT"

# 1. Fail fast when params.yaml does not match the launch (Lightning would refuse it only later, in every
#    process). cnnpipe train has no command-line overrides: params.yaml is what DVC records.
python - "$NNODES" "$NPROC_PER_NODE" <<'PY'
import sys
from cnnpipe.config import load_params
from cnnpipe.errors import CnnpipeError

nodes, per_node = int(sys.argv[1]), int(sys.argv[2])
try:
    train = load_params().train
except CnnpipeError as error:
    print(f"cnnpipe: error: {error}", file=sys.stderr)
    sys.exit(2)
devices = len(train.devices) if isinstance(train.devices, list) else train.devices
if (train.num_nodes, devices) != (nodes, per_node):
    print(f"params.yaml: train.num_nodes is {train.num_nodes} and train.devices {devices}, but the launch has "
          f"{nodes} nodes x {per_node} processes; set train.num_nodes: {nodes} and train.devices: {per_node}",
          file=sys.stderr)
    sys.exit(2)
PY

# 2. Prepare the data once: node 0 runs `pull` and `augment` when they are out of date (nothing when they are
#    not). DVC must run on one node only, or the nodes race on dvc.lock, the cache and the outputs. The others
#    wait for data/augmented/pipeline.json, to fail with a clear message when the storage is not shared. The
#    real barrier is torchrun: no process starts training before node 0 has finished DVC and joined, so
#    half-written or stale data from an earlier run is never read.
if ((NODE_RANK == 0)); then
  dvc repro augment
else
  waited=0
  until [[ -f data/augmented/pipeline.json ]]; do
    if ((waited >= WAIT_TIMEOUT)); then
      echo "train.sh: no data/augmented/pipeline.json after ${WAIT_TIMEOUT}s: did node 0 start, and is" \
        "$(pwd) on storage shared with it?" >&2
      exit 1
    fi
    sleep 10
    waited=$((waited + 10))
  done
fi

# 3. Train: torchrun starts NPROC_PER_NODE `python -m cnnpipe train` processes here and meets the other nodes at
#    MASTER_ADDR:MASTER_PORT (waiting up to WAIT_TIMEOUT for them). Lightning detects torchrun's environment
#    (TorchElasticEnvironment) and takes its rank and world size from it. Only global rank 0 writes checkpoints,
#    metrics and data/train/ and talks to MLflow, so the launch is one MLflow run.
torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --rdzv-conf "timeout=$WAIT_TIMEOUT" \
  -m cnnpipe train

# 4. Node 0 records what the train stage produced in dvc.lock and the DVC cache, as if `dvc repro` had run it,
#    then evaluates (a child run of the training's MLflow run) and exports. --single-item: those two only; never retrain
#    here in one process.
if ((NODE_RANK == 0)); then
  dvc commit --force train
  dvc repro --single-item evaluate export
fi
echo "node $NODE_RANK done"
