#!/usr/bin/env bash
# Start this node's torchrun agent for a multi-node training job (c10d rendezvous).
# Run it once per node, with the same RDZV_ENDPOINT and RDZV_ID everywhere; arguments are
# config overrides passed to edlm_dist.train (--section.key=value).
#
#   NNODES=8 RDZV_ENDPOINT=node001:29500 RDZV_ID=owt launchers/torchrun_multinode.sh --training.steps=1000000
#
# Environment (default):
#   CONFIG           training config                              (configs/owt.toml)
#   NNODES           nodes, or MIN:MAX for an elastic job          (1)
#   NPROC_PER_NODE   processes per node                            (GPUs on this node, else 1)
#   RDZV_ENDPOINT    host:port of the rendezvous, on one of the nodes (127.0.0.1:29500)
#   RDZV_ID          job id shared by all nodes                    (edlm)
#   MAX_RESTARTS     restarts of the worker group after a failure  (3)
#   PYTHON           interpreter with edlm_dist installed          (python)
set -euo pipefail

CONFIG=${CONFIG:-configs/owt.toml}
NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$( (nvidia-smi --list-gpus 2>/dev/null || true) | grep -c '^GPU' || true)}
[[ $NPROC_PER_NODE == 0 ]] && NPROC_PER_NODE=1
RDZV_ENDPOINT=${RDZV_ENDPOINT:-127.0.0.1:29500}
RDZV_ID=${RDZV_ID:-edlm}
MAX_RESTARTS=${MAX_RESTARTS:-3}
PYTHON=${PYTHON:-python}

die() { echo "torchrun_multinode.sh: $*" >&2; exit 2; }
[[ -f $CONFIG ]] || die "CONFIG=$CONFIG: no such file"
[[ $NNODES =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || die "NNODES=$NNODES: expected N or MIN:MAX (positive integers)"
[[ $NPROC_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE=$NPROC_PER_NODE: expected a positive integer"
[[ $RDZV_ENDPOINT =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "RDZV_ENDPOINT=$RDZV_ENDPOINT: expected host:port"
[[ $RDZV_ID =~ ^[A-Za-z0-9._-]+$ ]] || die "RDZV_ID=$RDZV_ID: expected letters, digits, '.', '_' or '-'"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=$MAX_RESTARTS: expected a non-negative integer"
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: not found"

# The agent forwards only these signals to its workers; SIGUSR1 is SLURM's "time is nearly up".
export TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
# A fresh c10d store per rendezvous round: the agent-shared store keeps the process-group keys of
# the previous round, and a restarted worker can read a dead peer's address from them and hang.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1

cmd=("$PYTHON" -m torch.distributed.run
     --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE"
     --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$RDZV_ID"
     --max-restarts="$MAX_RESTARTS"
     -m edlm_dist.train --config "$CONFIG" "$@")
echo "torchrun_multinode.sh on $(hostname): ${cmd[*]}" >&2
exec "${cmd[@]}"
