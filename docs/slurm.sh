#!/bin/bash
# Pretrain on several nodes with SLURM + torchrun (one torchrun per node, 8 GPUs each), and
# survive preemption and the time limit: the job requeues itself and resumes.
#SBATCH --job-name=selfsup
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue                 # a preempted job goes back to the queue (same job id)
#SBATCH --signal=B:USR1@90        # 90 s before the time limit, SIGUSR1 to this script
#SBATCH --open-mode=append        # one log across requeues
set -euo pipefail
# The same folder after a requeue: SLURM keeps the job id.
run="runs/dino_$SLURM_JOB_ID"
if [ -f "$run/checkpoints/last.pt" ]; then
  args=(--resume "$run")          # continues exactly: step, schedule, sampler, random state
else
  args=(--config configs/dino_cifar10.yaml --data /path/to/images --out "$run" --epochs 100
        train.batch_size=64 train.checkpoint_every=10m)
fi
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$head_node:29500" \
  -m selfsup pretrain "${args[@]}" &
child=$!
# Time limit near: SIGTERM to srun, which passes it to torchrun and on to every rank; the
# ranks agree on one last step, rank 0 saves the checkpoint, all exit; then requeue. (On
# preemption SLURM sends SIGTERM itself: the same save, and --requeue brings the job back.)
trap 'kill -TERM "$child"; wait "$child" || true; scontrol requeue "$SLURM_JOB_ID"; exit 0' USR1
wait "$child"
# train.batch_size is per process; the learning rate follows the global batch. selfsup also
# stops cleanly on SIGUSR1/SIGUSR2 sent to the training processes themselves
# (#SBATCH --signal=USR1@90 without "B:"), for scripts that run it without torchrun.
