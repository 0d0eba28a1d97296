#!/usr/bin/env bash
# Sets up sd-erasure in ./.venv (or in the active virtual environment) and keeps torch sane:
# a machine that already has torch keeps it (a GPU user's CUDA build stays), and a machine
# without a GPU gets the CPU wheel instead of a multi-GB CUDA download.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
else
  PY="$VIRTUAL_ENV/bin/python"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch>=2.1"
  else
    # The 2.13.0 CPU wheel; elsewhere add --index-url https://download.pytorch.org/whl/cpu
    "$PY" -m pip install -q "torch==2.13.0"
  fi
fi
"$PY" -m pip install -q -c constraints.txt -e ".[test]"
