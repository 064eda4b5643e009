#!/usr/bin/env bash
# The GPU figures in one command (about 8 minutes on one data-centre GPU): the seed U-Net's bare
# forward throughput and the whole segment job's, in bfloat16 and float16, with XLA auto-clustering
# off and on, at batch 8 and 32; then the CPU side of each image (bench/cpu_side.py) and the cores
# per GPU it needs at the best bare rate measured. Paste its output into docs/performance.md's GPU table.
#
#   bash bench/gpu_check.sh            # on a machine with a GPU, from the repository root
#   bash bench/gpu_check.sh --smoke    # the steps at a tiny size on the CPU, XLA on and bfloat16 only (the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

if [ "${1:-}" = "--smoke" ]; then
    size=32 filters=4 count=4 batches="2" gpus=0 sides="64" limit=300 xlas="on" precisions="bfloat16"
    cpu_sizes="64x48" cpu_images=2
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || { echo "error: no GPU visible (nvidia-smi failed); use --smoke to try the steps on the CPU" >&2; exit 2; }
    size=512 filters=64 count=256 batches="8 32" gpus=1 sides="4096 8192" limit=150 xlas="off on"
    precisions="bfloat16 float16" cpu_sizes="640x480 4032x3024" cpu_images=8
fi

rates=$(mktemp)
trap 'rm -f "$rates"' EXIT
for xla in $xlas; do
    if [ "$xla" = on ]; then export TF_XLA_FLAGS=--tf_xla_auto_jit=2; else unset TF_XLA_FLAGS; fi
    for batch in $batches; do
        echo "== bare model, XLA $xla, batch $batch"
        timeout "$limit" "$python" bench/model_vs_hardware.py --sizes "$size" --base-filters "$filters" \
            --precisions $precisions --batch "$batch" --repeats 3 --matmul-sides $sides | tee -a "$rates"
    done
    for precision in $precisions; do
        batch=${batches##* }  # the job at the largest batch: its steady state is what a long run gets
        echo "== job, XLA $xla, $precision, batch $batch"
        timeout "$limit" "$python" bench/pipeline_vs_model.py --count "$count" --size "$size" \
            --base-filters "$filters" --precision "$precision" --batch-size "$batch" --gpus-per-actor "$gpus"
    done
done

best=$(awk -v input="${size}x${size}" '$2 == input && $3 ~ /^[0-9.]+$/ {print $3}' "$rates" | sort -g | tail -1)
echo "== CPU side per image, against the best bare rate ($best images/s)"
timeout "$limit" "$python" bench/cpu_side.py --sizes $cpu_sizes --images "$cpu_images" --repeats 3 --model-rate "$best"
