#!/usr/bin/env bash
# GPU readiness check, one command on a CUDA machine (< 5 minutes):
#   bash benchmarks/gpu_check.sh                # GPT-2 124M training (eager + torch.compile) and inference
#   bash benchmarks/gpu_check.sh --dry-run      # CPU, tiny model, 2 steps: checks the code paths
# Python: $PYTHON if set, else .venv/bin/python if its torch sees CUDA, else python3 if its torch sees CUDA,
# else a new .venv with torch from PyPI (its default Linux wheel is a CUDA build; needs the network).
# Writes benchmarks/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda_python() { "$1" -c 'import sys, torch, transformers; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ " $* " == *" --dry-run "* && -x .venv/bin/python ]]; then
  PY=.venv/bin/python
elif [[ -x .venv/bin/python ]] && cuda_python .venv/bin/python; then
  PY=.venv/bin/python
elif command -v python3 >/dev/null && cuda_python python3; then
  PY=python3
else
  echo "gpu_check: no Python with CUDA torch + transformers found; creating .venv-gpu (needs the network)" >&2
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install --quiet torch "transformers==5.23.0" numpy
  PY=.venv-gpu/bin/python
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
exec timeout 290 "$PY" benchmarks/gpu_check.py "$@"
