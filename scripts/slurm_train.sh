#!/bin/bash
# Multi-node training under SLURM: one `accelerate launch` per node, started by srun.
#   sbatch scripts/slurm_train.sh configs/X.yaml [key=value ...]
#   sbatch --nodes 4 scripts/slurm_train.sh configs/X.yaml trainer.output_dir=/shared/runs/big
#   bash scripts/slurm_train.sh --dry-run configs/X.yaml ...   # print each node's command
# --dry-run prints the resolved command of every node and starts nothing (inside an allocation,
# or with SLURM_JOB_NODELIST / SLURM_NNODES set by hand). Environment knobs: ACCELERATE_CONFIG
# (default configs/accelerate/two_nodes.yaml; configs/accelerate/fsdp2.yaml for FSDP2),
# GPUS_PER_NODE (default: SLURM's count, else 8), MAIN_PROCESS_PORT (default 20000 + job id
# modulo 20000, so two jobs sharing a first node do not collide), OMP_NUM_THREADS (default 8).
# trainer.resume=latest is appended, so a requeued or resubmitted job continues from its newest
# checkpoint (the output_dir must be on a filesystem every node sees).
#SBATCH --job-name=normkit-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail

fail() {
    echo "error: $*" >&2
    exit 2
}

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
[[ $# -ge 1 ]] || fail "usage: sbatch scripts/slurm_train.sh [--dry-run] configs/X.yaml [key=value ...]"
CONFIG=$1
shift
[[ -f "$CONFIG" ]] || fail "config file '$CONFIG' does not exist"
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/two_nodes.yaml}
[[ -f "$ACCELERATE_CONFIG" ]] || fail "ACCELERATE_CONFIG '$ACCELERATE_CONFIG' does not exist"
for name in SLURM_JOB_NODELIST SLURM_NNODES; do
    [[ -n "${!name:-}" ]] || fail "$name is not set: submit with sbatch (or set the SLURM_* variables for --dry-run)"
done
[[ "$SLURM_NNODES" =~ ^[1-9][0-9]*$ ]] || fail "SLURM_NNODES='$SLURM_NNODES' is not a node count"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
[[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]] || fail "GPUS_PER_NODE='$GPUS_PER_NODE' is not a count >= 1"
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
[[ ${#NODES[@]} -eq $SLURM_NNODES ]] ||
    fail "SLURM_JOB_NODELIST '$SLURM_JOB_NODELIST' names ${#NODES[@]} node(s), SLURM_NNODES=$SLURM_NNODES"
MAIN_PROCESS_IP=${NODES[0]}
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
OVERRIDES=$(printf ' %q' "$@" "trainer.resume=latest")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# The command of the node whose rank is $1 (a number, or a variable srun's shell expands).
node_command() {
    echo "accelerate launch --config_file $ACCELERATE_CONFIG --num_machines $SLURM_NNODES" \
        "--num_processes $NUM_PROCESSES --machine_rank $1 --main_process_ip $MAIN_PROCESS_IP" \
        "--main_process_port $MAIN_PROCESS_PORT --rdzv_backend c10d" \
        "-m trainers.train --config $CONFIG$OVERRIDES"
}

if ((DRY_RUN)); then
    for ((rank = 0; rank < SLURM_NNODES; rank++)); do
        echo "node $rank (${NODES[$rank]}): OMP_NUM_THREADS=$OMP_NUM_THREADS $(node_command "$rank")"
    done
    exit 0
fi
# c10d rendezvous: nodes may start at slightly different times; SLURM_NODEID is the rank.
# shellcheck disable=SC2016  # $SLURM_NODEID is expanded by each node's shell, not here
srun --kill-on-bad-exit=1 bash -c "$(node_command '$SLURM_NODEID')"
