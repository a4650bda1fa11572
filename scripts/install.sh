#!/usr/bin/env bash
# Install Distillery into .venv on a fresh machine.
# torch goes first, pinned to the CPU build that lies on this machine's disk, so that nothing
# later pulls a multi-GB CUDA build; the project's own range (>=2.13,<2.15) then installs nothing.
# Everything goes in: the client, the engine, the service and the dev tools (pyproject.toml's
# extras; a CI runner that only submits jobs needs just `pip install 'distillery[client]'`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[client,engine,service,dev]"
echo "installed: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
