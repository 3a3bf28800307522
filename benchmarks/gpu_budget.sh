#!/usr/bin/env bash
# Issue 23's one GPU check: CIFAR-10 pretraining for a fixed wall clock on one GPU, then the
# kNN protocol of ../shared/BASELINE.md (k = 200, temperature 0.1, the 50,000 training images
# as the bank, the 10,000 test images as queries). For each arm it prints images/s, how busy
# the GPU was (nvidia-smi samples every 0.5 s, median after the first fifth of the run, which
# holds start-up and compilation) and kNN top-1.
#
#   bash benchmarks/gpu_budget.sh [CIFAR10_DIR]          # train/ and test/ class folders
#
# Arms (ARMS, space-separated; default "base simclr", about 9 minutes with start-up):
#   base    SimCLR / ResNet-18 at 32 px as docs/benchmarks.md measured it (batch 512, batched
#           augmentation on the GPU, no compilation), BASE_BUDGET seconds (60): the speed and
#           utilisation the others are compared with, in the same command; no kNN.
#   simclr  the same network and method for BUDGET seconds (300): batch BATCH (1024) with LARS
#           (lr 0.3 per 256, 10% warm-up), torch.compile over the model, the decoded uint8
#           images in a memory-mapped cache (data.cache) so workers only copy bytes; kNN after.
#   fast    configs/fast_cifar10.yaml (the CPU recipe: VICReg, progressive resizing, LARS) at
#           batch BATCH, compiled, BUDGET seconds; kNN after. A second slice: ARMS="fast".
# Other knobs: OUT (runs, logs, cache; default $TMPDIR/selfsup_gpu_budget), COMPILE (true),
# LIMIT_TRAIN / LIMIT_TEST (kNN bank and queries; default all), WORKERS (8).
# On a machine without nvidia-smi (a CPU check of this script) utilisation prints as n/a:
#   BUDGET=20 BASE_BUDGET=10 BATCH=64 COMPILE=false LIMIT_TRAIN=2000 LIMIT_TEST=500 \
#     bash benchmarks/gpu_budget.sh ../shared/datasets/cifar10
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/cifar10}"
ARMS="${ARMS:-base simclr}"
BUDGET="${BUDGET:-300}"
BASE_BUDGET="${BASE_BUDGET:-60}"
BATCH="${BATCH:-1024}"
COMPILE="${COMPILE:-true}"
WORKERS="${WORKERS:-8}"
OUT="${OUT:-${TMPDIR:-/tmp}/selfsup_gpu_budget}"
for split in train test; do
  if [ ! -d "$DATA/$split" ]; then
    echo "error: $DATA/$split is not a folder: pass the CIFAR-10 folder with train/ and test/ class folders" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
python -c "import selfsup" 2>/dev/null || pip install -q -e . >/dev/null
SMI=0
if command -v nvidia-smi >/dev/null 2>&1; then
  SMI=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "no nvidia-smi: GPU utilisation is not measured (n/a)"
fi

knn_args=(--train "$DATA/train" --test "$DATA/test" --k 200 --temperature 0.1 --no-cache --json --no-progress)
[ -n "${LIMIT_TRAIN:-}" ] && knn_args+=(--limit-train "$LIMIT_TRAIN")
[ -n "${LIMIT_TEST:-}" ] && knn_args+=(--limit-test "$LIMIT_TEST")

run() {  # name, seconds, knn (0/1), then selfsup pretrain arguments
  local name="$1" seconds="$2" knn="$3"; shift 3
  local smi=""
  rm -f "$OUT/$name.knn.json" "$OUT/$name.result.json"
  if [ "$SMI" = 1 ]; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
      > "$OUT/$name.smi" &
    smi=$!
  else
    : > "$OUT/$name.smi"
  fi
  # A hung compilation must not eat the slice: the run gets its budget plus 3 minutes.
  timeout "$((seconds + 180))" python -m selfsup pretrain --out "$OUT/$name" --overwrite \
    --no-progress --max-time "${seconds}s" --data "$DATA/train" "$@" monitor.knn=false \
    > "$OUT/$name.log" 2>&1 || echo "$name: pretraining exited with $?, see $OUT/$name.log"
  [ -n "$smi" ] && kill "$smi" 2>/dev/null || true
  if [ "$knn" = 1 ] && [ -f "$OUT/$name/summary.json" ]; then
    python -m selfsup eval knn --checkpoint "$OUT/$name" "${knn_args[@]}" \
      > "$OUT/$name.knn.json" 2> "$OUT/$name.knn.log" || echo "$name: kNN failed, see $OUT/$name.knn.log"
  fi
  python - "$OUT" "$name" <<'PY'
import json, statistics, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
summary = out / name / "summary.json"
if not summary.exists():
    print(f"{name}: failed, see {out / name}.log")
    sys.exit()
s = json.loads(summary.read_text())
rows = [line.split(",") for line in (out / f"{name}.smi").read_text().splitlines() if line.strip()]
util = [float(r[0]) for r in rows[len(rows) // 5:]]
busy = f"{statistics.median(util):.0f}%" if util else "n/a"
mem = f"{max(float(r[1]) for r in rows):.0f} MiB" if rows else "n/a"
knn = out / f"{name}.knn.json"
top1 = f"{json.loads(knn.read_text())['top1']:.2f}" if knn.exists() and knn.stat().st_size else "-"
line = {"arm": name, "images_per_s": round(s["images_per_s"], 1), "gpu_busy": busy,
        "gpu_memory": mem, "images": s["state"]["images_seen"], "precision": s["precision"],
        "knn_top1": top1}
(out / f"{name}.result.json").write_text(json.dumps(line))
print(f"{name}: {line['images_per_s']} img/s, GPU busy {busy} (median), GPU memory {mem}, "
      f"{line['images']} images, {line['precision']}, kNN top-1 {top1}")
PY
}

for arm in $ARMS; do
  case "$arm" in
    base)
      run base "$BASE_BUDGET" 0 --config configs/simclr_cifar10.yaml --batch-size 512 \
        --workers "$WORKERS" --augment device ;;
    simclr)
      run simclr "$BUDGET" 1 --config configs/simclr_cifar10.yaml --batch-size "$BATCH" \
        --workers "$WORKERS" --augment device --optimizer lars --lr 0.3 optim.warmup=0.1 \
        "train.compile=$COMPILE" "data.cache=$OUT/cache" ;;
    fast)
      run fast "$BUDGET" 1 --config configs/fast_cifar10.yaml --batch-size "$BATCH" \
        --workers "$WORKERS" "train.compile=$COMPILE" "data.cache=$OUT/cache" ;;
    *) echo "unknown arm $arm: base, simclr or fast" >&2; exit 2 ;;
  esac
done

# The ratio against the base arm of this same command (issue 23: at least 2x, GPU > 90% busy).
python - "$OUT" $ARMS <<'PY'
import json, sys
from pathlib import Path
out, arms = Path(sys.argv[1]), sys.argv[2:]
res = {a: json.loads((out / f"{a}.result.json").read_text()) for a in arms
       if (out / f"{a}.result.json").exists()}
if "base" in res:
    for a, r in res.items():
        if a != "base":
            ratio = r["images_per_s"] / max(res["base"]["images_per_s"], 1e-9)
            print(f"{a}: {ratio:.2f}x the base arm's images/s")
PY
