#!/usr/bin/env bash
# Creates .venv and installs fastmaml into it.
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh --dev    # plus test and IDS extras
#   FASTMAML_TORCH_CUDA=1 bash scripts/install.sh   # leave torch selection to pip (CUDA builds)
# Why a script: an unpinned `pip install torch` pulls a multi-GB CUDA build.
# On a machine that carries the CPU wheel locally (pip find-links), we pin to it;
# elsewhere we use PyTorch's CPU index unless CUDA is asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS=""
[ "${1:-}" = "--dev" ] && EXTRAS="[dev]"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ -n "${FASTMAML_TORCH_CUDA:-}" ]; then
    "$PY" -m pip install "torch>=2.4"
  elif "$PY" -m pip download --no-deps --no-index -d "$(mktemp -d)" torch==2.13.0 >/dev/null 2>&1; then
    "$PY" -m pip install torch==2.13.0          # the CPU wheel found locally, no download
  else
    "$PY" -m pip install "torch>=2.4" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -q -e ".$EXTRAS"
"$PY" -c "import torch, fastmaml; print('fastmaml', fastmaml.__version__, '| torch', torch.__version__)"
