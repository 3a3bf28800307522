#!/bin/bash
# Pretrain on several nodes with SLURM + torchrun (one torchrun per node, 8 GPUs each).
#SBATCH --job-name=selfsup
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-backend c10d --rdzv-id "$SLURM_JOB_ID" --rdzv-endpoint "$head_node:29500" \
  -m selfsup pretrain --config configs/dino_cifar10.yaml --data /path/to/images \
  --out "runs/dino_$SLURM_JOB_ID" --epochs 100 train.batch_size=64
# --resume runs/dino_<id> continues a run from its last checkpoint (the sampler resumes
# mid-epoch); train.batch_size is per process, the learning rate follows the global batch.
