#!/usr/bin/env bash
# Every GPU check in one go: versions, the CUDA tests, the compile report and all benchmarks.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (writes report.txt and bench.json there)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export TRITON_INTERPRET=0
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "== CUDA tests"; python -m pytest -q tests/gpu
  echo "== benchmarks"; python -m pytest -q benchmarks --benchmark-json="$out/bench.json" --benchmark-columns=min,median,mean,rounds
} 2>&1 | tee "$out/report.txt"
