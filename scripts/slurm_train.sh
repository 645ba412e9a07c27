#!/bin/bash
# Multi-node training under SLURM: one `accelerate launch` per node, started by srun.
#   sbatch scripts/slurm_train.sh configs/X.yaml [key=value ...]
#   sbatch --nodes 4 scripts/slurm_train.sh configs/X.yaml trainer.output_dir=runs/big
# Environment knobs: ACCELERATE_CONFIG (default configs/accelerate/two_nodes.yaml; use
# configs/accelerate/fsdp2.yaml for FSDP2), GPUS_PER_NODE (default: SLURM's count),
# MAIN_PROCESS_PORT (default 29500). trainer.resume=latest is appended, so a requeued or
# resubmitted job continues from its newest checkpoint (the output_dir must be shared).
#SBATCH --job-name=normkit-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch scripts/slurm_train.sh configs/X.yaml [key=value ...]}
shift
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/two_nodes.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
OVERRIDES=$(printf ' %q' "$@" "trainer.resume=latest")

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
# c10d rendezvous: nodes may start at slightly different times; SLURM_NODEID is the rank.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file $ACCELERATE_CONFIG \
    --num_machines $SLURM_NNODES \
    --num_processes $NUM_PROCESSES \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_PROCESS_IP \
    --main_process_port $MAIN_PROCESS_PORT \
    --rdzv_backend c10d \
    -m trainers.train --config $CONFIG $OVERRIDES"
