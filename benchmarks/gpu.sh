#!/usr/bin/env bash
# One short GPU check (under 10 minutes at 50 s a run): images/s and GPU utilisation of SimCLR / ResNet-18
# (32 px CIFAR-10) and DINO / ViT-S/16 (2 x 224 + 6 x 96 crops) on one GPU, with batched
# GPU augmentation and with per-image CPU augmentation.
#   bash benchmarks/gpu.sh [DATA_DIR] [SECONDS_PER_RUN]
# DATA_DIR is an image folder (default: ../shared/datasets/cifar10/train); ViT-S/16 runs on
# the same images upsampled to 224 px (data.allow_upscale) as a pure throughput test.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/cifar10/train}"
SECONDS_PER_RUN="${2:-150}"
OUT="${OUT:-${TMPDIR:-/tmp}/selfsup_gpu_bench}"
mkdir -p "$OUT"
python -c "import selfsup" 2>/dev/null || pip install -q -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

run() {  # name, then selfsup pretrain arguments
  local name="$1"; shift
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/$name.smi" &
  local smi=$!
  python -m selfsup pretrain --out "$OUT/$name" --overwrite --no-progress \
    --max-time "${SECONDS_PER_RUN}s" "$@" monitor.knn=false > "$OUT/$name.log" 2>&1 || true
  kill "$smi" 2>/dev/null || true
  python - "$OUT/$name" "$OUT/$name.smi" "$name" <<'PY'
import json, sys, statistics
run, smi, name = sys.argv[1:]
try:
    s = json.load(open(f"{run}/summary.json"))
except FileNotFoundError:
    print(f"{name}: failed, see {run}.log"); sys.exit()
rows = [l.split(",") for l in open(smi) if l.strip()]
util = [float(r[0]) for r in rows[len(rows) // 5:]] or [0.0]  # skip the start-up fifth
mem = max(float(r[1]) for r in rows) if rows else 0.0
print(f"{name}: {s['images_per_s']:.0f} img/s, GPU utilisation median {statistics.median(util):.0f}%, "
      f"peak GPU memory {mem:.0f} MiB (torch {s['peak_memory_mb']:.0f} MiB), precision {s['precision']}, "
      f"{s['state']['images_seen']} images")
PY
}

# Each model twice: augmentation batched on the GPU (data.augment=device, the default on
# GPUs) and per image in CPU workers (data.augment=cpu), to show which bounds the speed.
for AUG in device cpu; do
  run "simclr_r18_$AUG" --config configs/simclr_cifar10.yaml --data "$DATA" --batch-size 512 \
    --workers 8 --augment "$AUG"
  run "dino_vits16_$AUG" --method dino --backbone timm:vit_small_patch16_224 --data "$DATA" \
    --image-size 224 --batch-size 128 --workers 8 --optimizer adamw --lr 0.0005 --augment "$AUG" \
    data.allow_upscale=true optim.weight_decay=0.04 optim.warmup=0.1 optim.grad_clip=3.0 \
    method.use_bn=false method.views.local_size=96 method.momentum_base=0.996
done
