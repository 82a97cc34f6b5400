#!/usr/bin/env bash
# The GPU measurements in one short run, for a machine with one NVIDIA GPU.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]
#
# Writes into OUTPUT_DIR (default: $OUT if set, else /tmp/wrnlib-gpu-check):
#   BENCHMARKS.md      this checkout's BENCHMARKS.md with the GPU sections rewritten
#   gpu_epoch.json     the WRN-28-10 epoch result
#   gpu_check.log      everything printed
# Copy BENCHMARKS.md back over the checkout's file to keep the results.
#
# Data: WRNLIB_DATA_ROOT if set, else shared/data inside the checkout if it
# contains cifar10.tar.gz or cifar10/, else random images (--synthetic, which
# the results record). Set WITH_COMPILE=1 to also time an epoch with torch.compile.
# DRY_RUN=1 runs the same steps on the CPU with a tiny model, to check the
# script itself on a machine without a GPU.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export WRNLIB_CACHE="${WRNLIB_CACHE:-/tmp/wrnlib-cache}"
out="${1:-${OUT:-/tmp/wrnlib-gpu-check}}"
mkdir -p "$out"
cp BENCHMARKS.md "$out/BENCHMARKS.md"

data_args=(--no-download)
if [ -n "${WRNLIB_DATA_ROOT:-}" ]; then
    data_args+=(--data-root "$WRNLIB_DATA_ROOT")
elif [ -f shared/data/cifar10.tar.gz ] || [ -d shared/data/cifar10 ]; then
    data_args+=(--data-root shared/data)
else
    echo "no CIFAR-10 found (WRNLIB_DATA_ROOT, shared/data): timing random images instead" >&2
    data_args+=(--synthetic)
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    epoch_args=(--device cpu --model wrn-10-1 --images 256 --warmup 1 --matmul-size 256)
    throughput_args=(--device cpu --model wrn-10-1 --batches 2 --block 1 --warmup 1 --batch-size 16)
else
    epoch_args=(--device cuda)
    throughput_args=(--device cuda --batches 40 --block 10 --reference-workers 8)
fi

{
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi
    python -m benchmarks.gpu_epoch "${data_args[@]}" "${epoch_args[@]}" --output "$out/BENCHMARKS.md" \
        --save-json "$out/gpu_epoch.json"
    if [ "${WITH_COMPILE:-0}" = 1 ]; then
        python -m benchmarks.gpu_epoch "${data_args[@]}" "${epoch_args[@]}" --compile --no-write \
            --save-json "$out/gpu_epoch_compile.json"
    fi
    python -m benchmarks.train_throughput "${data_args[@]}" "${throughput_args[@]}" --output "$out/BENCHMARKS.md"
} 2>&1 | tee "$out/gpu_check.log"
