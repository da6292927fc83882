#!/bin/bash
# The side-by-side benchmarks on a CUDA GPU (issue #7): random-weight Llama-3.2-1B shape, bf16.
#   bash benchmarks/gpu.sh [OUTDIR]     (from the repository root; needs torch, transformers, peft)
set -u
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=src:benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} | tee "$out/machine.txt"
$py benchmarks/train_fixed.py --device cuda --model llama-1b --variants peft,lorakit \
  --steps 10 --warmup 3 --json "$out/train_4x256.json" 2>&1 | tee "$out/train.txt"
$py benchmarks/train_fixed.py --device cuda --model llama-1b --batch 8 --seq 1024 \
  --variants peft,lorakit --steps 10 --warmup 3 --json "$out/train_8x1024.json" 2>&1 | tee -a "$out/train.txt"
$py benchmarks/inference.py --device cuda --model llama-1b --repeat 20 2>&1 | tee "$out/inference.txt"
$py benchmarks/per_row.py --device cuda --model llama-1b --repeat 10 2>&1 | tee "$out/per_row.txt"
$py benchmarks/train_fixed.py --device cuda --model llama-1b \
  --variants peft+compile,lorakit+compile --steps 10 --warmup 3 2>&1 | tee -a "$out/train.txt"
