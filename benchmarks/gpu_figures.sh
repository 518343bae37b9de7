#!/bin/bash
# The README's GPU figures in one run (about 8 minutes on one H200): the trainer against a bare
# smp loop with the paper's ResNet-101 at 384 px, the default benchmark's models, the prompted
# model trained longer and larger on held-out dermoscopy, and the prompted model on the
# DeepLesion-like CT set at 128 px. The three benchmarks share the GPU; each reports its own
# images per second. Logs and results.json files go to OUT.
#
#   bash benchmarks/gpu_figures.sh ISIC_SPLIT ISIC_VAL CT_HOSTS OUT
#
# ISIC_SPLIT and ISIC_VAL are made by examples/split_image_folder.py (train/ and test/ inside),
# CT_HOSTS is ../shared/data/ct_hosts/deeplesion_8bit. DEVICE=cpu QUICK=1 checks the script
# itself in a few minutes on a CPU.
set -u
if [ $# -ne 4 ]; then
  sed -n '2,13p' "$0"
  exit 2
fi
SPLIT=$1; VAL=$2; HOSTS=$3; OUT=$4
DEVICE=${DEVICE:-cuda}; QUICK=${QUICK:-0}; PY=${PYTHON:-python3}
if [ -e "$OUT" ]; then
  echo "$OUT exists: choose a new folder" >&2
  exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >> "$LOG" 2>&1
# One step: its output without progress bars, into OUT/NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name start $(date +%T)" > "$OUT/$name.log"
  timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v 'step/s\|s/step\|it/s\|s/it\|UserWarning\|warnings.warn' \
    >> "$OUT/$name.log"
  echo "== $name rc ${PIPESTATUS[0]} $(date +%T)" >> "$OUT/$name.log"
}
if [ "$QUICK" = 1 ]; then
  STEPS="--size 64 --steps 3"; BIG="--size 64 --epochs 1 --n-train 30"; ALL="--n-train 30"
  CT="--epochs 1"; LESIONS=60
else
  STEPS="--steps 20"; BIG="--size 256 --epochs 20 --batch 16 --workers 6"; ALL=""
  CT="--epochs 10 --workers 4"; LESIONS=600
fi
BENCH="$PY -m napari_recist_seg.cli benchmark --device $DEVICE"
step throughput 120 $PY benchmarks/throughput.py --device "$DEVICE" --amp auto \
  --encoder resnet101 --size 384 --batch 16 --repeats 1 $STEPS
step prompted_large 300 $BENCH --train "$VAL/train" --test "$VAL/test" --out "$OUT/prompted_large" \
  --models prompted $BIG &
step all_models 300 $BENCH --train "$SPLIT/train" --test "$SPLIT/test" --out "$OUT/all_models" \
  --models all $ALL &
( $PY examples/make_deeplesion_like.py --hosts "$HOSTS" --out "$OUT/ct" --lesions $LESIONS \
    --seed 0 > "$OUT/ct_data.log" 2>&1 \
  && step ct_prompted 240 $BENCH --train "$OUT/ct/DL_info.csv" --out "$OUT/ct_prompted" \
    --models prompted --size 128 --seeds 3 $CT ) &
wait
cat "$OUT"/*.log >> "$LOG"
echo "== done $(date +%T); results: $OUT/*/results.json" >> "$LOG"
tail -n 40 "$LOG"
