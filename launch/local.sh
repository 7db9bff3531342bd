#!/usr/bin/env bash
# Single machine (CPU, one or more GPUs, or a single TPU VM): every local device joins one mesh.
# Usage: launch/local.sh train --config=configs/txt2img_shapes.py:tiny --workdir=runs/txt2img_tiny [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m t2ijax "$@"
