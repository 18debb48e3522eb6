#!/usr/bin/env bash
# GPU readiness check, one command on a CUDA machine (< 5 minutes):
#   bash benchmarks/gpu_check.sh                # GPT-2 124M training (eager + torch.compile) and inference
#   bash benchmarks/gpu_check.sh --dry-run      # CPU, tiny model, 2 steps: checks the code paths
# Python: $PYTHON if set; else .venv/bin/python if its torch sees CUDA (any torch for --dry-run); else
# python3 likewise; else (GPU run only) a venv at $GPU_VENV (default ~/.cache/lmforge/gpu-venv, outside
# the repository) with torch from PyPI, whose default Linux wheel is a CUDA build (several GB, needs the
# network). A dry run never installs anything. Writes benchmarks/results/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
[[ " $* " == *" --dry-run "* ]] && dry_run=1
usable() {  # usable PYTHON: has torch + transformers, and CUDA unless this is a dry run
  "$1" -c "import sys, torch, transformers; sys.exit(0 if $dry_run or torch.cuda.is_available() else 1)" 2>/dev/null
}

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x .venv/bin/python ]] && usable .venv/bin/python; then
  PY=.venv/bin/python
elif command -v python3 >/dev/null && usable python3; then
  PY=python3
elif (( dry_run )); then
  echo "gpu_check: no Python with torch + transformers; run 'make setup' first" >&2
  exit 1
else
  GPU_VENV="${GPU_VENV:-$HOME/.cache/lmforge/gpu-venv}"
  echo "gpu_check: no Python with CUDA torch + transformers; installing one into $GPU_VENV" >&2
  [[ -x "$GPU_VENV/bin/python" ]] || python3 -m venv "$GPU_VENV"
  usable "$GPU_VENV/bin/python" || "$GPU_VENV/bin/pip" install --quiet torch "transformers==5.23.0" numpy
  PY="$GPU_VENV/bin/python"
fi

if (( ! dry_run )) && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
exec timeout 290 "$PY" benchmarks/gpu_check.py "$@"
