#!/usr/bin/env bash
# Create .venv and install talkgs into it, CPU PyTorch first: an unpinned torch would pull several
# GB of CUDA wheels onto a machine that cannot use them. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,whisper,serve]"
echo "talkgs installed in $(pwd)/.venv"
