#!/usr/bin/env bash
# The main job on a fresh machine: install everything, then train a SAL-ResNet-20 on
# Fashion-MNIST (Debian's dataset-fashion-mnist), print accuracy (soft and binarised
# attention) / MACs / parameters, and write the attention-map figure to runs/main/.
# Extra arguments go to `python -m salnp train` (e.g. --epochs 10 --subset 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh notebooks
py="${SALNP_VENV:-$PWD/.venv}/bin/python"
out="$PWD/runs/main"
cd /tmp   # run the installed package, not the source tree
exec "$py" -m salnp train --data fashion-mnist --depth 20 --width 16 --layer sal \
     --epochs 3 --subset 12000 --out "$out" "$@"
